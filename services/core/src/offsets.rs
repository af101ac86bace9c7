//! Per-partition offset bookkeeping for at-least-once consumption.
//!
//! Deliveries of one partition finish out of order (a GPU batch, a retry), but a committed
//! offset means "everything before it is done": committing offset `i + n` before `i` would
//! lose `i` on a crash. So each partition commits only the contiguous finished prefix of what
//! it handed out. Partitions taken away by a rebalance are forgotten, and a late finish for
//! one of them produces no commit (the new owner replays it; ids make the replay idempotent).
//!
//! It also counts deliveries of the offsets at or past the commit, so that a segment that
//! crashes every worker that takes it is given up on after `max_attempts` deliveries: the
//! counts travel with the commit ([`OffsetTracker::checkpoint`], the metadata of a Kafka
//! offset commit) and are restored from it by the partition's next owner.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where a partition stands: the next offset to commit from, and what is out or finished.
#[derive(Debug, Default, Clone)]
struct PartitionOffsets {
    /// Kafka's committed offset is the *next* offset to read: everything below is done.
    committed: Option<i64>,
    /// Handed out and not yet finished.
    in_flight: BTreeSet<i64>,
    /// Finished while an earlier offset is still in flight.
    finished: BTreeSet<i64>,
    /// Deliveries of each offset at or past the commit, over every owner of the partition.
    deliveries: BTreeMap<i64, u32>,
    /// Whether the counts were restored from the partition's last commit since it was
    /// assigned here.
    restored: bool,
}

/// The prefix of a commit's metadata that holds delivery counts (`vidx-deliveries:1 o:n,o:n`).
const DELIVERIES_PREFIX: &str = "vidx-deliveries:1 ";

/// The delivery counts as commit metadata. Bounded by the offsets in flight (a few per
/// worker), well under the brokers' `offset.metadata.max.bytes` (4096 by default).
pub fn encode_deliveries(deliveries: &BTreeMap<i64, u32>) -> String {
    let counts: Vec<String> = deliveries
        .iter()
        .map(|(offset, count)| format!("{offset}:{count}"))
        .collect();
    format!("{DELIVERIES_PREFIX}{}", counts.join(","))
}

/// The delivery counts in a commit's metadata; none for metadata written by anything else
/// (or nothing), and malformed entries are skipped.
pub fn decode_deliveries(metadata: &str) -> BTreeMap<i64, u32> {
    let Some(counts) = metadata.strip_prefix(DELIVERIES_PREFIX) else {
        return BTreeMap::new();
    };
    counts
        .split(',')
        .filter_map(|entry| {
            let (offset, count) = entry.split_once(':')?;
            Some((offset.parse().ok()?, count.parse().ok()?))
        })
        .collect()
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
        state.deliveries = state.deliveries.split_off(&next);
        Some(next)
    }

    /// Whether `partition`'s delivery counts still have to be restored from its last commit.
    pub fn needs_restore(&self, partition: i32) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|state| !state.restored)
    }

    /// What the partition's last commit says: the next offset to read and the delivery
    /// counts its earlier owners recorded. A no-op for a partition not owned here.
    pub fn restore(
        &mut self,
        partition: i32,
        committed: Option<i64>,
        deliveries: BTreeMap<i64, u32>,
    ) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        state.restored = true;
        if let Some(committed) = committed
            && state.committed.is_none_or(|ours| ours < committed)
        {
            state.committed = Some(committed);
        }
        let floor = state.committed.unwrap_or(i64::MIN);
        for (offset, count) in deliveries.range(floor..) {
            let ours = state.deliveries.entry(*offset).or_insert(0);
            *ours = (*ours).max(*count);
        }
    }

    /// Count one more delivery of `offset` and return how many there were, this one
    /// included (1 for a first delivery). Persist it with [`checkpoint`](Self::checkpoint)
    /// before the message is worked on.
    pub fn deliver(&mut self, partition: i32, offset: i64) -> u32 {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return 1;
        };
        let count = state.deliveries.entry(offset).or_insert(0);
        *count += 1;
        *count
    }

    /// What to commit for `partition` now: the next offset to read (the last commit, or the
    /// first offset handed out since the assignment when nothing was committed yet) and the
    /// delivery counts from there on, as commit metadata. `None` for a partition not owned
    /// here or with nothing to commit. Commits made of successive checkpoints never go
    /// backwards, provided they are sent in order.
    pub fn checkpoint(&self, partition: i32) -> Option<(i64, String)> {
        let state = self.partitions.get(&partition)?;
        let offset = state.committed.or_else(|| {
            let first_out = state.in_flight.first().copied();
            let first_done = state.finished.first().copied();
            first_out.into_iter().chain(first_done).min()
        })?;
        let mut counts = state.deliveries.clone();
        let from_offset = counts.split_off(&offset);
        Some((offset, encode_deliveries(&from_offset)))
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
    fn delivery_counts_travel_with_the_commit_to_the_next_owner() {
        let mut first = OffsetTracker::new();
        first.assign([0]);
        first.start(0, 7);
        first.start(0, 8);
        assert_eq!(first.deliver(0, 7), 1);
        assert_eq!(first.deliver(0, 8), 1);
        // Nothing committed yet: the checkpoint is the first offset handed out.
        let (offset, metadata) = first.checkpoint(0).expect("a checkpoint");
        assert_eq!(offset, 7);
        assert_eq!(
            decode_deliveries(&metadata),
            BTreeMap::from([(7, 1), (8, 1)])
        );
        // 7 is indexed; the owner crashes while 8 is in the models.
        assert_eq!(first.finish(0, 7), Some(8));
        let (offset, metadata) = first.checkpoint(0).expect("a checkpoint");
        assert_eq!(
            (offset, decode_deliveries(&metadata)),
            (8, BTreeMap::from([(8, 1)]))
        );

        let mut next = OffsetTracker::new();
        next.assign([0]);
        assert!(next.needs_restore(0));
        next.restore(0, Some(offset), decode_deliveries(&metadata));
        assert!(!next.needs_restore(0));
        next.start(0, 8);
        assert_eq!(next.deliver(0, 8), 2, "the second delivery of 8");
        assert_eq!(next.checkpoint(0).map(|(offset, _)| offset), Some(8));
        // Metadata of something else, or garbage, restores nothing.
        assert!(decode_deliveries("").is_empty());
        assert_eq!(decode_deliveries("vidx-deliveries:1 x:y,9:2").len(), 1);
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
