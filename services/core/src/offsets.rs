//! Per-partition offset bookkeeping for at-least-once consumption.
//!
//! Deliveries of one partition finish out of order (a GPU batch, a retry), but a committed
//! offset means "everything before it is done": committing offset `i + n` before `i` would
//! lose `i` on a crash. So each partition commits only the contiguous finished prefix of what
//! it handed out. Partitions taken away by a rebalance are forgotten, and a late finish for
//! one of them produces no commit (the new owner replays it; ids make the replay idempotent).

use std::collections::{BTreeSet, HashMap};

/// Where a partition stands: the next offset to commit from, and what is out or finished.
#[derive(Debug, Default, Clone)]
struct PartitionOffsets {
    /// Kafka's committed offset is the *next* offset to read: everything below is done.
    committed: Option<i64>,
    /// Handed out and not yet finished.
    in_flight: BTreeSet<i64>,
    /// Finished while an earlier offset is still in flight.
    finished: BTreeSet<i64>,
}

/// The offsets a consumer holds, by partition.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The consumer owns these partitions now (a rebalance assigned them).
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.partitions.entry(partition).or_default();
        }
    }

    /// A rebalance took these partitions away: forget everything about them.
    pub fn revoke(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.partitions.remove(&partition);
        }
    }

    /// Whether the consumer currently owns `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// A message at `offset` was handed to the worker. A partition not assigned yet (the
    /// first message may arrive before the assignment callback is seen) is assigned here.
    pub fn start(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        if state.committed.is_none_or(|committed| offset >= committed) {
            state.in_flight.insert(offset);
        }
    }

    /// The message at `offset` is done (indexed, or dead-lettered). Returns the offset to
    /// commit for the partition when the contiguous finished prefix grew, else `None`: also
    /// `None` for a partition this consumer no longer owns or an offset it never handed out.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        if !state.in_flight.remove(&offset) {
            return None;
        }
        state.finished.insert(offset);
        // Everything below the lowest offset still in flight is done.
        let boundary = state.in_flight.first().copied();
        let done: Vec<i64> = state
            .finished
            .iter()
            .copied()
            .take_while(|finished| boundary.is_none_or(|lowest| *finished < lowest))
            .collect();
        let highest = *done.last()?;
        for finished in &done {
            state.finished.remove(finished);
        }
        // Committed offset = next offset to read.
        let next = highest + 1;
        if state.committed.is_some_and(|committed| committed >= next) {
            return None;
        }
        state.committed = Some(next);
        Some(next)
    }

    /// Messages handed out and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.in_flight.len())
            .sum()
    }

    /// The offset this tracker last asked to commit for `partition`.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_finished_prefix() {
        let mut tracker = OffsetTracker::new();
        tracker.assign([0]);
        for offset in 10..15 {
            tracker.start(0, offset);
        }
        // Later ones finish first: nothing may be committed past the unfinished 10.
        assert_eq!(tracker.finish(0, 12), None);
        assert_eq!(tracker.finish(0, 11), None);
        assert_eq!(tracker.committed(0), None);
        // 10 finishes: 10, 11, 12 are done, so the next offset to read is 13.
        assert_eq!(tracker.finish(0, 10), Some(13));
        assert_eq!(tracker.finish(0, 14), None, "13 is still out");
        assert_eq!(tracker.finish(0, 13), Some(15));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn a_failed_earlier_message_holds_the_commit_below_it() {
        // docs/reliability.md fault 3: the later batch finishes, the earlier one fails (and is
        // never finished by this consumer): the commit stays below the earlier one.
        let mut tracker = OffsetTracker::new();
        tracker.start(3, 100);
        tracker.start(3, 101);
        assert_eq!(tracker.finish(3, 101), None);
        assert_eq!(tracker.committed(3), None);
        assert_eq!(tracker.in_flight(), 1);
    }

    #[test]
    fn revoked_partitions_never_commit() {
        let mut tracker = OffsetTracker::new();
        tracker.start(0, 5);
        tracker.start(1, 7);
        tracker.revoke([0]);
        assert!(!tracker.owns(0));
        assert_eq!(
            tracker.finish(0, 5),
            None,
            "no commit for a revoked partition"
        );
        assert_eq!(tracker.finish(1, 7), Some(8));
        // Re-assigned later: it starts from scratch.
        tracker.assign([0]);
        assert_eq!(
            tracker.finish(0, 5),
            None,
            "offset 5 was handed out before the revoke"
        );
    }

    #[test]
    fn duplicate_or_unknown_finishes_are_ignored() {
        let mut tracker = OffsetTracker::new();
        tracker.start(0, 1);
        assert_eq!(tracker.finish(0, 1), Some(2));
        assert_eq!(tracker.finish(0, 1), None);
        assert_eq!(tracker.finish(0, 9), None);
        assert_eq!(tracker.finish(4, 0), None);
    }

    proptest! {
        /// Whatever the finishing order, every commit is the successor of a prefix that is
        /// entirely finished, commits only grow, and once all finish the last commit is
        /// one past the highest offset.
        #[test]
        fn commit_never_passes_an_unfinished_offset(order in Just((0i64..40).collect::<Vec<_>>()).prop_shuffle()) {
            let mut tracker = OffsetTracker::new();
            for offset in 0..40 {
                tracker.start(0, offset);
            }
            let mut finished = std::collections::HashSet::new();
            let mut last = 0;
            for offset in order {
                finished.insert(offset);
                if let Some(next) = tracker.finish(0, offset) {
                    prop_assert!(next > last);
                    prop_assert!((0..next).all(|done| finished.contains(&done)));
                    last = next;
                }
            }
            prop_assert_eq!(last, 40);
        }
    }
}
