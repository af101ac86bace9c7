//! Shared by the pipeline's integration tests: a fake text embedder (these tests are about
//! the stages, not the model), a frame sampler that is never called, and the real Qdrant
//! Edge store wrapped to inject outages and crashes.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use vidx_core::ports::{IndexStore, TextEmbedder};
use vidx_core::{
    Hit, IndexPoint, ModelError, SEGMENT_TASK_SCHEMA_VERSION, SearchFilter, SegmentMedia,
    SegmentTask, StoreError, SubtitleCue, TimeRange, VectorQuery,
};
use vidx_store::{EdgeStore, EdgeStoreOptions, VectorSpec};

pub const DIMENSION: usize = 8;

/// Hash-based unit vectors. Misbehaves on purpose on captions containing a marker:
/// "POISON" fails (a model rejecting the input), "BUSY" runs out of device memory every time
/// (a retryable failure of the segment), "PANIC" panics, "HANG" does not return until
/// [`release_hung`] (or 20 s), "ABORT" aborts the process (SIGABRT).
pub struct FakeEmbedder;

static RELEASE: AtomicBool = AtomicBool::new(false);

/// Let every "HANG" embedding return.
pub fn release_hung() {
    RELEASE.store(true, Ordering::SeqCst);
}

impl TextEmbedder for FakeEmbedder {
    fn name(&self) -> &str {
        "fake"
    }
    fn revision(&self) -> &str {
        "fake-1"
    }
    fn dimension(&self) -> usize {
        DIMENSION
    }
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        texts
            .iter()
            .map(|text| {
                if text.contains("POISON") {
                    return Err(ModelError::Inference {
                        model: "fake".into(),
                        reason: "bad tensor".into(),
                    });
                }
                if text.contains("BUSY") {
                    return Err(ModelError::OutOfMemory {
                        model: "fake".into(),
                        reason: "injected: out of device memory".into(),
                    });
                }
                if text.contains("PANIC") {
                    panic!("injected panic in the model");
                }
                if text.contains("ABORT") {
                    eprintln!("injected abort of the worker process");
                    std::process::abort();
                }
                if text.contains("HANG") {
                    let started = std::time::Instant::now();
                    while !RELEASE.load(Ordering::SeqCst)
                        && started.elapsed() < std::time::Duration::from_secs(20)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                let mut vector: Vec<f32> = (0..DIMENSION)
                    .map(|index| {
                        ((text.len() * 31
                            + index * 17
                            + text.bytes().map(usize::from).sum::<usize>())
                            % 97) as f32
                            + 1.0
                    })
                    .collect();
                let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
                vector.iter_mut().for_each(|v| *v /= norm);
                Ok(vector)
            })
            .collect()
    }
}

pub use vidx_testkit::NoFrames;

/// The real store, unavailable for the first `failures` upserts and while `down` is set;
/// upsert call number `hang_at` (1-based) never returns, before or after writing
/// (`hang_before_write`): what a worker killed at that point leaves behind.
pub struct FlakyStore {
    pub inner: EdgeStore,
    pub failures: AtomicUsize,
    pub upsert_calls: AtomicUsize,
    pub down: AtomicBool,
    pub hang_at: AtomicUsize,
    pub hang_before_write: AtomicBool,
    pub hung: tokio::sync::Notify,
    /// Every upsert takes this long (a slow store keeps work in flight).
    pub delay_ms: AtomicU64,
    /// What an injected failure is: 0 unreachable, 1 internal, 2 credentials refused,
    /// 3 collection missing, 4 disk full.
    pub failure_kind: AtomicUsize,
}

impl FlakyStore {
    /// A fresh store in `directory` with `failures` injected outages.
    pub fn open(directory: &std::path::Path, failures: usize) -> anyhow::Result<Self> {
        let inner = EdgeStore::open(
            directory,
            &[VectorSpec {
                name: "text".into(),
                dimension: DIMENSION,
            }],
            EdgeStoreOptions::default(),
        )?;
        Ok(Self {
            inner,
            failures: AtomicUsize::new(failures),
            upsert_calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            hang_at: AtomicUsize::new(usize::MAX),
            hang_before_write: AtomicBool::new(false),
            hung: tokio::sync::Notify::new(),
            delay_ms: AtomicU64::new(0),
            failure_kind: AtomicUsize::new(0),
        })
    }

    fn injected(&self) -> StoreError {
        let reason = "injected outage".to_string();
        match self.failure_kind.load(Ordering::SeqCst) {
            1 => StoreError::Internal(reason),
            2 => StoreError::Unauthenticated(reason),
            3 => StoreError::CollectionMissing(reason),
            4 => StoreError::Storage(reason),
            _ => StoreError::Unavailable(reason),
        }
    }

    async fn hang(&self) {
        self.hung.notify_one();
        std::future::pending::<()>().await;
    }
}

impl IndexStore for FlakyStore {
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        let call = self.upsert_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let delay_ms = self.delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(self.injected());
        }
        let remaining = self.failures.load(Ordering::SeqCst);
        if remaining > 0 {
            self.failures.store(remaining - 1, Ordering::SeqCst);
            return Err(self.injected());
        }
        let hang = call == self.hang_at.load(Ordering::SeqCst);
        if hang && self.hang_before_write.load(Ordering::SeqCst) {
            self.hang().await;
        }
        self.inner.upsert(points).await?;
        if hang {
            self.hang().await;
        }
        Ok(())
    }
    async fn search(&self, query: VectorQuery) -> Result<Vec<Hit>, StoreError> {
        self.inner.search(query).await
    }
    async fn count(&self, filter: Option<SearchFilter>) -> Result<u64, StoreError> {
        self.inner.count(filter).await
    }
    async fn point(
        &self,
        tenant: &str,
        id: vidx_core::Uuid,
    ) -> Result<Option<vidx_core::IndexPoint>, StoreError> {
        self.inner.point(tenant, id).await
    }
    async fn delete(&self, filter: SearchFilter) -> Result<vidx_core::ports::Deleted, StoreError> {
        self.inner.delete(filter).await
    }
}

/// Segment `seq` of acme/cam-1 with one subtitle moment per caption.
pub fn task(seq: u64, captions: &[&str]) -> SegmentTask {
    SegmentTask {
        generation: None,
        schema_version: SEGMENT_TASK_SCHEMA_VERSION,
        tenant: "acme".into(),
        stream_id: "cam-1".into(),
        segment_seq: seq,
        range: TimeRange::new(seq * 10_000, seq * 10_000 + 10_000),
        media: SegmentMedia::Inline(Vec::new()),
        source_uri: "cam-1".into(),
        attempt: 1,
        subtitles: captions
            .iter()
            .enumerate()
            .map(|(index, text)| SubtitleCue {
                start_ms: seq * 10_000 + index as u64 * 1_000,
                end_ms: seq * 10_000 + index as u64 * 1_000 + 900,
                text: (*text).to_string(),
            })
            .collect(),
        trace_context: Default::default(),
        labels: Vec::new(),
    }
}
