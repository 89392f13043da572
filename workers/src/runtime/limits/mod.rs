//! Rate limits and concurrency keys, shared by every worker of a cluster.
//!
//! A task may name a `rate_key` (`provider=openai`) and a `concurrency_key`
//! (`workspace=prod`). The limits table says how fast attempts of a rate key
//! may start (`5/s`: at most 5 starts in any one-second interval) and how
//! many attempts of a concurrency key may run at once (`1`: one apply per
//! workspace). Keys the table does not name are unlimited unless it has a
//! default (`*`).
//!
//! - **The table** is layered: the `<p>-limits` bucket (`rate.<key>` →
//!   `5/s`, `concurrency.<key>` → `1`, `default.rate`,
//!   `default.concurrency`) wins over the worker's flags key by key; a
//!   key's own entry wins over any default. Workers watch the bucket, so a
//!   change applies to every worker at once.
//! - **Concurrency** is a set of leases in the `<p>-leases` bucket: a
//!   running attempt holds `concurrency.<key>.<slot>` (slot `0..N`),
//!   created with create-only semantics and a per-key TTL that the worker
//!   renews every third of it and deletes when the attempt's result is
//!   recorded. A worker that dies stops renewing, and its lease expires
//!   within the TTL.
//! - **Rate** is a sliding log in the same bucket: `rate.<key>` holds the
//!   start times (unix ms) of the last period, updated with compare-and-set
//!   on the entry's revision. A start is admitted only if no interval of
//!   one period would then hold more than the limit ([`admit_start`]).
//!
//! The rules are pure functions of their inputs, in `rules` ([`Rate`],
//! [`LimitsTable`], [`admit_start`], [`slot_order`]); `store` holds
//! `Limits`, the shell that talks to the buckets. What the dispatcher does
//! with an item whose key is at its limit (it holds it, without spending a
//! delivery) is in `dispatch`.
//!
//! # Examples
//! ```
//! use runlog_worker::runtime::limits::{Rate, admit_start};
//!
//! let rate: Rate = "2/s".parse().unwrap();
//! let log = admit_start(&[], 10_000, rate).unwrap();
//! let log = admit_start(&log, 10_400, rate).unwrap();
//! // A third start within one second of the first waits until 11_000.
//! assert_eq!(admit_start(&log, 10_900, rate), Err(11_000));
//! assert!(admit_start(&log, 11_000, rate).is_ok());
//! ```

mod rules;
mod store;

pub use rules::{
    ConcurrencyRule, LimitError, LimitKeys, LimitsConfig, LimitsTable, MAX_CONCURRENCY, MAX_RATE,
    Rate, RateRule, admit_start, slot_order,
};
pub use store::LimitsError;
pub(crate) use store::{Admission, Limits};
