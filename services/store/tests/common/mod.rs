//! Shared by the store tests: deterministic vectors and points.
#![allow(dead_code)]

use std::collections::BTreeMap;

use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, PointPayload, RecordKind, SearchFilter, VectorQuery, point_id};
use vidx_store::VectorSpec;

pub const DIMENSION: usize = 8;

pub fn spec() -> Vec<VectorSpec> {
    vec![VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: DIMENSION,
    }]
}

pub fn unit_vector(seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut vector: Vec<f32> = (0..DIMENSION)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let norm = vector
        .iter()
        .map(|value| value * value)
        .sum::<f32>()
        .sqrt()
        .max(1e-6);
    vector.iter_mut().for_each(|value| *value /= norm);
    vector
}

pub fn point(
    tenant: &str,
    stream: &str,
    seq: u64,
    index: u32,
    start_ms: u64,
    vector: Vec<f32>,
) -> IndexPoint {
    IndexPoint {
        id: point_id(
            tenant,
            stream,
            seq,
            0,
            RecordKind::Subtitle,
            index,
            "test-rev",
        ),
        vectors: BTreeMap::from([(vector_names::TEXT.to_string(), vector)]),
        payload: PointPayload {
            tenant: tenant.into(),
            stream_id: stream.into(),
            segment_seq: seq,
            kind: RecordKind::Subtitle,
            start_ms,
            end_ms: start_ms + 2_000,
            caption: format!("{stream} {seq} {index}"),
            model_rev: "test-rev".into(),
            source_uri: format!("/videos/{stream}.mp4"),
            region: None,
            thumbnail: None,
            indexed_at_ms: 0,
            labels: Vec::new(),
        },
        thumbnail: None,
    }
}

/// Points of stream `cam`, 100 per segment, 10 ms apart.
pub fn camera_points(indexes: std::ops::Range<u64>) -> Vec<IndexPoint> {
    indexes
        .map(|index| {
            point(
                "acme",
                "cam",
                index / 100,
                index as u32 % 100,
                index * 10,
                unit_vector(index),
            )
        })
        .collect()
}

pub fn query(vector: Vec<f32>, filter: SearchFilter, top_k: usize) -> VectorQuery {
    VectorQuery {
        vector_name: vector_names::TEXT.into(),
        vector,
        filter,
        top_k,
        caption_words: None,
    }
}
