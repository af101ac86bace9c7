//! Live ingest against a real stream: the ffmpeg CLI serves MPEG-TS over TCP on loopback and
//! vidx connects as a client. The source is stalled (SIGSTOP), then dropped (killed) and
//! restarted on the same port; vidx must report Degraded, reconnect, report Live again and
//! keep numbering segments with later wall-clock ranges.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use vidx_media::{InputSource, LiveOptions, SegmentChunk, StopCause, StreamState, segment_live};

const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous bound for anything that should take a second or two on a fast machine.
const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// An ffmpeg process serving a live 25 fps H.264 test pattern as MPEG-TS to the first TCP
/// client; killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16) -> Result<Self> {
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=s=160x120:r=25"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
            .args(["-pix_fmt", "yuv420p", "-f", "mpegts"])
            .arg(format!("tcp://127.0.0.1:{port}?listen=1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start ffmpeg")?;
        Ok(Self { child })
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// States seen so far, and a way to wait for one.
struct States {
    rx: Receiver<StreamState>,
    seen: Vec<StreamState>,
}

impl States {
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&StreamState) -> bool,
    ) -> Result<StreamState> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(state) => {
                    self.seen.push(state.clone());
                    if predicate(&state) {
                        return Ok(state);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no {what} state within {timeout:?}; seen {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("loop ended before {what}; seen {:?}", self.seen)
                }
            }
        }
    }
}

/// Chunks with the wall-clock time they reached the sink.
fn wait_for_chunks(
    rx: &Receiver<(SegmentChunk, u64)>,
    count: usize,
    timeout: Duration,
) -> Result<Vec<(SegmentChunk, u64)>> {
    let deadline = Instant::now() + timeout;
    let mut chunks = Vec::new();
    while chunks.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => chunks.push(chunk),
            Err(error) => bail!("{} of {count} chunks, then {error}", chunks.len()),
        }
    }
    Ok(chunks)
}

fn drain(rx: &Receiver<(SegmentChunk, u64)>) -> Vec<(SegmentChunk, u64)> {
    rx.try_iter().collect()
}

fn ffprobe_frames(path: &std::path::Path) -> Result<u64> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()?;
    ensure!(output.status.success(), "ffprobe failed on {path:?}");
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// Every chunk: seq contiguous from the first, wall-clock range inside [test start, arrival],
/// non-empty, never starting before the previous one ended.
fn check_chunks(chunks: &[(SegmentChunk, u64)], test_start_ms: u64) -> Result<()> {
    let mut previous: Option<&SegmentChunk> = None;
    for (chunk, arrived_ms) in chunks {
        let range = chunk.range;
        ensure!(
            range.start_ms >= test_start_ms && range.end_ms <= *arrived_ms,
            "seq {}: range {range:?} outside [{test_start_ms}, {arrived_ms}]",
            chunk.seq
        );
        ensure!(
            range.end_ms > range.start_ms,
            "seq {}: empty range",
            chunk.seq
        );
        ensure!(
            chunk.packets > 0 && chunk.bytes > 0,
            "seq {}: no data",
            chunk.seq
        );
        if let Some(previous) = previous {
            ensure!(
                chunk.seq == previous.seq + 1,
                "seq gap after {}",
                previous.seq
            );
            ensure!(
                range.start_ms >= previous.range.end_ms,
                "seq {} starts at {} before the previous end {}",
                chunk.seq,
                range.start_ms,
                previous.range.end_ms
            );
        }
        previous = Some(chunk);
    }
    Ok(())
}

#[test]
fn live_stream_stalls_drops_and_reconnects() -> Result<()> {
    let test_started = Instant::now();
    let test_start_ms = now_ms();
    let spool = tempfile::tempdir()?;
    let port = free_port()?;
    let server = Server::start(port)?;

    let mut options = LiveOptions::new(1_000, spool.path().join("spool"));
    options.stall_timeout = STALL_TIMEOUT;
    options.reconnect_initial_backoff = Duration::from_millis(100);
    options.reconnect_max_backoff = Duration::from_millis(800);
    let stop = Arc::new(AtomicBool::new(false));
    let (state_tx, state_rx) = channel();
    let (chunk_tx, chunk_rx) = channel();
    // Credentials in the URL must not show up anywhere (ffmpeg's tcp protocol ignores them).
    let source = InputSource::Url(format!("tcp://viewer:s3cret@127.0.0.1:{port}"));
    let loop_stop = Arc::clone(&stop);
    let ingest = std::thread::spawn(move || {
        segment_live(
            &source,
            &options,
            &loop_stop,
            |state| {
                let _ = state_tx.send(state);
            },
            |chunk| chunk_tx.send((chunk, now_ms())).is_ok(),
        )
    });
    let mut states = States {
        rx: state_rx,
        seen: Vec::new(),
    };

    // 1. Segments arrive with wall-clock ranges.
    states.wait_for("Live", WAIT, |state| *state == StreamState::Live)?;
    let mut chunks = wait_for_chunks(&chunk_rx, 3, WAIT)?;
    ensure!(chunks[0].0.seq == 0, "numbering starts at 0");
    check_chunks(&chunks, test_start_ms)?;
    ensure!(
        ffprobe_frames(&chunks[1].0.path)? >= 20,
        "a 1 s chunk at 25 fps is playable"
    );
    let before_stall = chunks.len();
    println!("live after {:?}", test_started.elapsed());

    // 2. Stall: no packets for stall_timeout → Degraded.
    server.signal("-STOP")?;
    let stalled_at = Instant::now();
    let degraded = states.wait_for(
        "Degraded",
        STALL_TIMEOUT + Duration::from_secs(6),
        |state| matches!(state, StreamState::Degraded { .. }),
    )?;
    println!(
        "degraded {:?} after the stall: {degraded:?}",
        stalled_at.elapsed()
    );
    ensure!(
        stalled_at.elapsed() >= STALL_TIMEOUT - Duration::from_millis(500),
        "degraded before the stall timeout could fire"
    );
    let degraded_ms = now_ms();

    // 3. Drop: kill the stalled server and serve again on the same port → Live again.
    server.kill()?;
    let _server = Server::start(port)?;
    let restarted = Instant::now();
    states.wait_for("Live again", WAIT, |state| *state == StreamState::Live)?;
    println!("live again {:?} after the restart", restarted.elapsed());
    // Chunks cut before the stall plus the partial one flushed at the drop.
    chunks.extend(drain(&chunk_rx));
    let after_drop = chunks.len();
    // The segment in progress at the stall was flushed with its packets, still playable.
    let (flushed, _) = chunks.last().context("chunks")?;
    ensure!(after_drop > before_stall, "the partial segment was flushed");
    ensure!(
        ffprobe_frames(&flushed.path)? >= 1,
        "the flushed partial segment decodes"
    );
    let new_chunks = wait_for_chunks(&chunk_rx, 2, WAIT)?;
    ensure!(
        new_chunks
            .iter()
            .all(|(chunk, _)| chunk.range.start_ms >= degraded_ms),
        "new segments lie after the outage: {:?}",
        new_chunks
            .iter()
            .map(|(chunk, _)| chunk.range)
            .collect::<Vec<_>>()
    );
    chunks.extend(new_chunks);
    check_chunks(&chunks, test_start_ms)?;
    println!(
        "{} chunks before the stall, {} flushed at the drop, seqs {:?}",
        before_stall,
        after_drop - before_stall,
        chunks
            .iter()
            .map(|(chunk, _)| chunk.seq)
            .collect::<Vec<_>>()
    );

    for (chunk, arrived_ms) in &chunks {
        println!(
            "seq {} range {}..{} (+{} ms) arrived {} packets {}",
            chunk.seq,
            chunk.range.start_ms - test_start_ms,
            chunk.range.end_ms - test_start_ms,
            chunk.range.duration_ms(),
            arrived_ms - test_start_ms,
            chunk.packets
        );
    }

    // 4. Stop on request.
    stop.store(true, Ordering::Relaxed);
    let summary = ingest
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
    states.wait_for("Stopped", WAIT, |state| {
        matches!(state, StreamState::Stopped { .. })
    })?;
    ensure!(summary.cause == StopCause::Requested, "{summary:?}");
    ensure!(summary.reconnects >= 1, "{summary:?}");
    ensure!(
        summary.segments as usize >= chunks.len() && summary.next_seq == summary.segments,
        "{summary:?}"
    );
    let all_states = format!("{:?}", states.seen);
    ensure!(
        !all_states.contains("s3cret"),
        "credentials leaked: {all_states}"
    );
    ensure!(
        states.seen.first() == Some(&StreamState::Connecting),
        "{all_states}"
    );
    println!("states {all_states}; total {:?}", test_started.elapsed());
    ensure!(test_started.elapsed() < Duration::from_secs(60), "too slow");
    Ok(())
}
