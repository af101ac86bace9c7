//! Deterministic point ids: re-delivering a segment overwrites its points instead of adding
//! new ones, and a new model revision gets ids of its own. A segment is known by its sequence
//! number *and* its start: a file cut again starts its segments where it did before (the same
//! ids), while a live stream resubmitted under the same `stream_id`, or reconnected after an
//! ingest restart, numbers its segments from 0 again at later wall-clock starts (new ids: the
//! earlier session's moments stay).

use uuid::Uuid;

use crate::types::RecordKind;

/// The UUIDv5 namespace of vidx point ids. Changing it changes every id ever written.
pub const POINT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_1d2e_8a7b_4c3d_9e6f_0a1b_2c3d_4e5f);

/// `UUIDv5(tenant, stream_id, segment_seq, segment_start_ms, kind, index, model_rev)`, where
/// `segment_start_ms` is the segment's start (media time of a file, wall-clock time of a live
/// stream).
///
/// Each string field is length-prefixed so that no two different tuples can encode to the same
/// name (`("a/b", "c")` and `("a", "b/c")` stay distinct).
pub fn point_id(
    tenant: &str,
    stream_id: &str,
    segment_seq: u64,
    segment_start_ms: u64,
    kind: RecordKind,
    index: u32,
    model_rev: &str,
) -> Uuid {
    let mut name = Vec::with_capacity(64 + tenant.len() + stream_id.len() + model_rev.len());
    for field in [tenant, stream_id] {
        name.extend_from_slice(&(field.len() as u64).to_le_bytes());
        name.extend_from_slice(field.as_bytes());
    }
    name.extend_from_slice(&segment_seq.to_le_bytes());
    name.extend_from_slice(&segment_start_ms.to_le_bytes());
    let kind = kind.as_str();
    name.extend_from_slice(&(kind.len() as u64).to_le_bytes());
    name.extend_from_slice(kind.as_bytes());
    name.extend_from_slice(&index.to_le_bytes());
    name.extend_from_slice(&(model_rev.len() as u64).to_le_bytes());
    name.extend_from_slice(model_rev.as_bytes());
    Uuid::new_v5(&POINT_ID_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_tuple_gives_same_id_and_version_5() {
        let first = point_id("t", "cam-1", 3, 6000, RecordKind::Subtitle, 0, "rev1");
        let second = point_id("t", "cam-1", 3, 6000, RecordKind::Subtitle, 0, "rev1");
        assert_eq!(first, second);
        assert_eq!(first.get_version_num(), 5);
    }

    #[test]
    fn new_model_revision_gives_new_id() {
        let old = point_id("t", "s", 1, 2000, RecordKind::Caption, 2, "rev1");
        let new = point_id("t", "s", 1, 2000, RecordKind::Caption, 2, "rev2");
        assert_ne!(old, new);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let left = point_id("a/b", "c", 0, 0, RecordKind::Caption, 0, "r");
        let right = point_id("a", "b/c", 0, 0, RecordKind::Caption, 0, "r");
        assert_ne!(left, right);
    }

    #[test]
    fn a_segment_restarted_at_a_later_start_gets_new_ids() {
        // A live stream's second session numbers its segments from 0 again, later.
        let first = point_id(
            "t",
            "cam-1",
            0,
            1_764_000_000_000,
            RecordKind::Caption,
            0,
            "r",
        );
        let again = point_id(
            "t",
            "cam-1",
            0,
            1_764_000_000_000,
            RecordKind::Caption,
            0,
            "r",
        );
        let later = point_id(
            "t",
            "cam-1",
            0,
            1_764_000_600_000,
            RecordKind::Caption,
            0,
            "r",
        );
        assert_eq!(first, again, "a replay of the same segment overwrites");
        assert_ne!(first, later, "a new session does not");
    }

    proptest! {
        #[test]
        fn distinct_tuples_give_distinct_ids(
            stream_a in "[a-z]{1,6}", stream_b in "[a-z]{1,6}",
            seq_a in 0u64..50, seq_b in 0u64..50,
            index_a in 0u32..20, index_b in 0u32..20,
        ) {
            let id_a = point_id("t", &stream_a, seq_a, 0, RecordKind::Subtitle, index_a, "r");
            let id_b = point_id("t", &stream_b, seq_b, 0, RecordKind::Subtitle, index_b, "r");
            prop_assert_eq!(id_a == id_b, (stream_a, seq_a, index_a) == (stream_b, seq_b, index_b));
        }
    }
}
