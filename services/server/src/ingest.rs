//! The ingest: accept an input (over gRPC, a file under an allow-listed root or an
//! allow-listed URL), segment it, publish its segments to the segment queue, and follow the
//! job through the workers. One implementation for both modes: Kafka in a cluster, the
//! in-process queue in `vidx index`.
//!
//! Progress comes from the queue itself ([`IngestProgress`]), so it holds across worker
//! crashes and rebalances: a segment is finished once the workers settled past its offset
//! (indexed or dead-lettered), and it failed if its offset shows up as a dead letter.
//!
//! Jobs are recorded in a [`JobJournal`] (the compacted jobs topic in a cluster) when they are
//! accepted and when their segmenting ends, so that a restarted ingest node still answers for
//! them: finished ones with the segments they published, unfinished ones segmented again
//! (their point ids make that idempotent) and live streams reconnected.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use vidx_core::ports::{BlobStore, BoxFuture, DeliveryTag, IngestProgress, SegmentQueue};
use vidx_core::{QueueError, SegmentMedia};
use vidx_media::{InputSource, SegmentOptions, UrlPolicy};
use vidx_proto::v1;
use vidx_proto::v1::JobState;

use crate::Metrics;
use crate::auth::tenant_of;
use crate::status::invalid;

/// Longest accepted `source` and `stream_id`.
pub const MAX_SOURCE_CHARS: usize = 4096;
pub const MAX_STREAM_ID_CHARS: usize = 512;

#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Directories under which local paths are accepted (canonical).
    pub roots: Vec<PathBuf>,
    pub policy: UrlPolicy,
    pub segment_ms: u64,
    /// Past this without a keyframe, a file is cut by re-encoding.
    pub max_segment_ms: u64,
    pub max_pixels: u64,
    pub inline_max_bytes: u64,
    /// A local directory where segments are cut before they are published.
    pub spool_dir: PathBuf,
    /// Where segments too large to travel inline go (a shared volume or object storage the
    /// workers read too).
    pub blobs: Arc<dyn BlobStore>,
    /// What one tenant may hold on this node.
    pub limits: TenantLimits,
    /// A live source without packets for this long is degraded and reconnected.
    pub live_stall_timeout: Duration,
    /// Where live segments are kept for playback (the media store, beside the thumbnails);
    /// `None`: nowhere.
    pub footage: Option<Arc<dyn BlobStore>>,
    /// How long and how much of it (`media.retention`).
    pub retention: crate::footage::Retention,
}

/// What one tenant may hold on an ingest node: no tenant's flood evicts or blocks another's
/// jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    /// Jobs remembered; beyond this the tenant's oldest finished jobs are forgotten (their
    /// segments are indexed all the same).
    pub jobs: usize,
    /// Jobs segmenting at once (live streams included).
    pub running_jobs: usize,
    /// Live streams followed at once.
    pub live_streams: usize,
}

/// URL schemes of live sources (cameras, encoders, HLS): ingested until stopped, with
/// reconnects and wall-clock segment times. `http(s)` counts when the path is an HLS
/// playlist (`.m3u8`). Each must also be in `media.allowed_url_schemes`.
pub const LIVE_SCHEMES: &[&str] = &["rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp"];

/// Whether `source` is a live source (see [`LIVE_SCHEMES`]).
pub fn is_live_source(source: &str) -> bool {
    let Some(scheme) = scheme_of(source) else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    if LIVE_SCHEMES.contains(&scheme.as_str()) {
        return true;
    }
    let path = source.split(['?', '#']).next().unwrap_or(source);
    (scheme == "http" || scheme == "https") && path.to_ascii_lowercase().ends_with(".m3u8")
}

/// A live job's stream: its state as the media loop reports it.
#[derive(Debug)]
struct LiveRecord {
    stream_id: String,
    state: v1::StreamState,
    reason: String,
    segments: u64,
    reconnects: u64,
    last_end_ms: u64,
    went_live: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether `source` starts with a URL scheme (`http:`, `concat:`, `data:` …). One letter
/// before the colon is a Windows drive, not a scheme.
fn scheme_of(source: &str) -> Option<&str> {
    let (scheme, _) = source.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (scheme.len() > 1
        && first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Check a submitted source against the rules without opening it (no connection is made
/// for a refused URL), naming the rule it breaks.
pub fn resolve_source(source: &str, settings: &IngestSettings) -> Result<InputSource, Status> {
    if source.trim().is_empty() {
        return Err(invalid("source", "must not be empty"));
    }
    if source.chars().count() > MAX_SOURCE_CHARS {
        return Err(invalid(
            "source",
            format!("longer than {MAX_SOURCE_CHARS} characters"),
        ));
    }
    if let Some(scheme) = scheme_of(source) {
        let scheme = scheme.to_ascii_lowercase();
        if !settings.policy.allowed_schemes.contains(&scheme) {
            return Err(invalid(
                "source",
                format!(
                    "scheme `{scheme}` is not allowed (allowed: {})",
                    settings.policy.allowed_schemes.join(", ")
                ),
            ));
        }
        settings.policy.check(source).map_err(|error| match error {
            vidx_core::MediaError::Rejected { reason, .. } => invalid("source", reason),
            other => invalid("source", other),
        })?;
        return Ok(InputSource::Url(source.to_string()));
    }
    resolve_path(Path::new(source), &settings.roots)
}

fn resolve_path(path: &Path, roots: &[PathBuf]) -> Result<InputSource, Status> {
    if roots.is_empty() {
        return Err(invalid(
            "source",
            "local paths are not accepted by this server (server.ingest_roots is empty)",
        ));
    }
    if !path.is_absolute() {
        return Err(invalid(
            "source",
            "a local path must be absolute and under an ingest root",
        ));
    }
    if path.components().any(|part| part == Component::ParentDir) {
        return Err(invalid("source", "`..` is not allowed in paths"));
    }
    let outside = || invalid("source", "path is outside the allowed ingest roots");
    let canonical = match std::fs::canonicalize(path) {
        Ok(canonical) => canonical,
        // Say "not found" only inside a root: outside, the answer must not reveal what exists.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(if roots.iter().any(|root| path.starts_with(root)) {
                Status::not_found(format!("source: {} does not exist", path.display()))
            } else {
                outside()
            });
        }
        Err(_) => return Err(outside()),
    };
    // Checked after resolving symlinks, so a link inside a root cannot lead out of it.
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(outside());
    }
    if !canonical.is_file() {
        return Err(invalid("source", "not a regular file"));
    }
    Ok(InputSource::File(canonical))
}

/// Where an ingest node keeps its jobs, so that a restart does not forget them.
pub trait JobJournal: Send + Sync + std::fmt::Debug {
    /// Record the job's latest state; durable when it returns.
    fn record<'a>(
        &'a self,
        entry: &'a v1::JobJournalEntry,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
    /// The latest state of every job recorded. Blocking (a broker round trip or more).
    fn replay(&self) -> Result<Vec<v1::JobJournalEntry>, QueueError>;
}

/// No journal: `vidx index`, whose jobs end with the run (the next run segments again).
#[derive(Debug, Default)]
pub struct NoJournal;

impl JobJournal for NoJournal {
    fn record<'a>(
        &'a self,
        _entry: &'a v1::JobJournalEntry,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async { Ok(()) })
    }

    fn replay(&self) -> Result<Vec<v1::JobJournalEntry>, QueueError> {
        Ok(Vec::new())
    }
}

impl JobJournal for vidx_bus::JobTopic {
    fn record<'a>(
        &'a self,
        entry: &'a v1::JobJournalEntry,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            vidx_bus::JobTopic::record(self, &entry.job_id, &vidx_proto::encode_job_entry(entry))
                .await
        })
    }

    fn replay(&self) -> Result<Vec<v1::JobJournalEntry>, QueueError> {
        Ok(vidx_bus::JobTopic::replay(self)?
            .into_iter()
            .filter_map(|(key, bytes)| match vidx_proto::decode_job_entry(&bytes) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    tracing::warn!(job_id = key, error = %error, "unreadable job record skipped");
                    None
                }
            })
            .collect())
    }
}

#[derive(Debug)]
struct JobRecord {
    tenant: String,
    source: String,
    /// The source as submitted and the stream id, for the journal.
    submitted: String,
    stream_id: String,
    segmenting: bool,
    segmented: bool,
    published: Vec<DeliveryTag>,
    dead_lettered: HashMap<DeliveryTag, String>,
    error: String,
    live: Option<LiveRecord>,
    /// The stream's labels (`key=value`), put on every segment.
    labels: Vec<String>,
}

/// A published blob segment, deleted once the workers have committed past it.
#[derive(Debug)]
struct PendingBlob {
    uri: String,
    /// When a collection round first saw the segment committed.
    committed_since: Option<Instant>,
}

/// How long a committed segment's blob is kept before it is deleted: the worker publishes a
/// dead letter before it commits, and this leaves the dead-letter reader time to see it, so
/// a dead-lettered segment keeps its blob (for inspection and replay).
pub const BLOB_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct JobTable {
    jobs: HashMap<String, JobRecord>,
    order: VecDeque<String>,
    by_tag: HashMap<DeliveryTag, String>,
    /// Outlives its job's record: an evicted job's blobs are still collected.
    blobs: HashMap<DeliveryTag, PendingBlob>,
}

/// The jobs this ingest node accepted (in memory: a restarted ingest forgets them, while the
/// segments it published stay on the queue and are indexed regardless).
#[derive(Debug, Default)]
pub struct Jobs {
    table: Mutex<JobTable>,
}

impl Jobs {
    fn lock(&self) -> Result<MutexGuard<'_, JobTable>, Status> {
        self.table
            .lock()
            .map_err(|_| Status::internal("job table lock poisoned"))
    }

    /// Remember a new job of `tenant`, within `limits`: a tenant with `running_jobs` jobs (or
    /// `live_streams` streams, for a stream) still running is refused with
    /// `RESOURCE_EXHAUSTED`; one with `jobs` jobs forgets its own oldest finished one (never
    /// another tenant's), or is refused when none has finished.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        id: &str,
        tenant: &str,
        source: &str,
        submitted: &str,
        stream_id: &str,
        limits: &TenantLimits,
        live_stream: Option<&str>,
    ) -> Result<(), Status> {
        let mut table = self.lock()?;
        let own: Vec<(&String, &JobRecord)> = table
            .order
            .iter()
            .filter_map(|id| table.jobs.get(id).map(|job| (id, job)))
            .filter(|(_, job)| job.tenant == tenant)
            .collect();
        let running = own.iter().filter(|(_, job)| !job.segmented).count();
        let streaming = own
            .iter()
            .filter(|(_, job)| !job.segmented && job.live.is_some())
            .count();
        if live_stream.is_some() && streaming >= limits.live_streams.max(1) {
            return Err(Status::resource_exhausted(format!(
                "tenant `{tenant}` follows {streaming} live streams, the most allowed \
                 (server.max_live_streams_per_tenant): stop one first"
            )));
        }
        if running >= limits.running_jobs.max(1) {
            return Err(Status::resource_exhausted(format!(
                "tenant `{tenant}` has {running} jobs running, the most allowed \
                 (server.max_running_jobs_per_tenant): retry when one has finished"
            )));
        }
        let mut forget: Vec<String> = Vec::new();
        let mut held = own.len();
        for (id, job) in &own {
            if held < limits.jobs.max(1) {
                break;
            }
            if job.segmented {
                forget.push(id.to_string());
                held -= 1;
            }
        }
        if held >= limits.jobs.max(1) {
            return Err(Status::resource_exhausted(format!(
                "tenant `{tenant}` holds {held} jobs, the most allowed \
                 (server.max_jobs_per_tenant)"
            )));
        }
        for oldest in forget {
            table.order.retain(|id| *id != oldest);
            if let Some(job) = table.jobs.remove(&oldest) {
                for tag in job.published {
                    table.by_tag.remove(&tag);
                }
            }
        }
        table.jobs.insert(
            id.to_string(),
            JobRecord {
                tenant: tenant.to_string(),
                source: source.to_string(),
                submitted: submitted.to_string(),
                stream_id: stream_id.to_string(),
                segmenting: false,
                segmented: false,
                published: Vec::new(),
                dead_lettered: HashMap::new(),
                error: String::new(),
                labels: Vec::new(),
                live: live_stream.map(|stream_id| LiveRecord {
                    stream_id: stream_id.to_string(),
                    state: v1::StreamState::Connecting,
                    reason: String::new(),
                    segments: 0,
                    reconnects: 0,
                    last_end_ms: 0,
                    went_live: false,
                    stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                }),
            },
        );
        table.order.push_back(id.to_string());
        Ok(())
    }

    /// A job of the journal that had ended its segmenting before the node restarted: its
    /// progress comes from the segments it published.
    fn restore_finished(&self, entry: &v1::JobJournalEntry, limits: &TenantLimits) {
        if self
            .insert(
                &entry.job_id,
                &entry.tenant,
                &entry.display_source,
                &entry.source,
                &entry.stream_id,
                limits,
                None,
            )
            .is_err()
        {
            return;
        }
        if let Ok(mut table) = self.table.lock() {
            let tags: Vec<DeliveryTag> = entry
                .published
                .iter()
                .map(|at| DeliveryTag {
                    partition: at.partition,
                    offset: at.offset,
                })
                .collect();
            for tag in &tags {
                table.by_tag.insert(*tag, entry.job_id.clone());
            }
            if let Some(job) = table.jobs.get_mut(&entry.job_id) {
                job.segmenting = true;
                job.segmented = true;
                job.published = tags;
                job.error = entry.error.clone();
                job.labels = entry.labels.clone();
            }
        }
    }

    /// The journal record of a job as it stands.
    fn entry(&self, id: &str) -> Option<v1::JobJournalEntry> {
        let table = self.table.lock().ok()?;
        let job = table.jobs.get(id)?;
        Some(v1::JobJournalEntry {
            job_id: id.to_string(),
            tenant: job.tenant.clone(),
            source: job.submitted.clone(),
            display_source: job.source.clone(),
            labels: job.labels.clone(),
            stream_id: job.stream_id.clone(),
            live: job.live.is_some(),
            segmented: job.segmented,
            published: job
                .published
                .iter()
                .map(|tag| v1::SegmentRef {
                    partition: tag.partition,
                    offset: tag.offset,
                })
                .collect(),
            error: job.error.clone(),
        })
    }

    fn remove(&self, id: &str) {
        if let Ok(mut table) = self.table.lock() {
            table.jobs.remove(id);
            table.order.retain(|known| known != id);
        }
    }

    /// The stop flag of a live job.
    fn live_stop(&self, id: &str) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        let table = self.table.lock().ok()?;
        table
            .jobs
            .get(id)?
            .live
            .as_ref()
            .map(|live| live.stop.clone())
    }

    /// Record a live job's stream state.
    fn stream_state(&self, id: &str, state: vidx_media::StreamState) {
        self.update(id, |job| {
            let Some(live) = job.live.as_mut() else {
                return;
            };
            let (code, reason) = match state {
                vidx_media::StreamState::Connecting => (v1::StreamState::Connecting, String::new()),
                vidx_media::StreamState::Live => {
                    if live.went_live {
                        live.reconnects += 1;
                    }
                    live.went_live = true;
                    (v1::StreamState::Live, String::new())
                }
                vidx_media::StreamState::Degraded { reason } => (v1::StreamState::Degraded, reason),
                vidx_media::StreamState::Stopped { cause } => (
                    v1::StreamState::Stopped,
                    format!("{cause:?}").to_lowercase(),
                ),
            };
            tracing::info!(job_id = id, state = ?code, reason, "live stream state");
            live.state = code;
            live.reason = reason;
        });
    }

    fn live_view(id: &str, job: &JobRecord) -> Option<v1::LiveStream> {
        let live = job.live.as_ref()?;
        Some(v1::LiveStream {
            job_id: id.to_string(),
            stream_id: live.stream_id.clone(),
            source: job.source.clone(),
            state: live.state as i32,
            reason: live.reason.clone(),
            segments: live.segments,
            reconnects: live.reconnects,
            last_end_ms: live.last_end_ms,
        })
    }

    /// The tenant's live streams, oldest first.
    fn streams(&self, tenant: &str) -> Result<Vec<v1::LiveStream>, Status> {
        let table = self.lock()?;
        Ok(table
            .order
            .iter()
            .filter_map(|id| {
                let job = table.jobs.get(id)?;
                (job.tenant == tenant).then(|| Self::live_view(id, job))?
            })
            .collect())
    }

    /// Ask a live job to stop; its state as it is now.
    fn stop_stream(&self, id: &str, tenant: &str) -> Result<v1::LiveStream, Status> {
        let table = self.lock()?;
        let job = table
            .jobs
            .get(id)
            .filter(|job| job.tenant == tenant)
            .ok_or_else(|| Status::not_found(format!("job_id: no job {id}")))?;
        let live = job
            .live
            .as_ref()
            .ok_or_else(|| invalid("job_id", format!("job {id} is not a live stream")))?;
        live.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Self::live_view(id, job).ok_or_else(|| Status::internal("live job vanished"))
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut JobRecord)) {
        if let Ok(mut table) = self.table.lock()
            && let Some(job) = table.jobs.get_mut(id)
        {
            change(job);
        }
    }

    fn published(&self, id: &str, tag: DeliveryTag, blob: Option<String>) {
        if let Ok(mut table) = self.table.lock() {
            if let Some(uri) = blob {
                table.blobs.insert(
                    tag,
                    PendingBlob {
                        uri,
                        committed_since: None,
                    },
                );
            }
            if let Some(job) = table.jobs.get_mut(id) {
                job.published.push(tag);
                table.by_tag.insert(tag, id.to_string());
            }
        }
    }

    /// A dead letter arrived: count it against its job, if it is one of ours (then `true`).
    /// Its blob is kept.
    pub fn dead_lettered(&self, tag: DeliveryTag, error: String) -> bool {
        let Ok(mut table) = self.table.lock() else {
            return false;
        };
        let blob = table.blobs.remove(&tag);
        if let Some(blob) = &blob {
            tracing::info!(uri = blob.uri, "blob of a dead-lettered segment kept");
        }
        if let Some(id) = table.by_tag.get(&tag).cloned()
            && let Some(job) = table.jobs.get_mut(&id)
        {
            job.dead_lettered.insert(tag, error);
            return true;
        }
        blob.is_some()
    }

    /// Blobs still waiting for their segment to be committed.
    pub fn pending_blobs(&self) -> usize {
        self.table.lock().map_or(0, |table| table.blobs.len())
    }

    /// Take the blobs whose segments were committed at least [`BLOB_GRACE`] ago (seen by an
    /// earlier call) and not dead-lettered: they can be deleted.
    pub fn take_finished_blobs(&self, committed: &HashMap<i32, i64>, now: Instant) -> Vec<String> {
        let Ok(mut table) = self.table.lock() else {
            return Vec::new();
        };
        let mut finished = Vec::new();
        table.blobs.retain(|tag, blob| {
            let done = committed
                .get(&tag.partition)
                .is_some_and(|next| tag.offset < *next);
            if !done {
                return true;
            }
            let since = *blob.committed_since.get_or_insert(now);
            if now.duration_since(since) < BLOB_GRACE {
                return true;
            }
            finished.push(std::mem::take(&mut blob.uri));
            false
        });
        finished
    }

    /// The job as the caller sees it, given the group's committed offsets.
    /// The ids of `tenant`'s jobs, oldest first.
    fn ids(&self, tenant: &str) -> Result<Vec<String>, Status> {
        let table = self.lock()?;
        Ok(table
            .order
            .iter()
            .filter(|id| table.jobs.get(*id).is_some_and(|job| job.tenant == tenant))
            .cloned()
            .collect())
    }

    fn view(
        &self,
        id: &str,
        tenant: &str,
        committed: &HashMap<i32, i64>,
    ) -> Result<v1::Job, Status> {
        let table = self.lock()?;
        let job = table
            .jobs
            .get(id)
            // Another tenant's job is reported exactly like a job that does not exist.
            .filter(|job| job.tenant == tenant)
            .ok_or_else(|| Status::not_found(format!("job_id: no job {id}")))?;
        let total = job.published.len() as u64;
        let finished = job
            .published
            .iter()
            .filter(|tag| {
                committed
                    .get(&tag.partition)
                    .is_some_and(|next| tag.offset < *next)
            })
            .count() as u64;
        let failed = (job.dead_lettered.len() as u64).min(finished);
        let state = if !job.segmenting && !job.segmented {
            JobState::Accepted
        } else if !job.segmented {
            JobState::Segmenting
        } else if total == 0 || (finished == total && (failed == total || !job.error.is_empty())) {
            // Nothing to index, everything dead-lettered, or the input broke off partway
            // (what was published before the break is indexed and counted).
            JobState::Failed
        } else if finished == total {
            JobState::Done
        } else {
            JobState::Indexing
        };
        let mut progress = if total == 0 {
            0.0
        } else {
            finished as f32 / total as f32
        };
        if !job.segmented {
            // More segments may come: never report a segmenting job as complete.
            progress = progress.min(0.99);
        }
        let mut error = job.error.clone();
        if error.is_empty()
            && let Some(first) = job.dead_lettered.values().next()
        {
            error = format!("{failed} segment(s) dead-lettered; first error: {first}");
        }
        Ok(v1::Job {
            job_id: id.to_string(),
            source: job.source.clone(),
            state: state as i32,
            segments_total: total,
            segments_done: finished - failed,
            segments_failed: failed,
            progress,
            error,
            stream: Self::live_view(id, job),
        })
    }
}

/// The ingest of one node over any segment queue: it accepts jobs, segments each input into
/// the queue (inline or by blob), and follows the jobs through the queue's progress. `vidx
/// run ingest` runs it over Kafka behind `IngestService`; `vidx index` runs it over the
/// in-process queue and awaits each job.
pub struct Ingest<Q> {
    settings: Arc<IngestSettings>,
    queue: Arc<Q>,
    progress: Arc<dyn IngestProgress>,
    journal: Arc<dyn JobJournal>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl<Q: SegmentQueue> Ingest<Q> {
    /// Jobs segment into `queue`; `progress` reports on the same queue; `journal` keeps the
    /// jobs for a restart. Segmenting stops when `shutdown` turns true (the job ends with an
    /// error saying so).
    pub fn new(
        settings: IngestSettings,
        queue: Arc<Q>,
        progress: Arc<dyn IngestProgress>,
        journal: Arc<dyn JobJournal>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        // The node that writes live footage deletes what retention no longer keeps.
        if let Some(store) = &settings.footage
            && settings.retention.keeps_footage()
        {
            crate::footage::spawn_sweeper(store.clone(), settings.retention, shutdown.clone());
        }
        Self {
            settings: Arc::new(settings),
            queue,
            progress,
            journal,
            jobs: Arc::new(Jobs::default()),
            metrics,
            shutdown,
        }
    }

    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    /// Accept a job for `input` as `stream_id` of `tenant`: its id, and the work that
    /// segments and publishes it (spawn it, or await it). Not journaled: what `vidx index`
    /// does; a node's requests go through [`submit`](Self::submit).
    pub fn accept(
        &self,
        tenant: &str,
        input: InputSource,
        stream_id: String,
        labels: Vec<String>,
        live: bool,
    ) -> Result<(String, impl Future<Output = ()> + Send + use<Q>), Status> {
        let submitted = input.display_name();
        self.accept_as(
            uuid::Uuid::new_v4().to_string(),
            tenant,
            input,
            &submitted,
            stream_id,
            labels,
            live,
            None,
        )
    }

    /// Accept `input` as a job whose segments go to index generation `generation` (a
    /// reindex's): not journaled (the reindex keeps its own record and submits again what
    /// a restart cut short).
    pub fn accept_into(
        &self,
        generation: u32,
        tenant: &str,
        input: InputSource,
        stream_id: String,
        labels: Vec<String>,
    ) -> Result<(String, impl Future<Output = ()> + Send + use<Q>), Status> {
        let submitted = input.display_name();
        self.accept_as(
            uuid::Uuid::new_v4().to_string(),
            tenant,
            input,
            &submitted,
            stream_id,
            labels,
            false,
            Some(generation),
        )
    }

    /// Accept `source` (as submitted) as a job, under `stream_id` or else the input's name,
    /// and record it in the journal before the caller hears of it: a node that restarts after
    /// this still knows the job.
    pub async fn submit(
        &self,
        tenant: &str,
        source: &str,
        stream_id: Option<String>,
        labels: Vec<String>,
        live: bool,
    ) -> Result<(String, impl Future<Output = ()> + Send + use<Q>), Status> {
        let input = resolve_source(source, &self.settings)?;
        let stream_id = stream_id.unwrap_or_else(|| input.display_name());
        let (job_id, work) = self.accept_as(
            uuid::Uuid::new_v4().to_string(),
            tenant,
            input,
            source,
            stream_id,
            labels,
            live,
            None,
        )?;
        let entry = self
            .jobs
            .entry(&job_id)
            .ok_or_else(|| Status::internal("job vanished"))?;
        if let Err(error) = self.journal.record(&entry).await {
            self.jobs.remove(&job_id);
            return Err(Status::unavailable(format!(
                "cannot record the job: {error}"
            )));
        }
        Ok((job_id, work))
    }

    /// Take back the jobs of the journal, for a node that restarted: jobs whose segmenting
    /// had ended answer with the segments they published; the others are segmented again
    /// under their id (the same points; live streams reconnect). Returns their works, to
    /// spawn. A source that the rules refuse now ends its job with the reason.
    pub async fn restore(
        &self,
    ) -> Result<Vec<impl Future<Output = ()> + Send + use<Q>>, QueueError> {
        let journal = self.journal.clone();
        let entries = tokio::task::spawn_blocking(move || journal.replay())
            .await
            .map_err(|error| QueueError::Unavailable(format!("jobs replay task: {error}")))??;
        let mut works = Vec::new();
        let (mut finished, mut resumed) = (0usize, 0usize);
        for mut entry in entries {
            if !entry.segmented {
                let reason = match resolve_source(&entry.source, &self.settings) {
                    Ok(input) => match self.accept_as(
                        entry.job_id.clone(),
                        &entry.tenant,
                        input,
                        &entry.source,
                        entry.stream_id.clone(),
                        entry.labels.clone(),
                        entry.live,
                        None,
                    ) {
                        Ok((_, work)) => {
                            resumed += 1;
                            works.push(work);
                            continue;
                        }
                        Err(status) => status.message().to_string(),
                    },
                    Err(status) => status.message().to_string(),
                };
                tracing::warn!(job_id = entry.job_id, reason, "job not resumed");
                entry.segmented = true;
                entry.error = format!("not resumed after a restart: {reason}");
            }
            self.jobs.restore_finished(&entry, &self.settings.limits);
            finished += 1;
        }
        if finished + resumed > 0 {
            tracing::info!(finished, resumed, "jobs restored from the journal");
        }
        Ok(works)
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_as(
        &self,
        job_id: String,
        tenant: &str,
        input: InputSource,
        submitted: &str,
        stream_id: String,
        labels: Vec<String>,
        live: bool,
        generation: Option<u32>,
    ) -> Result<(String, impl Future<Output = ()> + Send + use<Q>), Status> {
        self.jobs.insert(
            &job_id,
            tenant,
            &input.display_name(),
            submitted,
            &stream_id,
            &self.settings.limits,
            live.then_some(stream_id.as_str()),
        )?;
        // Kept for the journal (a resumed job gets them back).
        self.jobs
            .update(&job_id, |job| job.labels.clone_from(&labels));
        tracing::info!(job_id, tenant, stream_id, source = %input.display_name(), "job accepted");
        let work = run_job(
            job_id.clone(),
            input,
            stream_id,
            labels,
            tenant.to_string(),
            JobContext {
                generation,
                settings: self.settings.clone(),
                queue: self.queue.clone(),
                journal: self.journal.clone(),
                jobs: self.jobs.clone(),
                metrics: self.metrics.clone(),
                shutdown: self.shutdown.clone(),
            },
        );
        Ok((job_id, work))
    }

    /// The job as `tenant` sees it now (a broker round trip for the committed offsets).
    pub async fn job(&self, tenant: &str, job_id: &str) -> Result<v1::Job, Status> {
        let committed = self.committed().await?;
        self.jobs.view(job_id, tenant, &committed)
    }

    /// `tenant`'s jobs, oldest first, as [`job`](Self::job) shows each (one round trip).
    pub async fn jobs(&self, tenant: &str) -> Result<Vec<v1::Job>, Status> {
        let committed = self.committed().await?;
        let ids = self.jobs.ids(tenant)?;
        Ok(ids
            .iter()
            // A job forgotten meanwhile is left out.
            .filter_map(|id| self.jobs.view(id, tenant, &committed).ok())
            .collect())
    }

    /// The queue's committed offsets per partition.
    async fn committed(&self) -> Result<HashMap<i32, i64>, Status> {
        let progress = self.progress.clone();
        tokio::task::spawn_blocking(move || progress.committed())
            .await
            .map_err(|error| Status::internal(format!("progress task: {error}")))?
            .map_err(|error| Status::unavailable(error.to_string()))
    }

    /// A `SubmitRequest` of `tenant` checked, accepted, journaled and started (its work
    /// spawned under the current span); the job's id.
    pub async fn submit_request(
        &self,
        tenant: &str,
        request: v1::SubmitRequest,
    ) -> Result<String, Status> {
        let stream_id = match request.stream_id {
            Some(stream_id) if stream_id.trim().is_empty() => {
                return Err(invalid("stream_id", "must not be empty when set"));
            }
            Some(stream_id) if stream_id.chars().count() > MAX_STREAM_ID_CHARS => {
                return Err(invalid(
                    "stream_id",
                    format!("longer than {MAX_STREAM_ID_CHARS} characters"),
                ));
            }
            stream_id => stream_id,
        };
        let labels = vidx_core::labels::from_map(&request.labels)
            .map_err(|reason| invalid("labels", reason))?;
        let live = is_live_source(&request.source);
        let (job_id, work) = self
            .submit(tenant, &request.source, stream_id, labels, live)
            .await?;
        // The job's span is a child of this request's (and so of the caller's trace).
        tokio::spawn(tracing::Instrument::instrument(
            work,
            tracing::Span::current(),
        ));
        Ok(job_id)
    }

    /// Why segmenting the job failed or stopped early, if it did (segments that failed in
    /// the workers are not counted here).
    pub fn ingest_error(&self, job_id: &str) -> Option<String> {
        let table = self.jobs.table.lock().ok()?;
        let job = table.jobs.get(job_id)?;
        (!job.error.is_empty()).then(|| job.error.clone())
    }

    /// The tenant's live streams, oldest first.
    pub fn streams(&self, tenant: &str) -> Result<Vec<v1::LiveStream>, Status> {
        self.jobs.streams(tenant)
    }

    /// Ask a live job to stop; its state as it is now.
    pub fn stop_stream(&self, job_id: &str, tenant: &str) -> Result<v1::LiveStream, Status> {
        self.jobs.stop_stream(job_id, tenant)
    }

    /// Count dead letters against their jobs, until the queue's dead letters end (a Kafka
    /// reader never ends; an in-process queue's with the queue).
    pub async fn follow_dead_letters(&self) -> Result<(), QueueError> {
        loop {
            let (tag, error) = match self.progress.next_dead_letter().await {
                Ok(letter) => letter,
                Err(QueueError::Closed) => return Ok(()),
                Err(error) => return Err(error),
            };
            if self.jobs.dead_lettered(tag, error) {
                self.metrics.dead_letters.inc();
            }
        }
    }

    /// Delete the blobs of committed segments, every [`BLOB_GRACE`] while there are any. A
    /// queue or blob store that is down only delays this; it never fails the node.
    pub async fn collect_blobs(&self) {
        let mut tick = tokio::time::interval(BLOB_GRACE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.jobs.pending_blobs() == 0 {
                continue;
            }
            let reader = self.progress.clone();
            let committed = match tokio::task::spawn_blocking(move || reader.committed()).await {
                Ok(Ok(committed)) => committed,
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "blob collection: committed offsets unavailable");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "blob collection task failed");
                    continue;
                }
            };
            for uri in self.jobs.take_finished_blobs(&committed, Instant::now()) {
                match self.settings.blobs.delete(&uri).await {
                    Ok(()) => tracing::debug!(uri, "blob deleted"),
                    Err(error) => tracing::warn!(uri, error = %error, "blob not deleted"),
                }
            }
        }
    }
}

/// How often a watched job is looked at for changes.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// `IngestService` over a node's [`Ingest`].
pub struct IngestApi<Q> {
    ingest: Arc<Ingest<Q>>,
}

impl<Q> IngestApi<Q> {
    pub fn new(ingest: Arc<Ingest<Q>>) -> Self {
        Self { ingest }
    }
}

#[tonic::async_trait]
impl<Q: SegmentQueue> v1::ingest_service_server::IngestService for IngestApi<Q> {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let job_id = self
            .ingest
            .submit_request(&tenant, request.into_inner())
            .await?;
        Ok(Response::new(v1::SubmitResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let tenant = tenant_of(&request)?;
        let job_id = request.into_inner().job_id;
        if job_id.is_empty() {
            return Err(invalid("job_id", "must not be empty"));
        }
        self.ingest.job(&tenant, &job_id).await.map(Response::new)
    }

    type WatchJobStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Job, Status>> + Send>>;

    async fn watch_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = tenant_of(&request)?;
        let job_id = request.into_inner().job_id;
        if job_id.is_empty() {
            return Err(invalid("job_id", "must not be empty"));
        }
        // An unknown job is an error at once, not an empty stream.
        let first = self.ingest.job(&tenant, &job_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let ingest = self.ingest.clone();
        tokio::spawn(async move {
            let over = |job: &v1::Job| {
                let state = v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified);
                match &job.stream {
                    Some(stream) => stream.state == v1::StreamState::Stopped as i32,
                    None => matches!(state, v1::JobState::Done | v1::JobState::Failed),
                }
            };
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() || over(&last) {
                return;
            }
            loop {
                tokio::time::sleep(WATCH_POLL).await;
                if sender.is_closed() {
                    return;
                }
                match ingest.job(&tenant, &job_id).await {
                    Ok(job) if job == last => {}
                    Ok(job) => {
                        let done = over(&job);
                        last = job.clone();
                        if sender.send(Ok(job)).await.is_err() || done {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: self.ingest.jobs(&tenant).await?,
        }))
    }

    async fn list_streams(
        &self,
        request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(v1::ListStreamsResponse {
            streams: self.ingest.streams(&tenant)?,
        }))
    }

    async fn stop_stream(
        &self,
        request: Request<v1::StopStreamRequest>,
    ) -> Result<Response<v1::LiveStream>, Status> {
        let tenant = tenant_of(&request)?;
        let job_id = request.into_inner().job_id;
        if job_id.is_empty() {
            return Err(invalid("job_id", "must not be empty"));
        }
        let stream = self.ingest.stop_stream(&job_id, &tenant)?;
        tracing::info!(job_id, "live stream stop requested");
        Ok(Response::new(stream))
    }
}

/// A cut chunk's media for its message: inline when it fits, else moved into the blob store
/// under `<job>/<seq>.mkv` (a rename on a local store: no copy). The local chunk is gone
/// either way.
fn place_media(
    chunk: &vidx_media::SegmentChunk,
    inline_max_bytes: u64,
    job_id: &str,
    blobs: &dyn BlobStore,
    runtime: &tokio::runtime::Handle,
) -> Result<SegmentMedia, String> {
    if chunk.bytes <= inline_max_bytes {
        let bytes = std::fs::read(&chunk.path)
            .map_err(|error| format!("cannot read segment chunk {}: {error}", chunk.seq))?;
        if let Err(error) = std::fs::remove_file(&chunk.path) {
            tracing::warn!(path = %chunk.path.display(), error = %error, "spool file not removed");
        }
        return Ok(SegmentMedia::Inline(bytes));
    }
    let key = format!("{job_id}/{:06}.mkv", chunk.seq);
    let uri = runtime
        .block_on(blobs.put_file(&key, &chunk.path))
        .map_err(|error| format!("storing segment {}: {error}", chunk.seq))?;
    Ok(SegmentMedia::Blob(uri))
}

/// What the HTTP API asks of the node's ingest: the calls of its gRPC service, for a tenant
/// (an object, whatever the queue).
pub trait JobDesk: Send + Sync {
    fn submit<'a>(
        &'a self,
        tenant: &'a str,
        request: v1::SubmitRequest,
    ) -> BoxFuture<'a, Result<String, Status>>;
    fn jobs<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Vec<v1::Job>, Status>>;
    fn job<'a>(
        &'a self,
        tenant: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<v1::Job, Status>>;
    fn streams(&self, tenant: &str) -> Result<Vec<v1::LiveStream>, Status>;
    fn stop_stream(&self, tenant: &str, job_id: &str) -> Result<v1::LiveStream, Status>;
}

impl<Q: SegmentQueue> JobDesk for Ingest<Q> {
    fn submit<'a>(
        &'a self,
        tenant: &'a str,
        request: v1::SubmitRequest,
    ) -> BoxFuture<'a, Result<String, Status>> {
        Box::pin(self.submit_request(tenant, request))
    }
    fn jobs<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Vec<v1::Job>, Status>> {
        Box::pin(Ingest::jobs(self, tenant))
    }
    fn job<'a>(
        &'a self,
        tenant: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<v1::Job, Status>> {
        Box::pin(Ingest::job(self, tenant, job_id))
    }
    fn streams(&self, tenant: &str) -> Result<Vec<v1::LiveStream>, Status> {
        Ingest::streams(self, tenant)
    }
    fn stop_stream(&self, tenant: &str, job_id: &str) -> Result<v1::LiveStream, Status> {
        Ingest::stop_stream(self, job_id, tenant)
    }
}

/// What a job needs from its ingest node.
struct JobContext<Q> {
    /// The index generation the job's segments go to (a reindex's), or the current one.
    generation: Option<u32>,
    settings: Arc<IngestSettings>,
    queue: Arc<Q>,
    journal: Arc<dyn JobJournal>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// Why a job stopped early when the node shut down.
pub const INTERRUPTED: &str = "interrupted: the node is shutting down";

/// Segment the input on a blocking thread and publish each segment as it is cut.
async fn run_job<Q: SegmentQueue>(
    job_id: String,
    input: InputSource,
    stream_id: String,
    labels: Vec<String>,
    tenant: String,
    context: JobContext<Q>,
) {
    let JobContext {
        generation,
        settings,
        queue,
        journal,
        jobs,
        metrics,
        shutdown,
    } = context;
    jobs.update(&job_id, |job| job.segmenting = true);
    let spool = settings.spool_dir.join(&job_id);
    if let Err(error) = std::fs::create_dir_all(&spool) {
        jobs.update(&job_id, |job| {
            job.segmented = true;
            job.error = format!("cannot create {}: {error}", spool.display());
        });
        return;
    }
    let options = SegmentOptions {
        max_pixels: settings.max_pixels,
        max_segment_ms: settings.max_segment_ms,
        // The submit-time check saw the URL only: every connection FFmpeg makes for it
        // (redirects, playlist entries, the host resolved again) is checked as it is made.
        url_guard: (!settings.policy.allow_private_hosts).then(|| settings.policy.clone()),
        ..SegmentOptions::new(settings.segment_ms, spool.clone())
    };
    let runtime = tokio::runtime::Handle::current();
    let source_uri = input.display_name();
    let source_name = source_uri.clone();
    // The job's span; each segment's publish span under it starts the segment's trace
    // context, which travels in the Kafka message to the worker.
    let job_span = tracing::info_span!(
        "ingest.job",
        job_id = %job_id,
        stream_id = %stream_id,
        source = %source_uri,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace_id) = vidx_telemetry::trace_id(&job_span) {
        job_span.record("trace_id", trace_id.as_str());
    }
    let (job, sink_jobs) = (job_id.clone(), jobs.clone());
    let inline_max_bytes = settings.inline_max_bytes;
    let blobs = settings.blobs.clone();
    let sink_metrics = metrics.clone();
    let live_stop = jobs.live_stop(&job_id);
    let live_stall_timeout = settings.live_stall_timeout;
    // A live source that yields no segment (reconnecting to a camera that is down) never
    // reaches the sink's shutdown check: shutdown stops its segmenter through its stop flag.
    let shutdown_watch = shutdown.clone();
    let is_live = live_stop.is_some();
    let footage = settings
        .footage
        .clone()
        .filter(|_| is_live && settings.retention.keeps_footage());
    let stop_on_shutdown = live_stop.clone().map(|stop| {
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
    });
    let outcome = tokio::task::spawn_blocking(move || {
        let mut publish_error = None;
        let live_job = job.clone();
        let state_jobs = sink_jobs.clone();
        let sink = |chunk: vidx_media::SegmentChunk| {
            if *shutdown.borrow() {
                publish_error = Some(INTERRUPTED.to_string());
                return false;
            }
            if let Some(store) = &footage {
                let kept = runtime.block_on(crate::footage::keep(
                    store.as_ref(),
                    &tenant,
                    &stream_id,
                    chunk.range,
                    &chunk.path,
                ));
                if let Err(error) = kept {
                    // Playback of this moment is lost, not its indexing.
                    tracing::warn!(job_id = %job, seq = chunk.seq, error = %error, "live footage not kept");
                }
            }
            let placed = place_media(&chunk, inline_max_bytes, &job, blobs.as_ref(), &runtime);
            let media = match placed {
                Ok(media) => media,
                Err(error) => {
                    publish_error = Some(error);
                    return false;
                }
            };
            let blob = match &media {
                SegmentMedia::Blob(uri) => Some(uri.clone()),
                SegmentMedia::Inline(_) => None,
            };
            let mut task = chunk.into_task_with(&tenant, &stream_id, &source_uri, media);
            task.labels = labels.clone();
            task.generation = generation;
            let (segment_seq, end_ms) = (task.segment_seq, task.range.end_ms);
            let span = tracing::info_span!(
                parent: &job_span,
                "segment.publish",
                stream_id = %task.stream_id,
                segment_seq,
                start_ms = task.range.start_ms,
                end_ms,
                inline = blob.is_none(),
            );
            let _entered = span.enter();
            task.trace_context = vidx_telemetry::inject(&span);
            match runtime.block_on(queue.publish(task)) {
                Ok(tag) => {
                    sink_jobs.published(&job, tag, blob);
                    sink_jobs.update(&job, |record| {
                        if let Some(live) = record.live.as_mut() {
                            live.segments += 1;
                            live.last_end_ms = end_ms;
                        }
                    });
                    sink_metrics.segments_published.inc();
                    true
                }
                Err(error) => {
                    publish_error = Some(format!("publishing segment {segment_seq}: {error}"));
                    if let Some(uri) = &blob
                        && let Err(error) = runtime.block_on(blobs.delete(uri))
                    {
                        tracing::warn!(uri, error = %error, "unpublished blob not deleted");
                    }
                    false
                }
            }
        };
        // (segments, corrupt packets, subtitle cues)
        let result = match &live_stop {
            None => vidx_media::segment_source(&input, &options, sink).map(|summary| {
                (
                    summary.segments,
                    summary.corrupt_packets,
                    Some(summary.subtitle_cues),
                )
            }),
            Some(stop) => {
                let live_options = vidx_media::LiveOptions {
                    stall_timeout: live_stall_timeout,
                    ..vidx_media::LiveOptions::new(options.segment_ms, options.spool_dir.clone())
                };
                let live_options = vidx_media::LiveOptions {
                    segment: options.clone(),
                    ..live_options
                };
                vidx_media::segment_live(
                    &input,
                    &live_options,
                    stop,
                    |state| state_jobs.stream_state(&live_job, state),
                    sink,
                )
                .map(|summary| (summary.segments, summary.corrupt_packets, None))
            }
        };
        (result, publish_error)
    })
    .await;
    if let Some(watcher) = stop_on_shutdown {
        watcher.abort();
    }
    let error = match outcome {
        // Stopped by the node's shutdown, not on request: the job is resumed on restart.
        Ok((Ok(_), None)) if is_live && *shutdown_watch.borrow() => INTERRUPTED.to_string(),
        Ok((Ok((segments, corrupt_packets, cues)), None)) => {
            tracing::info!(job_id, segments, ?cues, "segmented");
            if cues == Some(0) {
                tracing::warn!(job_id, source = %source_name, "no subtitles found: without a captioning model this input yields no moments");
            }
            metrics.decode_errors.inc_by(corrupt_packets);
            String::new()
        }
        Ok((_, Some(error))) => error,
        Ok((Err(error), None)) => error.to_string(),
        Err(error) => format!("segmenting task failed: {error}"),
    };
    if !error.is_empty() {
        tracing::warn!(job_id, error, "segmenting failed");
    }
    // Every chunk was moved into its message or the blob store.
    let _ = std::fs::remove_dir_all(&spool);
    let interrupted = error == INTERRUPTED;
    jobs.update(&job_id, |job| {
        job.segmented = true;
        job.error = error;
    });
    // The job's end, for a node that restarts: not when the node is shutting down, so that
    // its next start segments the job again instead of reporting it cut short.
    if !interrupted
        && let Some(entry) = jobs.entry(&job_id)
        && let Err(error) = journal.record(&entry).await
    {
        tracing::warn!(job_id, error = %error, "the job's end was not recorded: a restarted node segments it again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sources_are_recognised_by_scheme_and_hls_playlists() {
        for live in [
            "rtsp://cam-7.local/stream1",
            "RTMP://encoder/live/key",
            "udp://239.0.0.1:1234",
            "tcp://127.0.0.1:9000",
            "srt://relay:9000",
            "https://cdn.example/live/index.m3u8?token=x",
            "http://cam/hls/playlist.M3U8",
        ] {
            assert!(is_live_source(live), "{live}");
        }
        for not_live in [
            "https://cdn.example/video.mp4",
            "/videos/a.m3u8",
            "http://cam/playlist.m3u8.mp4",
            "C:/videos/a.mp4",
        ] {
            assert!(!is_live_source(not_live), "{not_live}");
        }
    }

    fn settings(roots: Vec<PathBuf>) -> IngestSettings {
        IngestSettings {
            roots,
            policy: UrlPolicy::default(),
            segment_ms: 20_000,
            max_segment_ms: 60_000,
            max_pixels: 1 << 26,
            inline_max_bytes: 1 << 20,
            spool_dir: PathBuf::from("/nonexistent"),
            blobs: Arc::new(
                vidx_blob::ObjectBlobStore::open("memory:///blobs", &Default::default())
                    .expect("an in-memory blob store opens"),
            ),
            limits: TenantLimits {
                jobs: 10,
                running_jobs: 10,
                live_streams: 10,
            },
            live_stall_timeout: Duration::from_secs(10),
            footage: None,
            retention: crate::footage::Retention {
                max_age: Duration::ZERO,
                max_bytes: 0,
            },
        }
    }

    fn refused(source: &str, settings: &IngestSettings) -> String {
        let status = resolve_source(source, settings).expect_err(source);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{source}");
        assert!(
            status.message().starts_with("source: "),
            "{}",
            status.message()
        );
        status.message().to_string()
    }

    #[test]
    fn sources_are_checked_against_the_rules() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let root_path = std::fs::canonicalize(root.path())?;
        let outside = tempfile::tempdir()?;
        std::fs::write(root_path.join("a.mp4"), b"x")?;
        std::fs::write(outside.path().join("b.mp4"), b"x")?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path().join("b.mp4"), root_path.join("link.mp4"))?;
        let settings = settings(vec![root_path.clone()]);

        for (source, rule) in [
            ("file:///etc/passwd", "scheme `file`"),
            ("concat:/a.mp4|/b.mp4", "scheme `concat`"),
            ("data:video/mp4;base64,AAAA", "scheme `data`"),
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://127.0.0.1:9/x.mp4", "loopback"),
            ("http://[::ffff:127.0.0.1]/x.mp4", "loopback"),
            ("relative/a.mp4", "absolute"),
            ("", "empty"),
        ] {
            let message = refused(source, &settings);
            assert!(message.contains(rule), "{source}: {message}");
        }
        let dotdot = format!("{}/../{}", root_path.display(), "x.mp4");
        assert!(refused(&dotdot, &settings).contains("`..`"));
        let elsewhere = outside.path().join("b.mp4");
        assert!(refused(&elsewhere.display().to_string(), &settings).contains("outside"));
        #[cfg(unix)]
        assert!(
            refused(&root_path.join("link.mp4").display().to_string(), &settings)
                .contains("outside")
        );
        assert!(
            refused(
                &root_path.join("a.mp4").display().to_string(),
                &self::settings(vec![])
            )
            .contains("ingest_roots")
        );
        let missing = resolve_source(&root_path.join("none.mp4").display().to_string(), &settings)
            .expect_err("missing");
        assert_eq!(missing.code(), tonic::Code::NotFound);

        assert_eq!(
            resolve_source(&root_path.join("a.mp4").display().to_string(), &settings)
                .expect("inside the root"),
            InputSource::File(root_path.join("a.mp4"))
        );
        assert!(matches!(
            resolve_source("https://93.184.215.14/v.mp4", &settings),
            Ok(InputSource::Url(_))
        ));
        Ok(())
    }

    #[test]
    fn job_state_follows_commits_and_dead_letters() -> Result<(), Status> {
        let jobs = Jobs::default();
        let limits = TenantLimits {
            jobs: 10,
            running_jobs: 10,
            live_streams: 10,
        };
        jobs.insert("j", "acme", "/v.mp4", "/v.mp4", "/v.mp4", &limits, None)?;
        jobs.update("j", |job| job.segmenting = true);
        let tags: Vec<DeliveryTag> = (0..4)
            .map(|offset| DeliveryTag {
                partition: (offset % 2) as i32,
                offset,
            })
            .collect();
        for tag in &tags {
            jobs.published("j", *tag, None);
        }
        let none = HashMap::new();
        let view = jobs.view("j", "acme", &none)?;
        assert_eq!(view.state, JobState::Segmenting as i32);
        assert_eq!(view.segments_total, 4);
        assert!(
            jobs.view("j", "other", &none).is_err(),
            "another tenant sees nothing"
        );

        jobs.update("j", |job| job.segmented = true);
        // Partition 0 holds offsets 0 and 2, partition 1 offsets 1 and 3.
        let view = jobs.view("j", "acme", &HashMap::from([(0, 1), (1, 2)]))?;
        assert_eq!(view.state, JobState::Indexing as i32);
        assert_eq!(view.segments_done, 2);
        assert!((view.progress - 0.5).abs() < 1e-6);

        jobs.dead_lettered(tags[3], "corrupt".into());
        let view = jobs.view("j", "acme", &HashMap::from([(0, 3), (1, 4)]))?;
        assert_eq!(view.state, JobState::Done as i32);
        assert_eq!((view.segments_done, view.segments_failed), (3, 1));
        assert!(view.error.contains("corrupt"), "{}", view.error);
        Ok(())
    }

    /// docs/reliability.md 27: one tenant's flood of jobs or streams is refused for that tenant
    /// alone, and never evicts another tenant's jobs.
    #[test]
    fn a_tenant_at_its_limits_is_refused_and_evicts_only_its_own_finished_jobs()
    -> Result<(), Status> {
        let jobs = Jobs::default();
        let limits = TenantLimits {
            jobs: 3,
            running_jobs: 2,
            live_streams: 1,
        };
        let insert = |id: &str, tenant: &str, live: bool| {
            jobs.insert(id, tenant, id, id, id, &limits, live.then_some(id))
        };
        insert("b1", "bob", false)?;
        insert("a1", "alice", false)?;
        insert("a2", "alice", false)?;
        // Two of alice's jobs run: a third is refused, naming the limit.
        let refused = insert("a3", "alice", false).expect_err("running limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("server.max_running_jobs_per_tenant"),
            "{}",
            refused.message()
        );
        // Bob is not held back by alice.
        insert("b2", "bob", false)?;
        // One live stream each.
        jobs.update("a1", |job| job.segmented = true);
        insert("s1", "alice", true)?;
        jobs.update("a2", |job| job.segmented = true);
        let refused = insert("s2", "alice", true).expect_err("stream limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("server.max_live_streams_per_tenant")
        );
        // Alice holds 3 (a1, a2 finished, s1 live): her oldest finished job makes room,
        // bob's jobs stay whatever alice submits.
        for round in 0..5 {
            let id = format!("a-more-{round}");
            insert(&id, "alice", false)?;
            jobs.update(&id, |job| job.segmented = true);
        }
        let none = HashMap::new();
        assert!(jobs.view("a1", "alice", &none).is_err(), "a1 was forgotten");
        assert!(
            jobs.view("s1", "alice", &none).is_ok(),
            "the live stream stays"
        );
        for id in ["b1", "b2"] {
            assert!(
                jobs.view(id, "bob", &none).is_ok(),
                "{id} was evicted by alice"
            );
        }
        // With nothing finished to forget, the job limit refuses.
        insert("b3", "bob", false).expect_err("bob runs two");
        Ok(())
    }

    #[test]
    fn blobs_are_released_after_their_commit_and_kept_when_dead_lettered() -> Result<(), Status> {
        let jobs = Jobs::default();
        let one = TenantLimits {
            jobs: 1,
            running_jobs: 1,
            live_streams: 1,
        };
        jobs.insert("j", "acme", "/v.mp4", "/v.mp4", "/v.mp4", &one, None)?;
        let tag = |offset| DeliveryTag {
            partition: 0,
            offset,
        };
        for offset in 0..3 {
            jobs.published(
                "j",
                tag(offset),
                Some(format!("memory:///b/j/{offset}.mkv")),
            );
        }
        jobs.published("j", tag(3), None);
        jobs.update("j", |job| job.segmented = true);
        // The finished job's record is evicted; its blobs are still collected.
        jobs.insert("k", "acme", "/w.mp4", "/w.mp4", "/w.mp4", &one, None)?;
        assert_eq!(jobs.pending_blobs(), 3);

        let start = Instant::now();
        let committed = HashMap::from([(0, 2)]);
        assert!(
            jobs.take_finished_blobs(&committed, start).is_empty(),
            "a fresh commit waits out the grace period"
        );
        jobs.dead_lettered(tag(1), "corrupt".into());
        let released = jobs.take_finished_blobs(&committed, start + BLOB_GRACE);
        assert_eq!(released, vec!["memory:///b/j/0.mkv".to_string()]);
        assert_eq!(jobs.pending_blobs(), 1, "offset 2 is not committed yet");
        let later = start + BLOB_GRACE * 3;
        assert!(
            jobs.take_finished_blobs(&HashMap::from([(0, 4)]), later)
                .is_empty()
        );
        assert_eq!(
            jobs.take_finished_blobs(&HashMap::from([(0, 4)]), later + BLOB_GRACE),
            vec!["memory:///b/j/2.mkv".to_string()]
        );
        assert_eq!(jobs.pending_blobs(), 0);
        Ok(())
    }
}
