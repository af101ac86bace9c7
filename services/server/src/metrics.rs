//! Prometheus metrics of one node, served as text on `GET /metrics` (`server.metrics_listen`).
//!
//! Counters and histograms are fed where things happen (ingest publishes, worker events,
//! searches, dead letters); the queue's gauges (consumer lag per partition, segments in
//! flight, whether fetching is paused) are read from the worker's queue at scrape time.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use vidx_core::ports::QueueStatus;
use vidx_pipeline::WorkerEvent;

use crate::ServerError;

/// Latency buckets in seconds, from a fast store write to a slow CPU model.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// The stages of `vidx_stage_seconds`, in pipeline order.
const STAGES: [&str; 4] = ["fetch", "decode", "models", "store"];

/// Every series of one node, in its own registry.
pub struct Metrics {
    registry: Registry,
    pub segments_published: IntCounter,
    pub segments_indexed: IntCounter,
    pub segments_failed: IntCounterVec,
    pub dead_letters: IntCounter,
    pub decode_errors: IntCounter,
    pub stage_seconds: HistogramVec,
    pub batch_size: Histogram,
    pub search_seconds: Histogram,
    pub search_errors: IntCounter,
    consumer_lag: IntGaugeVec,
    in_flight: IntGauge,
    fetching_paused: IntGauge,
    dependency_outage: IntGaugeVec,
    commit_failures: IntGauge,
    /// The worker's queue once it exists, for the gauges.
    queue: Arc<OnceLock<Arc<dyn QueueStatus>>>,
    /// The consumer-lag refresh: when the last one ended, and whether one is running.
    lag_refresh: Arc<std::sync::Mutex<LagRefresh>>,
}

/// A scrape refreshes the consumer lag (broker round trips) at most this often, in the
/// background: it answers with the last values at once, however many scrapes arrive and
/// however slow the broker is.
const LAG_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
struct LagRefresh {
    last: Option<std::time::Instant>,
    running: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: Result<T, prometheus::Error>,
) -> Result<T, ServerError> {
    let collector = collector.map_err(|error| ServerError::Startup(format!("metrics: {error}")))?;
    registry
        .register(Box::new(collector.clone()))
        .map_err(|error| ServerError::Startup(format!("metrics: {error}")))?;
    Ok(collector)
}

impl Metrics {
    pub fn new(queue: Arc<OnceLock<Arc<dyn QueueStatus>>>) -> Result<Self, ServerError> {
        let registry = Registry::new();
        let seconds = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec())
        };
        Ok(Self {
            segments_published: registered(
                &registry,
                IntCounter::new(
                    "vidx_segments_published_total",
                    "Segments the ingest published to the queue",
                ),
            )?,
            segments_indexed: registered(
                &registry,
                IntCounter::new(
                    "vidx_segments_indexed_total",
                    "Segments whose points the store acknowledged",
                ),
            )?,
            segments_failed: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "vidx_segments_failed_total",
                        "Segments given up on (dead-lettered), by the stage that failed",
                    ),
                    &["cause"],
                ),
            )?,
            dead_letters: registered(
                &registry,
                IntCounter::new(
                    "vidx_dead_letters_total",
                    "Dead letters of this ingest's segments seen on the dead-letter topic",
                ),
            )?,
            decode_errors: registered(
                &registry,
                IntCounter::new(
                    "vidx_decode_errors_total",
                    "Unreadable packets skipped while segmenting, and segments that failed to decode",
                ),
            )?,
            stage_seconds: registered(
                &registry,
                HistogramVec::new(
                    seconds(
                        "vidx_stage_seconds",
                        "Time per indexed segment in each stage (fetch, decode, models, store)",
                    ),
                    &["stage"],
                ),
            )?,
            batch_size: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vidx_batch_size",
                        "Size of the model batch each indexed segment was captioned in",
                    )
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                ),
            )?,
            search_seconds: registered(
                &registry,
                Histogram::with_opts(seconds("vidx_search_seconds", "Search latency")),
            )?,
            search_errors: registered(
                &registry,
                IntCounter::new("vidx_search_errors_total", "Searches that failed"),
            )?,
            consumer_lag: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "vidx_consumer_lag",
                        "Messages not yet committed per partition this worker owns",
                    ),
                    &["partition"],
                ),
            )?,
            in_flight: registered(
                &registry,
                IntGauge::new(
                    "vidx_segments_in_flight",
                    "Segments taken off the queue and not yet committed",
                ),
            )?,
            fetching_paused: registered(
                &registry,
                IntGauge::new(
                    "vidx_fetching_paused",
                    "1 while fetching is paused because every worker is busy",
                ),
            )?,
            dependency_outage: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "vidx_dependency_outage",
                        "1 while a dependency the workers write to fails (the node is NOT_SERVING, nothing is committed or dead-lettered), by kind",
                    ),
                    &["kind"],
                ),
            )?,
            commit_failures: registered(
                &registry,
                IntGauge::new(
                    "vidx_commit_failures",
                    "Offset commits that failed since the node started (each is retried)",
                ),
            )?,
            registry,
            queue,
            lag_refresh: Default::default(),
        }
        .with_stages())
    }

    /// Expose the per-stage series from the start (at zero), so dashboards and alerts see
    /// them before the first segment.
    fn with_stages(self) -> Self {
        for stage in STAGES {
            self.stage_seconds.with_label_values(&[stage]);
        }
        self
    }

    /// The dependency outage going on (`None`: none).
    pub fn set_outage(&self, kind: Option<&str>) {
        self.dependency_outage.reset();
        if let Some(kind) = kind {
            self.dependency_outage.with_label_values(&[kind]).set(1);
        }
    }

    /// Count a worker's outcome.
    pub fn record(&self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Indexed { timings, batch, .. } => {
                self.segments_indexed.inc();
                self.batch_size.observe(*batch as f64);
                let times = [timings.fetch, timings.decode, timings.models, timings.store];
                for (stage, time) in STAGES.into_iter().zip(times) {
                    self.stage_seconds
                        .with_label_values(&[stage])
                        .observe(time.as_secs_f64());
                }
            }
            WorkerEvent::Failed { cause, .. } => {
                self.segments_failed.with_label_values(&[cause]).inc();
                if *cause == "decode" {
                    self.decode_errors.inc();
                }
            }
        }
    }

    /// Render every series, with the queue's gauges as they are now; the consumer lag as of
    /// its last refresh (at most [`LAG_REFRESH`] old while the broker answers), a new one
    /// started in the background when that is due. A scrape never waits for the broker.
    pub async fn render(&self) -> String {
        if let Some(queue) = self.queue.get().cloned() {
            self.in_flight.set(queue.in_flight() as i64);
            self.fetching_paused.set(i64::from(queue.is_paused()));
            self.commit_failures.set(queue.commit_failures() as i64);
            self.refresh_lag(queue);
        }
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::warn!(error = %error, "metrics encoding failed");
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

impl Metrics {
    /// Start a consumer-lag refresh on a blocking thread unless one is running or the last
    /// ended less than [`LAG_REFRESH`] ago.
    fn refresh_lag(&self, queue: Arc<dyn QueueStatus>) {
        {
            let Ok(mut state) = self.lag_refresh.lock() else {
                return;
            };
            if state.running || state.last.is_some_and(|last| last.elapsed() < LAG_REFRESH) {
                return;
            }
            state.running = true;
        }
        let (gauge, state) = (self.consumer_lag.clone(), self.lag_refresh.clone());
        tokio::task::spawn_blocking(move || {
            match queue.lag() {
                Ok(lags) => {
                    gauge.reset();
                    for (partition, lag) in lags {
                        gauge.with_label_values(&[&partition.to_string()]).set(lag);
                    }
                }
                Err(error) => tracing::warn!(error = %error, "consumer lag unavailable"),
            }
            if let Ok(mut state) = state.lock() {
                state.running = false;
                state.last = Some(std::time::Instant::now());
            }
        });
    }
}

/// Serve `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ReloadingConfig>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render().await,
                )
            }
        }),
    );
    crate::web::serve_router(app, listener, tls, shutdown, "metrics endpoint").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_histogram_observes_each_segments_batch() -> Result<(), ServerError> {
        let metrics = Metrics::new(Arc::new(OnceLock::new()))?;
        for batch in [4, 4, 4, 4, 1] {
            metrics.record(&WorkerEvent::Indexed {
                stream_id: "s".into(),
                segment_seq: 0,
                points: 1,
                media_ms: 1000,
                batch,
                timings: Default::default(),
            });
        }
        assert_eq!(metrics.batch_size.get_sample_count(), 5);
        assert!((metrics.batch_size.get_sample_sum() - 17.0).abs() < 1e-9);
        Ok(())
    }

    /// A queue whose lag takes a slow broker round trip.
    struct SlowBroker {
        calls: std::sync::atomic::AtomicUsize,
    }

    impl QueueStatus for SlowBroker {
        fn in_flight(&self) -> usize {
            2
        }
        fn assigned_partitions(&self) -> Vec<i32> {
            vec![0]
        }
        fn is_paused(&self) -> bool {
            false
        }
        fn revocations(&self) -> u64 {
            0
        }
        fn lag(&self) -> Result<Vec<(i32, i64)>, vidx_core::QueueError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(1500));
            Ok(vec![(0, 7)])
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_never_wait_for_the_broker_and_share_one_lag_refresh() -> Result<(), ServerError>
    {
        let broker = Arc::new(SlowBroker {
            calls: Default::default(),
        });
        let cell: Arc<OnceLock<Arc<dyn QueueStatus>>> = Arc::new(OnceLock::new());
        let _ = cell.set(broker.clone());
        let metrics = Arc::new(Metrics::new(cell)?);
        // A burst of scrapes while the broker takes 1.5 s: each answers at once.
        let started = std::time::Instant::now();
        let scrapes: Vec<_> = (0..20)
            .map(|_| {
                let metrics = metrics.clone();
                tokio::spawn(async move { metrics.render().await })
            })
            .collect();
        for scrape in scrapes {
            let text = scrape
                .await
                .map_err(|error| ServerError::Startup(error.to_string()))?;
            assert!(text.contains("vidx_segments_in_flight 2"), "{text}");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1000),
            "the scrapes waited {:?}",
            started.elapsed()
        );
        // The refresh runs on a blocking thread that may not have started yet: give it a
        // moment, then there must be exactly one for the whole burst.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while broker.calls.load(std::sync::atomic::Ordering::SeqCst) == 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            broker.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one refresh for the whole burst"
        );
        // Once it is done, the lag is there.
        tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
        assert!(
            metrics
                .render()
                .await
                .contains("vidx_consumer_lag{partition=\"0\"} 7"),
            "the refreshed lag is served"
        );
        Ok(())
    }
}
