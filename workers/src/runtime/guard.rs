//! The resource guard: a worker stops fetching while its host is
//! overloaded, and resumes once it is not.
//!
//! A [`ResourceProbe`] reports memory use and the 1-minute load average;
//! [`SystemProbe`] reads them from the operating system (sysinfo). The
//! guard samples the probe every interval and pauses fetching while memory
//! use is above `max_memory_percent` or the load above `max_load`. Running
//! attempts continue; the worker's registry entry says
//! `paused_for_resources: true` meanwhile. Tests inject their own probe.

use std::time::Duration;

use sysinfo::System;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a probe measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Memory in use, in percent of the total.
    pub memory_percent: f64,
    /// The 1-minute load average.
    pub load_one: f64,
}

/// Measures the host's load. Sampled on the runtime's threads every guard
/// interval: keep it cheap.
pub trait ResourceProbe: Send + 'static {
    /// The current usage.
    fn sample(&mut self) -> Usage;
}

/// The operating system's figures, read with sysinfo.
#[derive(Debug)]
pub struct SystemProbe {
    system: System,
}

impl SystemProbe {
    /// A probe of this host.
    pub fn new() -> Self {
        SystemProbe {
            system: System::new(),
        }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceProbe for SystemProbe {
    fn sample(&mut self) -> Usage {
        self.system.refresh_memory();
        let total = self.system.total_memory();
        let memory_percent = if total == 0 {
            0.0
        } else {
            self.system.used_memory() as f64 * 100.0 / total as f64
        };
        Usage {
            memory_percent,
            load_one: System::load_average().one,
        }
    }
}

/// When the guard pauses fetching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Pause while memory use is above this percentage (100 or more: never).
    pub max_memory_percent: f64,
    /// Pause while the 1-minute load average is above this (`None`: never).
    pub max_load: Option<f64>,
    /// How often the probe is sampled.
    pub interval: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_memory_percent: 90.0,
            max_load: None,
            interval: Duration::from_secs(1),
        }
    }
}

impl GuardConfig {
    /// Whether `usage` is over a threshold.
    ///
    /// # Examples
    /// ```
    /// use runlog_worker::runtime::guard::{GuardConfig, Usage};
    ///
    /// let guard = GuardConfig { max_load: Some(8.0), ..GuardConfig::default() };
    /// assert!(!guard.overloaded(Usage { memory_percent: 50.0, load_one: 2.0 }));
    /// assert!(guard.overloaded(Usage { memory_percent: 95.0, load_one: 2.0 }));
    /// assert!(guard.overloaded(Usage { memory_percent: 50.0, load_one: 9.5 }));
    /// ```
    pub fn overloaded(&self, usage: Usage) -> bool {
        usage.memory_percent > self.max_memory_percent
            || self.max_load.is_some_and(|max| usage.load_one > max)
    }
}

/// Samples `probe` every interval and publishes whether fetching is paused
/// on `paused`, until `stop`.
pub(crate) async fn watch(
    mut probe: Box<dyn ResourceProbe>,
    config: GuardConfig,
    paused: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let usage = probe.sample();
        let overloaded = config.overloaded(usage);
        paused.send_if_modified(|was| {
            if *was == overloaded {
                return false;
            }
            if overloaded {
                tracing::warn!(
                    memory_percent = usage.memory_percent,
                    load_one = usage.load_one,
                    "host overloaded: the worker stops fetching until it recovers"
                );
            } else {
                tracing::info!("host load back under the limits: fetching resumes");
            }
            *was = overloaded;
            true
        });
    }
}
