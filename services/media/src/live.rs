//! Live ingest: continuous keyframe-aligned segmenting of a live URL (MPEG-TS over `tcp://` or
//! `udp://`, `rtsp://`, `rtmp://`, HLS `http(s)://….m3u8`) with stall detection, reconnects
//! with jittered exponential backoff, wall-clock segment ranges and a reported stream state.
//!
//! Time: a live segment's [`SegmentChunk::range`] is in Unix epoch milliseconds. Each
//! connection anchors its first video timestamp to the wall-clock instant *just before the
//! connection was opened*: the first packet cannot have arrived earlier, so mapped times are
//! never later than the moment the data reached us (a search by time never sees the future)
//! and are early by at most the connect/handshake latency. Later packets are placed by their
//! media timestamps relative to that first one, clamped to `[end of the previous segment,
//! now]` so ranges never go backwards (across reconnects too) nor into the future; a jump of
//! the media clock by more than [`MAX_CLOCK_JUMP_MS`] (a timestamp wrap, a restarted
//! encoder) re-anchors at the current wall-clock time.
//!
//! Drops: when a read stalls for `stall_timeout`, fails or hits end of stream, the segment in
//! progress is closed with the packets it has (a playable, shorter chunk, ending at its last
//! packet) and handed to the sink, the state becomes [`StreamState::Degraded`], and the input
//! is reopened after a jittered exponential backoff. `seq` continues across reconnects.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ffmpeg_next as ffmpeg;
use vidx_core::MediaError;

use crate::input::{LIVE_PROTOCOLS, OpenSettings, open_input_with, to_ms};
use crate::segment::{
    SegmentChunk, SegmentOptions, Segmenter, VideoTrack, chunk_prefix, create_spool_dir,
};
use crate::source::InputSource;

/// A media-clock jump (either way) larger than this, relative to the wall clock, re-anchors
/// the wall-clock mapping instead of producing a far-future or far-past range.
pub const MAX_CLOCK_JUMP_MS: u64 = 10_000;

/// How to ingest a live source.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Segment length, spool dir, size and corruption limits (as for files).
    pub segment: SegmentOptions,
    /// No packet for this long (or a blocking network read this long) marks the stream
    /// degraded and triggers a reconnect.
    pub stall_timeout: Duration,
    /// First reconnect delay; doubled after each failed attempt up to `reconnect_max_backoff`.
    pub reconnect_initial_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    /// How many times to reconnect after consecutive failures before giving up (`Some(0)`:
    /// never reconnect; `None`: retry forever). A connection that delivered packets resets
    /// the count.
    pub max_reconnect_attempts: Option<u32>,
    /// The seq of the first chunk (resume numbering after a restart).
    pub first_seq: u64,
}

impl LiveOptions {
    /// Defaults: 5 s stall timeout, backoff from 500 ms up to 30 s, retry forever.
    pub fn new(segment_ms: u64, spool_dir: PathBuf) -> Self {
        Self {
            segment: SegmentOptions::new(segment_ms, spool_dir),
            stall_timeout: Duration::from_secs(5),
            reconnect_initial_backoff: Duration::from_millis(500),
            reconnect_max_backoff: Duration::from_secs(30),
            max_reconnect_attempts: None,
            first_seq: 0,
        }
    }
}

/// Why a live ingest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The stop flag was set.
    Requested,
    /// The sink returned `false`.
    SinkStopped,
    /// The connection failed again after `max_reconnect_attempts` reconnects in a row.
    RetriesExhausted,
}

/// The health of a live stream, reported to `on_state` on every change. Reasons never contain
/// URL credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    /// Before the first packet of the first connection (a first connection that fails moves
    /// to `Degraded` straight away).
    Connecting,
    /// Packets are flowing.
    Live,
    /// The stream stalled, dropped or cannot be opened; reconnecting.
    Degraded { reason: String },
    /// Terminal.
    Stopped { cause: StopCause },
}

/// What happens to a live stream, as far as its state is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LiveEvent {
    PacketsFlowing,
    Failed(String),
    Stop(StopCause),
}

impl StreamState {
    /// The state after `event`. `Stopped` is terminal.
    pub(crate) fn after(&self, event: LiveEvent) -> StreamState {
        match (self, event) {
            (StreamState::Stopped { cause }, _) => StreamState::Stopped { cause: *cause },
            (_, LiveEvent::PacketsFlowing) => StreamState::Live,
            (_, LiveEvent::Failed(reason)) => StreamState::Degraded { reason },
            (_, LiveEvent::Stop(cause)) => StreamState::Stopped { cause },
        }
    }
}

/// Tracks the state and reports changes only.
struct StateReporter<F: FnMut(StreamState)> {
    state: StreamState,
    on_state: F,
}

impl<F: FnMut(StreamState)> StateReporter<F> {
    fn new(mut on_state: F) -> Self {
        on_state(StreamState::Connecting);
        Self {
            state: StreamState::Connecting,
            on_state,
        }
    }

    fn apply(&mut self, event: LiveEvent) {
        let next = self.state.after(event);
        if next != self.state {
            self.state = next.clone();
            (self.on_state)(next);
        }
    }
}

/// What live ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSummary {
    /// Chunks handed to the sink.
    pub segments: u64,
    /// The seq the next chunk would have had (pass as `first_seq` to resume).
    pub next_seq: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Unreadable packets skipped.
    pub corrupt_packets: u64,
    pub cause: StopCause,
}

/// Exponential backoff with "equal jitter": attempt `n` (0-based) waits a uniformly random
/// time in `[base / 2, base]`, `base = min(max, initial · 2^n)`, so reconnecting clients
/// spread out but never retry sooner than half the nominal delay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `jitter_unit` in `[0, 1)` picks the point in the jitter window.
    pub(crate) fn delay(&self, attempt: u32, jitter_unit: f64) -> Duration {
        let max = self.max.max(self.initial);
        let base = self
            .initial
            .checked_mul(1u32 << attempt.min(30))
            .unwrap_or(max)
            .min(max);
        let half = base / 2;
        half + half.mul_f64(jitter_unit.clamp(0.0, 1.0))
    }
}

/// A small xorshift generator for backoff jitter (not for anything secret).
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Self((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Maps one connection's media timestamps (ms) to Unix epoch ms; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct WallClock {
    anchor_wall_ms: u64,
    anchor_media_ms: Option<i64>,
    /// Mapped times never fall below this (the end of the last chunk handed out).
    floor_ms: u64,
}

impl WallClock {
    pub(crate) fn new(anchor_wall_ms: u64, floor_ms: u64) -> Self {
        Self {
            anchor_wall_ms,
            anchor_media_ms: None,
            floor_ms,
        }
    }

    pub(crate) fn raise_floor(&mut self, floor_ms: u64) {
        self.floor_ms = self.floor_ms.max(floor_ms);
    }

    /// The wall-clock ms of a packet with media time `media_ms`, observed at `now_wall_ms`.
    pub(crate) fn map(&mut self, media_ms: i64, now_wall_ms: u64) -> u64 {
        let anchor_media_ms = *self.anchor_media_ms.get_or_insert(media_ms);
        let mut wall_ms =
            i128::from(self.anchor_wall_ms) + i128::from(media_ms) - i128::from(anchor_media_ms);
        let jump_ms = i128::from(MAX_CLOCK_JUMP_MS);
        if wall_ms > i128::from(now_wall_ms) + jump_ms
            || wall_ms < i128::from(self.floor_ms) - jump_ms
        {
            self.anchor_wall_ms = now_wall_ms;
            self.anchor_media_ms = Some(media_ms);
            wall_ms = i128::from(now_wall_ms);
        }
        let upper = now_wall_ms.max(self.floor_ms);
        wall_ms.clamp(i128::from(self.floor_ms), i128::from(upper)) as u64
    }
}

fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Ingest the live `source` until `stop` is set, the sink returns `false`, or
/// `max_reconnect_attempts` consecutive connections fail. Chunks reach `sink` in seq order as
/// soon as they are written, with wall-clock ranges (epoch ms); `on_state` hears every state
/// change, starting with [`StreamState::Connecting`] and ending with
/// [`StreamState::Stopped`].
///
/// Returns the summary when stopped by the flag or the sink; the last connection error when
/// retries are exhausted; an error at once (before any state) for a file source, a zero
/// `segment_ms` or `stall_timeout`, or an unusable spool dir. Every error and reason names
/// the input without URL credentials. Check the URL with [`crate::UrlPolicy`] first (live
/// schemes such as `rtsp` must be allowed there). The stall timeout also bounds the open
/// (connect, handshake and stream probing). Blocks: run it on its own thread; setting `stop`
/// aborts a blocking open or read promptly.
pub fn segment_live(
    source: &InputSource,
    options: &LiveOptions,
    stop: &Arc<AtomicBool>,
    on_state: impl FnMut(StreamState),
    mut sink: impl FnMut(SegmentChunk) -> bool,
) -> Result<LiveSummary, MediaError> {
    let name = source.display_name();
    if matches!(source, InputSource::File(_)) {
        return Err(MediaError::Rejected {
            input: name,
            reason: "live ingest needs a URL".into(),
        });
    }
    if options.segment.segment_ms == 0 || options.stall_timeout.is_zero() {
        return Err(MediaError::Rejected {
            input: name,
            reason: "segment_ms and stall_timeout must be positive".into(),
        });
    }
    create_spool_dir(&options.segment.spool_dir, &name)?;
    let mut reporter = StateReporter::new(on_state);
    let settings = OpenSettings {
        stall_timeout: options.stall_timeout,
        rw_timeout: options.stall_timeout,
        url_protocols: LIVE_PROTOCOLS,
        stop: Some(Arc::clone(stop)),
        url_guard: options.segment.url_guard.clone(),
    };
    let backoff = Backoff {
        initial: options.reconnect_initial_backoff,
        max: options.reconnect_max_backoff,
    };
    let mut jitter = Jitter::seeded();
    // Chunk files of two runs of the same stream must not collide: the run's start is part of
    // the prefix.
    let prefix = chunk_prefix(&format!("{name}#{}", now_epoch_ms()));
    let mut progress = Progress {
        next_seq: options.first_seq,
        floor_ms: 0,
        segments: 0,
        corrupt_packets: 0,
    };
    let mut connections = 0u64;
    let mut failed_in_row = 0u32;
    let cause = loop {
        if stop.load(Ordering::Relaxed) {
            break StopCause::Requested;
        }
        connections += 1;
        let outcome = run_connection(
            source,
            options,
            &settings,
            &prefix,
            &mut progress,
            &mut reporter,
            &mut sink,
        );
        let (error, delivered) = match outcome {
            ConnectionEnd::Stopped(cause) => break cause,
            ConnectionEnd::Failed { error, delivered } => (error, delivered),
        };
        if stop.load(Ordering::Relaxed) {
            break StopCause::Requested;
        }
        if delivered {
            failed_in_row = 0;
        }
        failed_in_row += 1;
        let reason = failure_reason(&error);
        tracing::warn!(input = %name, attempt = failed_in_row, reason = %reason, "live input failed, reconnecting");
        reporter.apply(LiveEvent::Failed(reason));
        if options
            .max_reconnect_attempts
            .is_some_and(|max_attempts| failed_in_row > max_attempts)
        {
            reporter.apply(LiveEvent::Stop(StopCause::RetriesExhausted));
            return Err(error);
        }
        let delay = backoff.delay(failed_in_row - 1, jitter.next_unit());
        sleep_unless_stopped(delay, stop);
    };
    reporter.apply(LiveEvent::Stop(cause));
    Ok(LiveSummary {
        segments: progress.segments,
        next_seq: progress.next_seq,
        reconnects: connections.saturating_sub(1),
        corrupt_packets: progress.corrupt_packets,
        cause,
    })
}

fn failure_reason(error: &MediaError) -> String {
    // The variants' messages lead with the (already redacted) input; the state only needs the
    // cause.
    match error {
        MediaError::NotFound { .. } => "not found".into(),
        MediaError::Empty { .. } => "empty".into(),
        MediaError::InvalidData { reason, .. }
        | MediaError::Truncated { reason, .. }
        | MediaError::Unsupported { reason, .. }
        | MediaError::Rejected { reason, .. }
        | MediaError::Io { reason, .. } => reason.clone(),
    }
}

fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + delay;
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Counters that survive reconnects.
struct Progress {
    next_seq: u64,
    /// End of the last chunk handed to the sink, epoch ms.
    floor_ms: u64,
    segments: u64,
    corrupt_packets: u64,
}

enum ConnectionEnd {
    Stopped(StopCause),
    /// `delivered`: the connection produced video packets (resets the failure count).
    Failed {
        error: MediaError,
        delivered: bool,
    },
}

/// One connection: open, read and cut until it fails or something stops it. The chunk in
/// progress when it fails or is stopped by the flag is flushed to the sink.
fn run_connection<F: FnMut(StreamState)>(
    source: &InputSource,
    options: &LiveOptions,
    settings: &OpenSettings,
    prefix: &str,
    progress: &mut Progress,
    reporter: &mut StateReporter<F>,
    sink: &mut impl FnMut(SegmentChunk) -> bool,
) -> ConnectionEnd {
    let failed = |error: MediaError| ConnectionEnd::Failed {
        error,
        delivered: false,
    };
    let connect_wall_ms = now_epoch_ms();
    let mut opened = match open_input_with(source, settings) {
        Ok(opened) => opened,
        Err(error) => return failed(error),
    };
    let name = opened.name.clone();
    let track = match VideoTrack::select(&opened, options.segment.max_pixels) {
        Ok(track) => track,
        Err(error) => return failed(error),
    };
    let stop_requested = || {
        settings
            .stop
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
    };
    let mut segmenter = Segmenter::new(
        &options.segment,
        &track,
        prefix.to_string(),
        progress.next_seq,
        name.clone(),
    );
    let mut clock = WallClock::new(connect_wall_ms, progress.floor_ms);
    let mut origin_pts = None;
    let mut last_end_ms = progress.floor_ms;
    let mut delivered = false;
    let mut consecutive_corrupt = 0usize;
    let mut packet = ffmpeg::Packet::empty();
    let end_error = loop {
        match packet.read(&mut opened.context) {
            Ok(()) => {
                opened.touch();
                consecutive_corrupt = 0;
            }
            Err(ffmpeg::Error::InvalidData) => {
                progress.corrupt_packets += 1;
                consecutive_corrupt += 1;
                if consecutive_corrupt > options.segment.max_consecutive_corrupt_packets {
                    break MediaError::InvalidData {
                        input: name.clone(),
                        reason: format!("{consecutive_corrupt} consecutive unreadable packets"),
                    };
                }
                continue;
            }
            Err(ffmpeg::Error::Eof) => {
                break MediaError::Io {
                    input: name.clone(),
                    reason: "the stream ended".into(),
                };
            }
            Err(ffmpeg::Error::Exit) if !stop_requested() => {
                break MediaError::Io {
                    input: name.clone(),
                    reason: format!(
                        "stalled: no data for {} ms",
                        options.stall_timeout.as_millis()
                    ),
                };
            }
            Err(ffmpeg::Error::Exit) => break stopped_error(&name),
            Err(error) => {
                break MediaError::Io {
                    input: name.clone(),
                    reason: format!("read failed: {error}"),
                };
            }
        }
        if stop_requested() {
            break stopped_error(&name);
        }
        if packet.stream() != track.index {
            continue;
        }
        let Some(pts) = packet.pts().or(packet.dts()) else {
            continue;
        };
        if !delivered {
            delivered = true;
            reporter.apply(LiveEvent::PacketsFlowing);
        }
        let origin = *origin_pts.get_or_insert(pts);
        let time_ms = clock.map(to_ms(pts, track.time_base), now_epoch_ms());
        let cut = match segmenter.cut_if_due(packet.is_key(), time_ms, &[]) {
            Ok(cut) => cut,
            Err(error) => break error,
        };
        if let Some(chunk) = cut {
            let end_ms = chunk.range.end_ms;
            progress.next_seq = segmenter.next_seq();
            let go_on = hand_over(chunk, progress, &mut clock, sink);
            // The sink's time (a slow publish, a blob upload) is not the source stalling.
            opened.touch();
            if !go_on {
                segmenter.discard_current();
                return ConnectionEnd::Stopped(StopCause::SinkStopped);
            }
            last_end_ms = last_end_ms.max(end_ms);
        }
        // Read before writing: the remux rescales the packet's timestamps and duration.
        let duration_ms = to_ms(packet.duration().max(0), track.time_base).max(0) as u64;
        match segmenter.write(&mut packet, time_ms, origin) {
            Ok(true) => {
                // Never past now: the packet is being shown from now on at the latest.
                last_end_ms = last_end_ms.max((time_ms + duration_ms).min(now_epoch_ms()));
            }
            Ok(false) => {}
            Err(error) => break error,
        }
        progress.next_seq = segmenter.next_seq();
    };
    // Flush the segment in progress with the packets it has rather than losing them.
    progress.next_seq = segmenter.next_seq();
    let flushed_start = segmenter.current_start_ms();
    match segmenter.finish_current(last_end_ms, &[], false) {
        Ok(Some(chunk)) => {
            tracing::debug!(input = %name, seq = chunk.seq, start_ms = ?flushed_start, "flushed partial live segment");
            if !hand_over(chunk, progress, &mut clock, sink) {
                return ConnectionEnd::Stopped(StopCause::SinkStopped);
            }
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(input = %name, error = %error, "cannot flush partial live segment");
        }
    }
    if stop_requested() {
        return ConnectionEnd::Stopped(StopCause::Requested);
    }
    ConnectionEnd::Failed {
        error: end_error,
        delivered,
    }
}

fn stopped_error(name: &str) -> MediaError {
    MediaError::Io {
        input: name.to_string(),
        reason: "stopped".into(),
    }
}

/// Give a chunk to the sink, moving the time floor to its end.
fn hand_over(
    chunk: SegmentChunk,
    progress: &mut Progress,
    clock: &mut WallClock,
    sink: &mut impl FnMut(SegmentChunk) -> bool,
) -> bool {
    progress.floor_ms = progress.floor_ms.max(chunk.range.end_ms);
    clock.raise_floor(chunk.range.end_ms);
    progress.segments += 1;
    sink(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(8),
        };
        for (attempt, base_ms) in [(0u32, 500u64), (1, 1000), (2, 2000), (4, 8000), (9, 8000)] {
            let low = backoff.delay(attempt, 0.0);
            let high = backoff.delay(attempt, 0.999_999);
            assert_eq!(low, Duration::from_millis(base_ms / 2), "attempt {attempt}");
            assert!(high <= Duration::from_millis(base_ms), "attempt {attempt}");
            assert!(high >= Duration::from_millis(base_ms) - Duration::from_millis(1));
        }
        // Huge attempt counts neither overflow nor exceed the cap.
        assert!(backoff.delay(u32::MAX, 0.5) <= Duration::from_secs(8));
        let mut jitter = Jitter::seeded();
        for _ in 0..1000 {
            let unit = jitter.next_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
            let delay = backoff.delay(3, unit);
            assert!(delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4));
        }
    }

    #[test]
    fn wall_clock_follows_media_time_from_the_anchor() {
        let mut clock = WallClock::new(1_000_000, 0);
        // First packet has media time 90 000 ms; it maps to the anchor.
        assert_eq!(clock.map(90_000, 1_000_050), 1_000_000);
        assert_eq!(clock.map(91_000, 1_001_020), 1_001_000);
        // Never in the future: a packet ahead of the wall clock is clamped to now.
        assert_eq!(clock.map(93_000, 1_002_000), 1_002_000);
    }

    #[test]
    fn wall_clock_never_goes_back_and_reanchors_on_jumps() {
        // A reconnect: the previous chunk ended at 2_000_000; the new connection's anchor is
        // earlier (clock skew) — its times are raised to the floor.
        let mut clock = WallClock::new(1_999_000, 2_000_000);
        assert_eq!(clock.map(5_000, 2_000_500), 2_000_000);
        assert_eq!(clock.map(6_500, 2_001_600), 2_000_500);
        // The media clock jumps back by an hour (encoder restart): re-anchored at now.
        assert_eq!(clock.map(6_500 - 3_600_000, 2_002_000), 2_002_000);
        assert_eq!(clock.map(6_500 - 3_600_000 + 1_000, 2_003_000), 2_003_000);
        // Forward by a day: re-anchored at now too, not a far-future range.
        assert_eq!(clock.map(86_400_000, 2_004_000), 2_004_000);
    }

    #[test]
    fn state_machine_transitions() {
        let connecting = StreamState::Connecting;
        let degraded = connecting.after(LiveEvent::Failed("connection refused".into()));
        assert_eq!(
            degraded,
            StreamState::Degraded {
                reason: "connection refused".into()
            }
        );
        let live = degraded.after(LiveEvent::PacketsFlowing);
        assert_eq!(live, StreamState::Live);
        assert_eq!(
            live.after(LiveEvent::Failed("stalled".into())),
            StreamState::Degraded {
                reason: "stalled".into()
            }
        );
        let stopped = live.after(LiveEvent::Stop(StopCause::Requested));
        assert_eq!(
            stopped,
            StreamState::Stopped {
                cause: StopCause::Requested
            }
        );
        // Terminal.
        assert_eq!(stopped.after(LiveEvent::PacketsFlowing), stopped);
        assert_eq!(stopped.after(LiveEvent::Failed("x".into())), stopped);
    }

    #[test]
    fn reporter_reports_changes_only() {
        let mut seen = Vec::new();
        {
            let mut reporter = StateReporter::new(|state| seen.push(state));
            reporter.apply(LiveEvent::Failed("refused".into()));
            reporter.apply(LiveEvent::Failed("refused".into()));
            reporter.apply(LiveEvent::PacketsFlowing);
            reporter.apply(LiveEvent::PacketsFlowing);
            reporter.apply(LiveEvent::Stop(StopCause::SinkStopped));
            reporter.apply(LiveEvent::PacketsFlowing);
        }
        assert_eq!(
            seen,
            vec![
                StreamState::Connecting,
                StreamState::Degraded {
                    reason: "refused".into()
                },
                StreamState::Live,
                StreamState::Stopped {
                    cause: StopCause::SinkStopped
                },
            ]
        );
    }

    #[test]
    fn file_sources_and_credentials_are_handled() {
        let stop = Arc::new(AtomicBool::new(false));
        let options = LiveOptions::new(1000, std::env::temp_dir().join("vidx-live-unit"));
        let error = segment_live(
            &InputSource::File(PathBuf::from("/dev/null")),
            &options,
            &stop,
            |_| {},
            |_| true,
        )
        .expect_err("files are not live");
        assert!(matches!(error, MediaError::Rejected { .. }), "{error}");

        // Nothing listens on port 1: every attempt fails; the error and states carry no
        // password.
        let options = LiveOptions {
            max_reconnect_attempts: Some(1),
            reconnect_initial_backoff: Duration::from_millis(10),
            stall_timeout: Duration::from_secs(2),
            ..options
        };
        let mut states = Vec::new();
        let error = segment_live(
            &InputSource::Url("tcp://user:hunter2@127.0.0.1:1".into()),
            &options,
            &stop,
            |state| states.push(state),
            |_| true,
        )
        .expect_err("nothing listens");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("***@127.0.0.1:1"), "{error}");
        assert!(
            !format!("{states:?}").contains("hunter2"),
            "{states:?} leaks"
        );
        assert_eq!(states.first(), Some(&StreamState::Connecting));
        assert!(matches!(states.get(1), Some(StreamState::Degraded { .. })));
        assert_eq!(
            states.last(),
            Some(&StreamState::Stopped {
                cause: StopCause::RetriesExhausted
            })
        );
    }
}
