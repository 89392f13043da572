//! Circuit breakers: a target that keeps failing is left alone for a while.
//!
//! A breaker guards one *target key* (an HTTP host, a provider, any key a
//! task names) and is in one of three [`State`]s:
//!
//! - **closed**: attempts run. Each worker counts the outcomes of its own
//!   attempts in a sliding [`Window`]; when at least `min_calls` ended in
//!   the window and `failure_percent` % of them failed, the breaker opens.
//! - **open**: attempts of the key are delayed (their work items handed
//!   back) until `retry_at`, `open_for` after it opened.
//! - **half-open**: after `retry_at`, up to `probes` attempts run as
//!   probes; the others are delayed a little longer. When every probe
//!   succeeded the breaker closes; one failed probe opens it again. Probes
//!   are leased until `retry_at`: a probe whose worker vanished is given
//!   up then and another is granted.
//!
//! Which outcomes count as failures is [`verdict_of`]: `network`,
//! `timeout`, `rate_limited`, `crashed`, `unknown` and a run past the
//! deadline do; `cancelled`, `invalid_input` and `resource` say nothing
//! about the target and are ignored; the rest (success, `permission`,
//! `not_found`) mean the target answered.
//!
//! The module is in two parts, `shared` depending on `rules` and never
//! the other way:
//!
//! - `rules`: the pure rules, with time passed in. [`admit`],
//!   [`settle_probe`] and [`trip`] compute the [`Record`] to write,
//!   [`Transition`] is what is announced, [`Window`] counts outcomes.
//! - `shared`: the shell. The `<p>-breakers` bucket holds one record per
//!   key and changes by compare-and-set; each worker watches it into its
//!   [`BreakerView`]; the gate tells the runtime, for each work item
//!   before its claim, to run it, delay it with a NAK, or hold it.
//!
//! # Examples
//! ```
//! use chrono::{Duration, Utc};
//! use runlog_worker::runtime::breaker::{admit, Admission, BreakerConfig, State, Verdict, Window};
//!
//! let config = BreakerConfig { min_calls: 2.try_into().unwrap(), ..BreakerConfig::default() };
//! let now = Utc::now();
//! let mut window = Window::new(config.window);
//! window.record(now, Verdict::Failure);
//! assert_eq!(window.tripped(&config, now), None);
//! window.record(now, Verdict::Failure);
//! let (calls, failures) = window.tripped(&config, now).unwrap();
//! let open = runlog_worker::runtime::breaker::trip(&config, None, "host=api", calls, failures, now, "w1");
//! assert_eq!(open.state, State::Open);
//! assert_eq!(admit(&config, Some(&open), now, "w2"), Admission::Delay(open.retry_at.unwrap()));
//! let later = now + Duration::seconds(31);
//! assert!(matches!(admit(&config, Some(&open), later, "w2"), Admission::Probe(_)));
//! ```

mod rules;
mod shared;

pub use rules::{
    Admission, BreakerConfig, Record, State, Transition, Verdict, Window, admit, settle_probe,
    trip, verdict_of,
};
pub use shared::{BreakerView, breaker_key};
pub(crate) use shared::{Breakers, Gate, Permit};
