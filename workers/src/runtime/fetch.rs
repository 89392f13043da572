//! Priority draining: which work items a worker pulls next.
//!
//! Each queue has one durable pull consumer per priority level, shared by
//! all workers. JetStream orders neither messages across consumers nor by
//! priority, so the worker does it:
//!
//! - **Busy**: with `free` slots, a round asks the levels in order with a
//!   `no_wait` fetch of at most the slots still unfilled, so the worker never
//!   holds more unacknowledged work than it has room for.
//! - **Anti-starvation (aging)**: picks are numbered 1, 2, 3, … for the
//!   life of the worker. Pick `n` starts at `high`; when `n` is a multiple
//!   of `k` it starts at `normal` instead, and when `n` is a multiple of
//!   `k²` at `low` (`k` = `aging_every`, default 8). From its starting
//!   level a pick falls through to the lower levels, then back up to the
//!   higher ones, and takes the first non-empty one. Under a backlog on all
//!   three levels a worker gives `high` (k−1)/k of its picks, `normal`
//!   (k−1)/k² and `low` 1/k²; with `normal` empty, `low` gets 1/k.
//! - **Idle**: when a round finds every level empty, the worker parks one
//!   long poll (`max_messages(1)`, `expires` a few seconds) on every
//!   consumer at once and takes whatever arrives first. Polls that deliver
//!   later are kept too: at most `sources − 1` items beyond the free slots
//!   (sources = queues × 3), which wait in the worker for a slot.
//!
//! [`first_level`] and [`try_order`] are the pure rule; `Fetcher` does
//! the I/O.

use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, stream};
use runlog_events::Priority;

/// The level (0 = highest) that pick number `pick` (1-based) tries first,
/// with one aging step every `every` picks over `levels` levels.
///
/// # Examples
/// ```
/// use runlog_worker::runtime::fetch::first_level;
///
/// let starts: Vec<usize> = (1..=9).map(|n| first_level(n, 3, 3)).collect();
/// assert_eq!(starts, [0, 0, 1, 0, 0, 1, 0, 0, 2]);
/// ```
pub fn first_level(pick: u64, every: u32, levels: usize) -> usize {
    let every = u64::from(every.max(2));
    let (mut n, mut level) = (pick.max(1), 0);
    while level + 1 < levels && n % every == 0 {
        n /= every;
        level += 1;
    }
    level
}

/// The levels a pick starting at `first` tries, in order: `first`, the
/// levels below it, then the levels above it from the nearest up.
///
/// # Examples
/// ```
/// use runlog_worker::runtime::fetch::try_order;
///
/// assert_eq!(try_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
/// assert_eq!(try_order(1, 3).collect::<Vec<_>>(), [1, 2, 0]);
/// assert_eq!(try_order(2, 3).collect::<Vec<_>>(), [2, 1, 0]);
/// ```
pub fn try_order(first: usize, levels: usize) -> impl Iterator<Item = usize> {
    (first..levels).chain((0..first.min(levels)).rev())
}

/// How many of the picks `taken + 1 ..= taken + free` start at each level.
pub fn quotas(taken: u64, free: usize, every: u32, levels: usize) -> Vec<usize> {
    let mut quotas = vec![0; levels];
    for n in taken + 1..=taken + free as u64 {
        quotas[first_level(n, every, levels)] += 1;
    }
    quotas
}

/// One consumer: a queue at a priority level.
#[derive(Debug)]
pub(crate) struct Source {
    pub priority: Priority,
    pub consumer: PullConsumer,
}

/// A fetched work item and where it came from.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub message: Message,
    pub priority: Priority,
}

/// What a parked long poll produced.
enum Polled {
    Message(usize, Box<Result<Message, async_nats::Error>>),
    Ended(usize),
}

/// How long one `no_wait` fetch may take before the worker gives up on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Pulls work items by priority from a set of consumers.
pub(crate) struct Fetcher {
    /// Every consumer; `levels[l]` lists the indexes of level `l`'s.
    sources: Vec<Source>,
    levels: Vec<Vec<usize>>,
    every: u32,
    /// Items taken so far: numbers the picks.
    taken: u64,
    /// Rotates which queue of a level is asked first.
    rotation: usize,
    poll_expires: Duration,
    polls: SelectAll<BoxStream<'static, Polled>>,
    polling: Vec<bool>,
}

impl Fetcher {
    /// A fetcher over `sources`, ordered by their priority.
    pub fn new(sources: Vec<Source>, every: u32, poll_expires: Duration) -> Self {
        let levels = Priority::ALL
            .iter()
            .map(|p| {
                (0..sources.len())
                    .filter(|&i| sources[i].priority == *p)
                    .collect()
            })
            .collect();
        let polling = vec![false; sources.len()];
        Fetcher {
            sources,
            levels,
            every,
            taken: 0,
            rotation: 0,
            poll_expires,
            polls: SelectAll::new(),
            polling,
        }
    }

    /// The number of consumers.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Long polls parked at the server.
    pub fn outstanding(&self) -> usize {
        self.polling.iter().filter(|p| **p).count()
    }

    /// Fetches at most `free` items without waiting, by the priority rule.
    /// Consumers with a parked long poll are skipped (the poll gets their
    /// next item anyway).
    pub async fn round(&mut self, free: usize) -> Result<Vec<Fetched>, async_nats::Error> {
        let levels = self.levels.len();
        let quotas = quotas(self.taken, free, self.every, levels);
        let mut fetched = Vec::new();
        // Aging picks first, so a burst of high items cannot take their slots.
        for first in (0..levels).rev() {
            let mut quota = quotas[first];
            for level in try_order(first, levels) {
                let queues = self.levels[level].len();
                for k in 0..queues {
                    if quota == 0 {
                        break;
                    }
                    let source = self.levels[level][(k + self.rotation) % queues];
                    if self.polling[source] {
                        continue;
                    }
                    let got = fetch(&self.sources[source], quota).await?;
                    quota -= got.len().min(quota);
                    fetched.extend(got);
                }
            }
        }
        self.taken += fetched.len() as u64;
        self.rotation = self.rotation.wrapping_add(1);
        Ok(fetched)
    }

    /// Parks a long poll on every consumer that has none.
    pub async fn long_poll(&mut self) -> Result<(), async_nats::Error> {
        for i in 0..self.sources.len() {
            if self.polling[i] {
                continue;
            }
            let batch = self.sources[i]
                .consumer
                .batch()
                .max_messages(1)
                .expires(self.poll_expires)
                .messages()
                .await?;
            let polled = batch
                .map(move |m| Polled::Message(i, Box::new(m)))
                .chain(stream::once(async move { Polled::Ended(i) }));
            self.polls.push(polled.boxed());
            self.polling[i] = true;
        }
        Ok(())
    }

    /// Whether any long poll is parked.
    pub fn is_polling(&self) -> bool {
        !self.polls.is_empty()
    }

    /// The next item a long poll delivers, or `None` when a poll ended (its
    /// consumer may be fetched from again: the caller runs a round at once
    /// instead of waiting here for another level's poll).
    pub async fn next_polled(&mut self) -> Option<Result<Fetched, async_nats::Error>> {
        match self.polls.next().await? {
            Polled::Ended(i) => {
                self.polling[i] = false;
                None
            }
            Polled::Message(i, message) => {
                let priority = self.sources[i].priority;
                self.taken += 1;
                Some((*message).map(|message| Fetched { message, priority }))
            }
        }
    }

    /// Drops every parked poll (the server skips requests whose inbox has
    /// no subscriber any more).
    pub fn stop_polling(&mut self) {
        self.polls = SelectAll::new();
        self.polling.iter_mut().for_each(|p| *p = false);
    }
}

/// One `no_wait` fetch of at most `max` items from `source`.
async fn fetch(source: &Source, max: usize) -> Result<Vec<Fetched>, async_nats::Error> {
    let Source { consumer, priority } = source;
    let collect = async {
        let mut batch = consumer.fetch().max_messages(max).messages().await?;
        let mut got = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => got.push(Fetched {
                    message,
                    priority: *priority,
                }),
                // Keep what arrived: dropping it would strand it until ack_wait.
                Err(e) if !got.is_empty() => {
                    tracing::warn!(error = %e, "a fetch ended early");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok::<_, async_nats::Error>(got)
    };
    match tokio::time::timeout(FETCH_TIMEOUT, collect).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the fetch from consumer {} did not end within {FETCH_TIMEOUT:?}",
            consumer.cached_info().name
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kth_pick_ages_one_level_and_every_k2th_two() {
        let starts: Vec<usize> = (1..=16).map(|n| first_level(n, 4, 3)).collect();
        assert_eq!(starts, [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2]);
        // One level: nothing to age to.
        assert!((1..100).all(|n| first_level(n, 2, 1) == 0));
    }

    #[test]
    fn shares_under_a_full_backlog_follow_k() {
        let q = quotas(0, 6400, 8, 3);
        assert_eq!(q, [5600, 700, 100]);
        assert_eq!(q.iter().sum::<usize>(), 6400);
    }

    /// The rule played against backlogs, as the runtime test observes it.
    fn simulate(mut backlog: [usize; 3], every: u32) -> Vec<usize> {
        let mut order = Vec::new();
        let mut n = 0;
        while backlog.iter().any(|b| *b > 0) {
            n += 1;
            let level = try_order(first_level(n, every, 3), 3)
                .find(|l| backlog[*l] > 0)
                .unwrap();
            backlog[level] -= 1;
            order.push(level);
        }
        order
    }

    #[test]
    fn low_progresses_under_a_high_backlog() {
        // normal is empty: every k-th pick falls through to low.
        let order = simulate([20, 0, 5], 4);
        let first_low = order.iter().position(|l| *l == 2).unwrap();
        assert_eq!(first_low, 3);
        assert_eq!(&order[..8], &[0, 0, 0, 2, 0, 0, 0, 2]);
        assert_eq!(simulate([6, 3, 3], 3), [0, 0, 1, 0, 0, 1, 0, 0, 2, 1, 2, 2]);
    }
}
