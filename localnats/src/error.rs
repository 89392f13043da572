//! The one error type of the crate. Every message says what to do next.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a nats-server could not be found, started or made ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No nats-server binary at any of the places searched.
    #[error(
        "nats-server not found (looked at {}): run `./scripts/setup.sh` to install the pinned nats-server {version}",
        looked_at.join(", ")
    )]
    NotFound {
        /// The places searched, in order, as shown to the user.
        looked_at: Vec<String>,
        /// The nats-server version the project pins.
        version: &'static str,
    },

    /// `RUNLOG_NATS_SERVER` is set but names no file.
    #[error(
        "RUNLOG_NATS_SERVER={} does not exist: point it at a nats-server binary, or unset it and run `./scripts/setup.sh`",
        path.display()
    )]
    EnvNotFound {
        /// The value of `RUNLOG_NATS_SERVER`.
        path: PathBuf,
    },

    /// The operating system could not start the binary.
    #[error("cannot start {} ({source}): is it an executable nats-server? `./scripts/setup.sh` installs one", binary.display())]
    Spawn {
        /// The binary that was executed.
        binary: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The server exited while starting, for example because its port was taken.
    #[error(
        "{server} exited while starting ({status}); the end of its log {}:\n{log_tail}",
        log.display()
    )]
    Exited {
        /// Which server, e.g. `nats-server n2 at nats://127.0.0.1:4222`.
        server: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file (deleted with the server's temporary directory).
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The server runs but did not become ready before the deadline.
    #[error(
        "{server} was not ready after {waited:?} (last check: {last_check}); the end of its log {}:\n{log_tail}",
        log.display()
    )]
    NotReady {
        /// Which server, e.g. `nats-server n2 at nats://127.0.0.1:4222`.
        server: String,
        /// How long it was given.
        waited: Duration,
        /// What the last readiness check saw.
        last_check: String,
        /// Its log file (deleted with the server's temporary directory).
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// A file-system or socket operation around the server failed.
    #[error(
        "cannot {action} ({source}): check free disk space, file permissions and the temp dir (TMPDIR)"
    )]
    Io {
        /// What was being done, e.g. `write /tmp/.../nats-server.conf`.
        action: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }
}
