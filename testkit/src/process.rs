//! A process a test started, killed and reaped when the test drops it.

use std::process::Child;

/// A child process (a `runlog worker`, an engine), killed with `SIGKILL`
/// and reaped on drop, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct KilledOnDrop(pub Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _gone = self.0.kill();
        let _reaped = self.0.wait();
    }
}
