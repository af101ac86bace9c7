//! Qdrant Edge at scale: load N synthetic moments into an Edge store on disk, build the HNSW
//! index, then time filtered searches and measure their recall against an exact scan.
//!
//! The moments look like vidx's: clustered random unit vectors (captions of one scene are
//! near each other), tenants, streams, consecutive time ranges, caption text. The exact top 10
//! of every query is computed while the points are generated (each vector is made once and
//! never kept), so the peak RSS is the store's, not the benchmark's copy of the vectors.
//!
//!     cargo run --release -p vidx-store --example edge_bench -- \
//!         [--points 1000000] [--dim 384] [--queries 200] [--tenants 8] [--streams 16] \
//!         [--clusters 1000] [--batch 10000] [--optimize-every 0] [--seed 7] \
//!         [--dir PATH] [--json target/bench-edge.json]
//!
//! Without `--dir` the store lives in a temporary directory that is removed at the end.
//! Progress goes to stderr; the table to stdout; the JSON to `--json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use uuid::Uuid;
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, PointPayload, RecordKind, SearchFilter, VectorQuery, point_id};
use vidx_store::{EdgeStore, EdgeStoreOptions, VectorSpec};

/// Recall is measured at this depth.
const TOP_K: usize = 10;
/// Length of the noise added to a cluster centre (the centre has length 1): the expected
/// cosine of a point to its centre is `1 / sqrt(1 + NOISE_NORM^2)` ≈ 0.6, of two points of one
/// cluster ≈ 0.36, of unrelated points ≈ 0.
const NOISE_NORM: f32 = 1.33;
const MODEL_REV: &str = "bench-rev";
const WORDS: &[&str] = &[
    "a", "person", "walks", "past", "the", "parked", "red", "car", "near", "entrance", "dog",
    "runs", "across", "street", "while", "truck", "turns", "left", "at", "crossing", "two",
    "people", "talk", "by", "door", "bicycle", "leans", "against", "wall", "light", "changes",
];

#[derive(Debug, Clone)]
struct Arguments {
    points: usize,
    dimension: usize,
    queries: usize,
    tenants: usize,
    streams_per_tenant: usize,
    clusters: usize,
    batch: usize,
    /// 0: optimize once, after the load.
    optimize_every: u64,
    seed: u64,
    dir: Option<PathBuf>,
    json: PathBuf,
}

impl Default for Arguments {
    fn default() -> Self {
        Self {
            points: 1_000_000,
            dimension: 384,
            queries: 200,
            tenants: 8,
            streams_per_tenant: 16,
            clusters: 1_000,
            batch: 10_000,
            optimize_every: 0,
            seed: 7,
            dir: None,
            json: PathBuf::from("target/bench-edge.json"),
        }
    }
}

fn parse_arguments() -> anyhow::Result<Arguments> {
    let mut arguments = Arguments::default();
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "usage: edge_bench [--points N] [--dim D] [--queries Q] [--tenants T] \
                 [--streams S] [--clusters C] [--batch B] [--optimize-every N] [--seed S] \
                 [--dir PATH] [--json PATH]"
            );
            std::process::exit(0);
        }
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (flag.clone(), None),
        };
        let value = match inline_value {
            Some(value) => value,
            None => raw
                .next()
                .with_context(|| format!("{name} needs a value"))?,
        };
        let number = || -> anyhow::Result<u64> {
            value
                .replace('_', "")
                .parse()
                .with_context(|| format!("{name}: `{value}` is not a number"))
        };
        match name.as_str() {
            "--points" => arguments.points = number()? as usize,
            "--dim" => arguments.dimension = number()? as usize,
            "--queries" => arguments.queries = number()? as usize,
            "--tenants" => arguments.tenants = number()? as usize,
            "--streams" => arguments.streams_per_tenant = number()? as usize,
            "--clusters" => arguments.clusters = number()? as usize,
            "--batch" => arguments.batch = number()? as usize,
            "--optimize-every" => arguments.optimize_every = number()?,
            "--seed" => arguments.seed = number()?,
            "--dir" => arguments.dir = Some(PathBuf::from(value)),
            "--json" => arguments.json = PathBuf::from(value),
            other => bail!("unknown flag {other} (try --help)"),
        }
    }
    ensure!(arguments.points > 0, "--points must be at least 1");
    ensure!(arguments.dimension > 0, "--dim must be at least 1");
    ensure!(arguments.tenants > 0, "--tenants must be at least 1");
    ensure!(
        arguments.streams_per_tenant > 0,
        "--streams must be at least 1"
    );
    ensure!(arguments.clusters > 0, "--clusters must be at least 1");
    ensure!(arguments.batch > 0, "--batch must be at least 1");
    Ok(arguments)
}

/// splitmix64: small, fast, deterministic; good enough for synthetic data.
struct Random {
    state: u64,
}

impl Random {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// Uniform in (0, 1].
    fn unit_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal pairs (Box–Muller).
    fn normal_pair(&mut self) -> (f32, f32) {
        let radius = (-2.0 * self.unit_open().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.unit_open();
        ((radius * angle.cos()) as f32, (radius * angle.sin()) as f32)
    }

    fn normal_vector(&mut self, dimension: usize) -> Vec<f32> {
        let mut vector = Vec::with_capacity(dimension + 1);
        while vector.len() < dimension {
            let (first, second) = self.normal_pair();
            vector.push(first);
            vector.push(second);
        }
        vector.truncate(dimension);
        vector
    }
}

fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
}

fn dot(left: &[f32], right: &[f32]) -> f32 {
    left.iter().zip(right).map(|(a, b)| a * b).sum()
}

/// A unit vector near the centre of a random cluster.
fn clustered_vector(random: &mut Random, centres: &[Vec<f32>]) -> Vec<f32> {
    let centre = &centres[random.below(centres.len())];
    let dimension = centre.len();
    let noise_scale = NOISE_NORM / (dimension as f32).sqrt();
    let noise = random.normal_vector(dimension);
    let mut vector: Vec<f32> = centre
        .iter()
        .zip(noise)
        .map(|(centre_value, noise_value)| centre_value + noise_scale * noise_value)
        .collect();
    normalize(&mut vector);
    vector
}

/// The exact top `TOP_K` of one query, kept sorted best first.
struct ExactTop {
    tenant: usize,
    vector: Vec<f32>,
    best: Vec<(f32, Uuid)>,
}

impl ExactTop {
    fn offer(&mut self, score: f32, id: Uuid) {
        if self.best.len() == TOP_K && self.best[TOP_K - 1].0 >= score {
            return;
        }
        let position = self.best.partition_point(|(kept, _)| *kept >= score);
        self.best.insert(position, (score, id));
        self.best.truncate(TOP_K);
    }
}

/// Where each stream of the synthetic timeline stands.
struct StreamCursor {
    tenant: usize,
    stream_id: String,
    next_start_ms: u64,
    moments: u32,
}

fn tenant_name(tenant: usize) -> String {
    format!("tenant-{tenant:02}")
}

fn caption(random: &mut Random) -> String {
    let words = 6 + random.below(8);
    (0..words)
        .map(|_| WORDS[random.below(WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The next moment of a random stream (1–6 s after the stream's previous one, 1–8 s long),
/// with its tenant's index.
fn next_point(
    random: &mut Random,
    streams: &mut [StreamCursor],
    vector: Vec<f32>,
) -> (usize, IndexPoint) {
    let stream_index = random.below(streams.len());
    let stream = &mut streams[stream_index];
    let start_ms = stream.next_start_ms;
    stream.next_start_ms += 1_000 + random.below(5_000) as u64;
    let end_ms = start_ms + 1_000 + random.below(7_000) as u64;
    let index = stream.moments;
    stream.moments += 1;
    // One subtitle cue in five; the rest are captions.
    let kind = if random.below(5) == 0 {
        RecordKind::Subtitle
    } else {
        RecordKind::Caption
    };
    let tenant = tenant_name(stream.tenant);
    let segment_seq = start_ms / 10_000;
    let point = IndexPoint {
        id: point_id(
            &tenant,
            &stream.stream_id,
            segment_seq,
            segment_seq * 10_000,
            kind,
            index,
            MODEL_REV,
        ),
        vectors: [(vector_names::TEXT.to_string(), vector)].into(),
        payload: PointPayload {
            source_uri: format!("rtsp://camera.local/{}", stream.stream_id),
            tenant,
            stream_id: stream.stream_id.clone(),
            segment_seq,
            kind,
            start_ms,
            end_ms,
            caption: caption(random),
            model_rev: MODEL_REV.into(),
            region: None,
            thumbnail: None,
            indexed_at_ms: 0,
            labels: Vec::new(),
        },
        thumbnail: None,
    };
    (stream.tenant, point)
}

/// A line of `/proc/self/status` (`VmHWM`, `VmRSS`) in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    let kib: u64 = line
        .trim_start_matches(key)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// (apparent bytes, allocated bytes) of every file under `path`.
fn disk_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                apparent += metadata.len();
                // st_blocks counts 512-byte units whatever the file system's block size.
                allocated += metadata.blocks() * 512;
            }
        }
    }
    Ok((apparent, allocated))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let arguments = parse_arguments()?;
    let temporary;
    let directory = match &arguments.dir {
        Some(directory) => {
            let occupied = directory.exists() && std::fs::read_dir(directory)?.next().is_some();
            ensure!(
                !occupied,
                "{} is not empty; the benchmark needs a fresh store",
                directory.display()
            );
            directory.clone()
        }
        None => {
            temporary = tempfile::Builder::new()
                .prefix("vidx-edge-bench-")
                .tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    eprintln!(
        "edge_bench: {arguments:?}, store in {}",
        directory.display()
    );

    let options = EdgeStoreOptions {
        optimize_after_points: if arguments.optimize_every == 0 {
            u64::MAX
        } else {
            arguments.optimize_every
        },
        indexing_threshold_kb: None,
    };
    let store = EdgeStore::open(
        &directory,
        &[VectorSpec {
            name: vector_names::TEXT.into(),
            dimension: arguments.dimension,
        }],
        options,
    )?;

    let mut random = Random::new(arguments.seed);
    let centres: Vec<Vec<f32>> = (0..arguments.clusters)
        .map(|_| {
            let mut centre = random.normal_vector(arguments.dimension);
            normalize(&mut centre);
            centre
        })
        .collect();
    // Queries come from the same clusters as the data, each restricted to one tenant.
    let mut exact: Vec<ExactTop> = (0..arguments.queries)
        .map(|_| ExactTop {
            tenant: random.below(arguments.tenants),
            vector: clustered_vector(&mut random, &centres),
            best: Vec::with_capacity(TOP_K + 1),
        })
        .collect();
    let mut queries_by_tenant: Vec<Vec<usize>> = vec![Vec::new(); arguments.tenants];
    for (query_index, query) in exact.iter().enumerate() {
        queries_by_tenant[query.tenant].push(query_index);
    }
    let mut streams: Vec<StreamCursor> = (0..arguments.tenants)
        .flat_map(|tenant| {
            (0..arguments.streams_per_tenant).map(move |stream| StreamCursor {
                tenant,
                stream_id: format!("cam-{tenant:02}-{stream:03}"),
                next_start_ms: 0,
                moments: 0,
            })
        })
        .collect();
    let mut points_per_tenant = vec![0u64; arguments.tenants];

    // Load: generate a batch, fold it into the exact top 10s, upsert it.
    let load_started = Instant::now();
    let mut upsert_time = Duration::ZERO;
    let mut loaded = 0usize;
    let progress_every = (arguments.points / 20).max(arguments.batch);
    let mut next_progress = progress_every;
    while loaded < arguments.points {
        let size = arguments.batch.min(arguments.points - loaded);
        let mut batch = Vec::with_capacity(size);
        for _ in 0..size {
            let vector = clustered_vector(&mut random, &centres);
            let (tenant, point) = next_point(&mut random, &mut streams, vector);
            points_per_tenant[tenant] += 1;
            let vector = &point.vectors[vector_names::TEXT];
            for query_index in &queries_by_tenant[tenant] {
                let query = &mut exact[*query_index];
                let score = dot(&query.vector, vector);
                query.offer(score, point.id);
            }
            batch.push(point);
        }
        let upsert_started = Instant::now();
        store.upsert_blocking(batch)?;
        upsert_time += upsert_started.elapsed();
        loaded += size;
        if loaded >= next_progress || loaded == arguments.points {
            next_progress += progress_every;
            let elapsed = load_started.elapsed().as_secs_f64();
            eprintln!(
                "loaded {loaded}/{} points ({:.0}%) in {elapsed:.1} s ({:.0} points/s, upsert {:.1} s), rss {:.2} GiB",
                arguments.points,
                100.0 * loaded as f64 / arguments.points as f64,
                loaded as f64 / elapsed,
                upsert_time.as_secs_f64(),
                gib(proc_status_bytes("VmRSS").unwrap_or(0)),
            );
        }
    }
    let load_secs = load_started.elapsed().as_secs_f64();

    eprintln!("optimizing (HNSW build)...");
    let optimize_started = Instant::now();
    store.optimize_blocking()?;
    let optimize_secs = optimize_started.elapsed().as_secs_f64();
    let indexed_vectors = store.indexed_vectors()?;
    let stored_points = store.count_blocking(None)?;
    eprintln!(
        "optimized in {optimize_secs:.1} s: {indexed_vectors} of {stored_points} vectors in HNSW segments"
    );

    // Search: vector + tenant filter, top 10, against the exact top 10.
    let mut latencies_ms = Vec::with_capacity(exact.len());
    let mut recall_sum = 0.0;
    let mut recall_queries = 0usize;
    for query in &exact {
        let search = VectorQuery {
            vector_name: vector_names::TEXT.into(),
            vector: query.vector.clone(),
            filter: SearchFilter {
                tenant: tenant_name(query.tenant),
                ..Default::default()
            },
            top_k: TOP_K,
            caption_words: None,
        };
        let started = Instant::now();
        let hits = store.search_blocking(search)?;
        latencies_ms.push(millis(started.elapsed()));
        if query.best.is_empty() {
            continue;
        }
        let found = hits
            .iter()
            .filter(|hit| query.best.iter().any(|(_, id)| *id == hit.id))
            .count();
        recall_sum += found as f64 / query.best.len() as f64;
        recall_queries += 1;
    }
    let mean_ms = latencies_ms.iter().sum::<f64>() / latencies_ms.len().max(1) as f64;
    latencies_ms.sort_by(f64::total_cmp);
    let p50_ms = percentile(&latencies_ms, 50.0);
    let p99_ms = percentile(&latencies_ms, 99.0);
    let max_ms = latencies_ms.last().copied().unwrap_or(f64::NAN);
    let recall = recall_sum / recall_queries.max(1) as f64;
    let peak_rss = proc_status_bytes("VmHWM").unwrap_or(0);
    let (disk_apparent, disk_allocated) = disk_usage(&directory)?;

    println!();
    println!(
        "Qdrant Edge, {} points x {} dims",
        arguments.points, arguments.dimension
    );
    println!(
        "  {:<22} {:>12}",
        "load (wall)",
        format!("{load_secs:.1} s")
    );
    println!(
        "  {:<22} {:>12}",
        "  of which upsert",
        format!("{:.1} s", upsert_time.as_secs_f64())
    );
    println!(
        "  {:<22} {:>12}",
        "load rate",
        format!("{:.0} pts/s", arguments.points as f64 / load_secs)
    );
    println!(
        "  {:<22} {:>12}",
        "optimize (HNSW)",
        format!("{optimize_secs:.1} s")
    );
    println!("  {:<22} {:>12}", "indexed vectors", indexed_vectors);
    println!("  {:<22} {:>12}", "queries", latencies_ms.len());
    println!("  {:<22} {:>12}", "search p50", format!("{p50_ms:.2} ms"));
    println!("  {:<22} {:>12}", "search p99", format!("{p99_ms:.2} ms"));
    println!("  {:<22} {:>12}", "search mean", format!("{mean_ms:.2} ms"));
    println!("  {:<22} {:>12}", "search max", format!("{max_ms:.2} ms"));
    println!("  {:<22} {:>12}", "recall@10", format!("{recall:.4}"));
    println!(
        "  {:<22} {:>12}",
        "peak RSS (VmHWM)",
        format!("{:.2} GiB", gib(peak_rss))
    );
    println!(
        "  {:<22} {:>12}",
        "on disk (allocated)",
        format!("{:.2} GiB", gib(disk_allocated))
    );
    println!(
        "  {:<22} {:>12}",
        "on disk (apparent)",
        format!("{:.2} GiB", gib(disk_apparent))
    );

    let report = serde_json::json!({
        "points": arguments.points,
        "dimension": arguments.dimension,
        "queries": latencies_ms.len(),
        "tenants": arguments.tenants,
        "streams_per_tenant": arguments.streams_per_tenant,
        "clusters": arguments.clusters,
        "batch": arguments.batch,
        "optimize_every": arguments.optimize_every,
        "seed": arguments.seed,
        "points_per_tenant": points_per_tenant,
        "stored_points": stored_points,
        "indexed_vectors": indexed_vectors,
        "load_secs": load_secs,
        "upsert_secs": upsert_time.as_secs_f64(),
        "optimize_secs": optimize_secs,
        "search_p50_ms": p50_ms,
        "search_p99_ms": p99_ms,
        "search_mean_ms": mean_ms,
        "search_max_ms": max_ms,
        "recall_at_10": recall,
        "peak_rss_bytes": peak_rss,
        "disk_allocated_bytes": disk_allocated,
        "disk_apparent_bytes": disk_apparent,
    });
    if let Some(parent) = arguments.json.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&arguments.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", arguments.json.display()))?;
    println!("\nwrote {}", arguments.json.display());
    Ok(())
}
