//! What a task's processes used: CPU time (user and system) and peak
//! resident memory, read from `/proc` without unsafe code.
//!
//! - **CPU** is read when the program has exited but is not reaped yet
//!   (`waitid` with `WNOWAIT`): the zombie's `/proc/<pid>/stat` holds its
//!   own `utime` and `stime` and, in `cutime` and `cstime`, those of every
//!   child it waited for, and theirs, recursively. For a shell that is the
//!   whole tree it ran: what `getrusage(RUSAGE_CHILDREN)` of a dedicated
//!   parent (and `/usr/bin/time`) reports.
//! - **Peak memory** is sampled while the program runs: the largest
//!   `VmHWM` (a process's resident high-water mark) over the program and its
//!   descendants (`/proc/<pid>/task/<tid>/children`), every [`SAMPLE`].
//!   That is the figure `/usr/bin/time` reports (`ru_maxrss`: the largest
//!   single process's peak), not a sum. A process that lives less than a
//!   sample period may be missed.
//!
//! Why not cgroups: accounting per attempt would need a cgroup per attempt,
//! which needs cgroup v2 with delegation to the worker's user; most worker
//! hosts (containers, shared machines, cgroup v1 hosts) do not offer it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

/// How often the memory of a running program is sampled.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// What a program and its descendants used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time in user mode.
    pub user: Duration,
    /// CPU time in the kernel on its behalf.
    pub system: Duration,
    /// The largest resident set of any one of its processes.
    pub peak_rss_bytes: u64,
}

/// Follows the usage of the running program `pid` (a child of this
/// process, not reaped by anyone else before [`Meter::exited`]).
#[derive(Debug)]
pub struct Meter {
    pid: u32,
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Meter {
    /// Starts sampling `pid`'s memory.
    pub fn start(pid: u32) -> Meter {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = peak.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = tokio::task::spawn_blocking(move || tree_peak(pid))
                    .await
                    .unwrap_or(0);
                seen.fetch_max(now, Ordering::Relaxed);
            }
        });
        Meter { pid, peak, sampler }
    }

    /// Waits until the program has exited, without reaping it, and reads
    /// what it used; the caller then reaps it (`Child::wait`). `None` when
    /// the program cannot be waited for here (reaped by someone else).
    pub async fn exited(self) -> Option<Usage> {
        let pid = self.pid;
        let waited = tokio::task::spawn_blocking(move || {
            let pid = Pid::from_raw(i32::try_from(pid).ok()?);
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).ok()?;
            // The last sample, then the zombie's CPU times.
            let peak = tree_peak(pid.as_raw() as u32);
            Some((cpu(pid.as_raw() as u32)?, peak))
        })
        .await
        .ok()
        .flatten();
        self.sampler.abort();
        let ((user, system), last) = waited?;
        Some(Usage {
            user,
            system,
            peak_rss_bytes: self.peak.load(Ordering::Relaxed).max(last),
        })
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// User and system time of `pid` and its waited-for children, from
/// `/proc/<pid>/stat`.
fn cpu(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields
    // after it start at the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3) … utime (14), stime (15), cutime (16),
    // cstime (17), so indices 11 to 14 here.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime, cutime, cstime) = (tick(11)?, tick(12)?, tick(13)?, tick(14)?);
    let hz = ticks_per_second();
    let time = |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    Some((time(utime + cutime), time(stime + cstime)))
}

/// Clock ticks per second of `/proc`'s times (`USER_HZ`).
fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100)
}

/// The largest `VmHWM` over `pid` and its descendants, in bytes (0 for a
/// process that is gone or has no memory left, such as a zombie).
fn tree_peak(pid: u32) -> u64 {
    let mut peak = 0;
    let mut todo = vec![pid];
    // A bound on the walk, against a fork bomb.
    let mut visited = 0;
    while let Some(pid) = todo.pop() {
        visited += 1;
        if visited > 4096 {
            break;
        }
        peak = peak.max(high_water_mark(pid));
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    peak
}

/// `VmHWM` of `pid`, in bytes.
fn high_water_mark(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that holds 200 MiB it wrote to, and burns 1 s of CPU in
    /// user mode: the meter agrees with `/usr/bin/time -v` within 10 %.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_meter_agrees_with_usr_bin_time() {
        let burn = "import time\nb = b'x' * (200 << 20)\nt = time.process_time()\n\
                    while time.process_time() - t < 1.0: pass\n";
        let script = format!("python3 -c \"{burn}\"; true");
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("sh starts");
        let meter = Meter::start(child.id().expect("a pid"));
        let usage = meter.exited().await.expect("measured");
        assert!(child.wait().await.expect("reaped").success());

        let timed = std::process::Command::new("/usr/bin/time")
            .args(["-v", "sh", "-c", &script])
            .output()
            .expect("/usr/bin/time runs (Debian package `time`)");
        let report = String::from_utf8_lossy(&timed.stderr);
        let field = |name: &str| -> f64 {
            report
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {report}"))
        };
        let their_cpu = field("User time (seconds):") + field("System time (seconds):");
        let their_rss = field("Maximum resident set size (kbytes):") * 1024.0;
        let our_cpu = (usage.user + usage.system).as_secs_f64();
        let our_rss = usage.peak_rss_bytes as f64;
        eprintln!(
            "meter: CPU {our_cpu:.3} s, peak RSS {our_rss} B; /usr/bin/time -v: CPU {their_cpu:.3} s, peak RSS {their_rss} B"
        );
        assert!(
            (our_cpu - their_cpu).abs() <= 0.1 * their_cpu,
            "CPU {our_cpu:.3} s against {their_cpu:.3} s ({usage:?})"
        );
        assert!(
            (our_rss - their_rss).abs() <= 0.1 * their_rss,
            "peak RSS {our_rss} against {their_rss} bytes ({usage:?})"
        );
        assert!(our_rss > 200.0 * 1024.0 * 1024.0, "{usage:?}");
    }

    #[test]
    fn this_process_s_own_figures_are_read() {
        // Our own process: its times parse (whatever they are).
        assert!(cpu(std::process::id()).is_some());
        assert!(high_water_mark(std::process::id()) > 0);
    }
}
