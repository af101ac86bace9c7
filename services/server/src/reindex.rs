//! Reindex: build the next index generation from the current one's sources while searches
//! keep answering from the current one, switch atomically when it is complete, and drop the
//! old generation after a grace period.
//!
//! The plan (the generation being built and every source with its state) is written to a
//! JSON file after each step, so a reindex cut short (the process killed, the node restarted)
//! is taken up where it was by the next `vidx reindex` or `IndexService.Reindex`: the sources
//! already done are not indexed again, and a source that was in flight is submitted again
//! (its point ids make that idempotent).
//!
//! What is indexed while a reindex runs goes to both generations (the stores' upserts
//! write to the one being built too), so the switch loses none of it. A source that cannot be
//! read again — a live camera (its past is gone), a file deleted since, a URL whose
//! credentials were removed from the stored name — is skipped and named in the status; its
//! points are carried into the new generation unchanged when their vectors fit it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vidx_core::ports::{IndexStore, SegmentQueue};
use vidx_media::InputSource;
use vidx_proto::v1;
use vidx_proto::v1::reindex_status::State;

use crate::ingest::{Ingest, is_live_source, resolve_source};

/// The name of a reindex state, as the CLI and the HTTP API say it.
pub fn state_name(state: i32) -> &'static str {
    match State::try_from(state).unwrap_or(State::Unspecified) {
        State::Building => "building",
        State::Switched => "switched",
        State::Done => "done",
        State::Failed => "failed",
        State::Idle | State::Unspecified => "idle",
    }
}

/// The status as the HTTP API answers it.
pub fn status_json(status: &v1::ReindexStatus) -> serde_json::Value {
    serde_json::json!({
        "state": state_name(status.state),
        "from_generation": status.from_generation,
        "generation": status.generation,
        "resumed": status.resumed,
        "sources": status.sources_total,
        "sources_done": status.sources_done,
        "sources_skipped": status.sources_skipped,
        "skipped": status.skipped,
        "segments": status.segments,
        "segments_failed": status.segments_failed,
        "elapsed_ms": status.elapsed_ms,
        "error": status.error,
    })
}

/// Sources a node indexes at once during a reindex.
pub const JOBS_IN_FLIGHT: usize = 4;

/// How the reindex runs.
#[derive(Debug, Clone)]
pub struct ReindexSettings {
    /// Where the plan is kept between steps (and across a restart).
    pub state_file: PathBuf,
    /// How long the old generation is kept after the switch (searches in flight finish).
    pub grace: Duration,
    /// Sources indexed at once.
    pub jobs_in_flight: usize,
    /// After the new generation is created and before the sources are listed: long enough
    /// for every node's upserts to learn of it (the Qdrant server store's
    /// `GENERATIONS_TTL`; nothing for the embedded store, which is this process's).
    pub settle: Duration,
    /// How sources are read again: by the node's ingest rules (allowed roots and URL
    /// policy), or as `vidx index` reads its arguments (any local file).
    pub local_files_anywhere: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    from_generation: u32,
    generation: u32,
    started_ms: u64,
    #[serde(default)]
    switched_ms: Option<u64>,
    sources: Vec<PlannedSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlannedSource {
    tenant: String,
    stream_id: String,
    source: String,
    labels: Vec<String>,
    points: u64,
    #[serde(flatten)]
    state: SourceState,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
enum SourceState {
    Pending,
    Done {
        segments: u64,
        failed: u64,
    },
    /// Not read again: why, and how many of its points were carried into the new generation
    /// unchanged instead.
    Skipped {
        reason: String,
        #[serde(default)]
        carried: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("index store: {0}")]
    Store(#[from] vidx_core::StoreError),
    #[error("reindex state {path}: {reason}")]
    State { path: String, reason: String },
    #[error("{0}")]
    Ingest(String),
    #[error("interrupted: the node is shutting down (run the reindex again to resume it)")]
    Interrupted,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn load_plan(path: &Path) -> Result<Option<Plan>, ReindexError> {
    let state = |reason: String| ReindexError::State {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| state(error.to_string())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(state(error.to_string())),
    }
}

/// Written beside, synced and renamed: a kill leaves the old plan or the new one.
fn save_plan(path: &Path, plan: &Plan) -> Result<(), ReindexError> {
    use std::io::Write;
    let state = |reason: String| ReindexError::State {
        path: path.display().to_string(),
        reason,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| state(error.to_string()))?;
    }
    let temporary = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(plan).map_err(|error| state(error.to_string()))?;
    let mut file = std::fs::File::create(&temporary).map_err(|error| state(error.to_string()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| state(error.to_string()))
}

/// Runs reindexes on one node: one at a time, its status watchable.
pub struct Reindexer<Q, S> {
    ingest: Arc<Ingest<Q>>,
    store: Arc<S>,
    settings: ReindexSettings,
    status: watch::Sender<v1::ReindexStatus>,
    running: AtomicBool,
    shutdown: watch::Receiver<bool>,
}

impl<Q: SegmentQueue, S: IndexStore> Reindexer<Q, S> {
    pub fn new(
        ingest: Arc<Ingest<Q>>,
        store: Arc<S>,
        settings: ReindexSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (status, _) = watch::channel(v1::ReindexStatus {
            state: State::Idle as i32,
            ..Default::default()
        });
        Self {
            ingest,
            store,
            settings,
            status,
            running: AtomicBool::new(false),
            shutdown,
        }
    }

    /// The status now.
    pub fn status(&self) -> v1::ReindexStatus {
        self.status.borrow().clone()
    }

    /// Every change of the status.
    pub fn subscribe(&self) -> watch::Receiver<v1::ReindexStatus> {
        self.status.subscribe()
    }

    /// Start a reindex in the background (or join the one running); the status now.
    pub fn start(self: &Arc<Self>) -> v1::ReindexStatus {
        if !self.running.swap(true, Ordering::SeqCst) {
            let reindexer = self.clone();
            self.status.send_modify(|status| {
                *status = v1::ReindexStatus {
                    state: State::Building as i32,
                    ..Default::default()
                }
            });
            tokio::spawn(async move {
                if let Err(error) = reindexer.run_inner().await {
                    tracing::warn!(error = %error, "reindex stopped");
                }
            });
        }
        self.status()
    }

    /// Run a reindex to its end (or take up the one a killed run left); the final status.
    pub async fn run(&self) -> Result<v1::ReindexStatus, ReindexError> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(ReindexError::Ingest("a reindex is running already".into()));
        }
        self.run_inner().await
    }

    async fn run_inner(&self) -> Result<v1::ReindexStatus, ReindexError> {
        let started = Instant::now();
        let result = self.drive(started).await;
        self.running.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => Ok(self.status()),
            Err(error) => {
                self.status.send_modify(|status| {
                    status.state = State::Failed as i32;
                    status.error = error.to_string();
                    status.elapsed_ms = started.elapsed().as_millis() as u64;
                });
                Err(error)
            }
        }
    }

    fn publish(
        &self,
        plan: &Plan,
        state: State,
        resumed: bool,
        started: Instant,
        live: (u64, u64),
    ) {
        let mut status = v1::ReindexStatus {
            state: state as i32,
            from_generation: plan.from_generation,
            generation: plan.generation,
            sources_total: plan.sources.len() as u64,
            elapsed_ms: started.elapsed().as_millis() as u64,
            resumed,
            segments: live.0,
            segments_failed: live.1,
            ..Default::default()
        };
        for source in &plan.sources {
            match &source.state {
                SourceState::Pending => {}
                SourceState::Done { segments, failed } => {
                    status.sources_done += 1;
                    status.segments += segments;
                    status.segments_failed += failed;
                }
                SourceState::Skipped { reason, carried } => {
                    status.sources_skipped += 1;
                    status.skipped.push(format!(
                        "{} ({}): {reason}; {carried} of its {} moments kept unchanged",
                        source.stream_id, source.source, source.points
                    ));
                }
            }
        }
        self.status.send_replace(status);
    }

    /// The plan a killed run left, checked against the store; or a new one: the next
    /// generation created, and the current one's sources listed once every node writes to it.
    async fn plan(&self) -> Result<(Plan, bool), ReindexError> {
        let path = &self.settings.state_file;
        let generations = self.store.generations().await?;
        if let Some(mut plan) = load_plan(path)? {
            if plan.switched_ms.is_none() {
                if generations.current == plan.generation {
                    // Switched just before the kill.
                    plan.switched_ms = Some(now_ms());
                    save_plan(path, &plan)?;
                } else if generations.building != Some(plan.generation) {
                    return Err(ReindexError::State {
                        path: path.display().to_string(),
                        reason: format!(
                            "it builds generation {}, which the index no longer has (current {}, \
                             building {:?}); remove the file to start over",
                            plan.generation, generations.current, generations.building
                        ),
                    });
                }
            }
            tracing::info!(
                generation = plan.generation,
                done = plan
                    .sources
                    .iter()
                    .filter(|source| source.state != SourceState::Pending)
                    .count(),
                total = plan.sources.len(),
                "reindex resumed"
            );
            return Ok((plan, true));
        }
        let generation = self.store.begin_generation().await?;
        if !self.settings.settle.is_zero() {
            tokio::time::sleep(self.settings.settle).await;
        }
        let sources = self.store.sources().await?;
        let plan = Plan {
            from_generation: generations.current,
            generation,
            started_ms: now_ms(),
            switched_ms: None,
            sources: sources
                .into_iter()
                .map(|source| PlannedSource {
                    tenant: source.tenant,
                    stream_id: source.stream_id,
                    source: source.source_uri,
                    labels: source.labels,
                    points: source.points,
                    state: SourceState::Pending,
                })
                .collect(),
        };
        save_plan(path, &plan)?;
        tracing::info!(
            from = plan.from_generation,
            generation,
            sources = plan.sources.len(),
            "reindex started"
        );
        Ok((plan, false))
    }

    /// How a stored source is read again, or why it cannot be.
    fn reread(&self, source: &str) -> Result<InputSource, String> {
        if is_live_source(source) {
            return Err("a live source: its past cannot be read again".into());
        }
        let input = if self.settings.local_files_anywhere {
            vidx_media::stored_source(source).map_err(str::to_string)?
        } else {
            resolve_source(source, self.ingest.settings())
                .map_err(|status| status.message().to_string())?
        };
        if let InputSource::File(path) = &input
            && !path.is_file()
        {
            return Err(format!("{} is gone", path.display()));
        }
        Ok(input)
    }

    async fn drive(&self, started: Instant) -> Result<(), ReindexError> {
        let path = self.settings.state_file.clone();
        let (mut plan, resumed) = self.plan().await?;
        self.publish(&plan, State::Building, resumed, started, (0, 0));

        if plan.switched_ms.is_none() {
            self.build(&mut plan, resumed, started).await?;
            self.store.switch_generation(plan.generation).await?;
            plan.switched_ms = Some(now_ms());
            save_plan(&path, &plan)?;
        }
        self.publish(&plan, State::Switched, resumed, started, (0, 0));

        // The old generation stays for the grace period (searches in flight end on it).
        let switched_ms = plan.switched_ms.unwrap_or_else(now_ms);
        let left = (switched_ms + self.settings.grace.as_millis() as u64).saturating_sub(now_ms());
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(left)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Err(ReindexError::Interrupted),
        }
        for retired in self.store.generations().await?.retired {
            self.store.drop_generation(retired).await?;
        }
        std::fs::remove_file(&path).map_err(|error| ReindexError::State {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        self.publish(&plan, State::Done, resumed, started, (0, 0));
        tracing::info!(
            generation = plan.generation,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reindex done"
        );
        Ok(())
    }

    /// A source that cannot be indexed again: its points go into the new generation as they
    /// are (when their vectors fit it), so the switch does not forget the stream.
    async fn skip(
        &self,
        plan: &Plan,
        index: usize,
        reason: String,
    ) -> Result<SourceState, ReindexError> {
        let source = &plan.sources[index];
        let filter = vidx_core::SearchFilter {
            tenant: source.tenant.clone(),
            streams: vec![source.stream_id.clone()],
            ..Default::default()
        };
        match self.store.carry_over(plan.generation, filter).await {
            Ok(carried) => Ok(SourceState::Skipped { reason, carried }),
            Err(vidx_core::StoreError::Invalid(why)) => Ok(SourceState::Skipped {
                reason: format!("{reason}; its moments cannot be kept: {why}"),
                carried: 0,
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// Index every pending source into the new generation, a few at a time, recording each
    /// one's end in the plan.
    async fn build(
        &self,
        plan: &mut Plan,
        resumed: bool,
        started: Instant,
    ) -> Result<(), ReindexError> {
        let path = self.settings.state_file.clone();
        let mut pending: std::collections::VecDeque<usize> = plan
            .sources
            .iter()
            .enumerate()
            .filter(|(_, source)| source.state == SourceState::Pending)
            .map(|(index, _)| index)
            .collect();
        // (source index, tenant, job id)
        let mut in_flight: Vec<(usize, String)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.shutdown.borrow() {
                return Err(ReindexError::Interrupted);
            }
            while in_flight.len() < self.settings.jobs_in_flight.max(1) {
                let Some(index) = pending.pop_front() else {
                    break;
                };
                let source = &plan.sources[index];
                let accepted = self.reread(&source.source).and_then(|input| {
                    self.ingest
                        .accept_into(
                            plan.generation,
                            &source.tenant,
                            input,
                            source.stream_id.clone(),
                            source.labels.clone(),
                        )
                        .map_err(|status| status.message().to_string())
                });
                match accepted {
                    Ok((job_id, work)) => {
                        tokio::spawn(work);
                        in_flight.push((index, job_id));
                    }
                    Err(reason) => {
                        tracing::warn!(stream_id = %source.stream_id, source = %source.source, reason, "reindex skips a source");
                        plan.sources[index].state = self.skip(plan, index, reason).await?;
                        save_plan(&path, plan)?;
                    }
                }
            }
            if in_flight.is_empty() {
                self.publish(plan, State::Building, resumed, started, (0, 0));
                return Ok(());
            }
            tick.tick().await;
            let mut live = (0, 0);
            let mut still = Vec::with_capacity(in_flight.len());
            for (index, job_id) in in_flight.drain(..) {
                let tenant = plan.sources[index].tenant.clone();
                let job = self
                    .ingest
                    .job(&tenant, &job_id)
                    .await
                    .map_err(|status| ReindexError::Ingest(status.message().to_string()))?;
                let state = v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified);
                match state {
                    v1::JobState::Done => {
                        plan.sources[index].state = SourceState::Done {
                            segments: job.segments_done,
                            failed: job.segments_failed,
                        };
                        save_plan(&path, plan)?;
                    }
                    v1::JobState::Failed => {
                        let reason = if job.error.is_empty() {
                            format!("all {} segments failed", job.segments_total)
                        } else {
                            job.error.clone()
                        };
                        if job.error.contains(crate::ingest::INTERRUPTED) {
                            return Err(ReindexError::Interrupted);
                        }
                        plan.sources[index].state = if job.segments_done > job.segments_failed {
                            // Part of it is in the new generation: nothing old mixed in.
                            SourceState::Skipped {
                                reason: format!(
                                    "{reason} ({} of {} segments indexed)",
                                    job.segments_done - job.segments_failed,
                                    job.segments_total
                                ),
                                carried: 0,
                            }
                        } else {
                            self.skip(plan, index, reason).await?
                        };
                        save_plan(&path, plan)?;
                    }
                    _ => {
                        live.0 += job.segments_done;
                        live.1 += job.segments_failed;
                        still.push((index, job_id));
                    }
                }
            }
            in_flight = still;
            self.publish(plan, State::Building, resumed, started, live);
        }
    }
}
