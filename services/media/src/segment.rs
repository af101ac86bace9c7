//! Cutting a source into keyframe-aligned, self-contained Matroska chunks by remuxing the
//! video packets (no re-encoding), streaming each chunk to a sink as soon as it is complete.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use vidx_core::{
    MediaError, SEGMENT_TASK_SCHEMA_VERSION, SegmentMedia, SegmentTask, SubtitleCue, TimeRange,
};

use crate::input::{OpenSettings, OpenedInput, open_input_with, to_ms};
use crate::probe::{MediaInfo, describe};
use crate::source::InputSource;
use crate::subtitles::{cues_for_segment, embedded_cues, normalize_cues, sidecar_cues};

/// How to cut.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Target segment length; a segment ends at the first keyframe at or after this length.
    pub segment_ms: u64,
    /// Longest segment remuxing may make: past it without a keyframe (an animated GIF, a
    /// file with one keyframe), the rest of a file is cut by re-encoding, every `segment_ms`.
    pub max_segment_ms: u64,
    /// Where chunk files are written.
    pub spool_dir: PathBuf,
    /// Largest accepted frame (width × height).
    pub max_pixels: u64,
    /// Consecutive unreadable packets after which the input is declared corrupt.
    pub max_consecutive_corrupt_packets: usize,
    /// No progress reading the input for this long aborts it (the sink's time excluded).
    pub stall_timeout: std::time::Duration,
    /// Check every HTTP(S) connection of a URL input against these rules as it is made
    /// (redirects, playlist entries, a name resolved again); `None`: no such check.
    pub url_guard: Option<crate::UrlPolicy>,
}

impl SegmentOptions {
    pub fn new(segment_ms: u64, spool_dir: PathBuf) -> Self {
        Self {
            segment_ms,
            max_segment_ms: segment_ms.saturating_mul(3).max(60_000),
            spool_dir,
            max_pixels: 8192 * 8192,
            max_consecutive_corrupt_packets: 200,
            stall_timeout: crate::input::DEFAULT_STALL_TIMEOUT,
            url_guard: None,
        }
    }
}

/// A finished chunk: a playable Matroska file holding the segment's video packets.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentChunk {
    pub seq: u64,
    /// Media time covered, ms from the start of the stream.
    pub range: TimeRange,
    pub path: PathBuf,
    pub bytes: u64,
    pub packets: u64,
    /// Subtitle cues that start inside this segment.
    pub subtitles: Vec<SubtitleCue>,
}

impl SegmentChunk {
    /// The queue message for this chunk: the bytes inline when the chunk is at most
    /// `inline_max_bytes` (the file is removed), else a `file://` blob URI to the chunk,
    /// which then must stay where it is until a worker has indexed it.
    pub fn into_task(
        self,
        tenant: &str,
        stream_id: &str,
        source_uri: &str,
        inline_max_bytes: u64,
    ) -> std::io::Result<SegmentTask> {
        let media = if self.bytes <= inline_max_bytes {
            let bytes = std::fs::read(&self.path)?;
            std::fs::remove_file(&self.path)?;
            SegmentMedia::Inline(bytes)
        } else {
            SegmentMedia::Blob(format!("file://{}", self.path.display()))
        };
        Ok(self.into_task_with(tenant, stream_id, source_uri, media))
    }

    /// The queue message for this chunk with its media already placed (inline, or a blob
    /// URI the caller uploaded it to).
    pub fn into_task_with(
        self,
        tenant: &str,
        stream_id: &str,
        source_uri: &str,
        media: SegmentMedia,
    ) -> SegmentTask {
        SegmentTask {
            generation: None,
            schema_version: SEGMENT_TASK_SCHEMA_VERSION,
            tenant: tenant.to_string(),
            stream_id: stream_id.to_string(),
            segment_seq: self.seq,
            range: self.range,
            media,
            source_uri: source_uri.to_string(),
            attempt: 1,
            subtitles: self.subtitles,
            trace_context: Default::default(),
            labels: Vec::new(),
        }
    }
}

/// What segmenting one input produced.
#[derive(Debug, Clone)]
pub struct SegmentSummary {
    pub info: MediaInfo,
    pub segments: u64,
    /// Media time covered by the video packets.
    pub duration_ms: u64,
    pub subtitle_cues: usize,
    /// Unreadable packets skipped.
    pub corrupt_packets: u64,
    /// Whether the sink asked to stop early.
    pub stopped: bool,
    /// Media time from which the input was cut by re-encoding instead of remuxing (no
    /// keyframe within `max_segment_ms`, or a stream the chunk container refused).
    pub reencoded_from_ms: Option<u64>,
}

/// Segment `source`, calling `sink` with each chunk in order as soon as it is written. The
/// sink returns `false` to stop. Chunks already handed to the sink stay valid when a later
/// part of the input turns out to be broken; the error still names the input.
pub fn segment_source(
    source: &InputSource,
    options: &SegmentOptions,
    mut sink: impl FnMut(SegmentChunk) -> bool,
) -> Result<SegmentSummary, MediaError> {
    let open = OpenSettings {
        stall_timeout: options.stall_timeout,
        url_guard: options.url_guard.clone(),
        ..OpenSettings::default()
    };
    let mut opened = open_input_with(source, &open)?;
    let name = opened.name.clone();
    let track = VideoTrack::select(&opened, options.max_pixels)?;
    create_spool_dir(&options.spool_dir, &name)?;
    let VideoTrack {
        info,
        index: video_index,
        time_base,
        start_time,
        duration: stream_duration,
        ..
    } = track.clone();

    // Media time 0 is the first video timestamp; everything is reported relative to it.
    let has_start_time = start_time != ffmpeg::ffi::AV_NOPTS_VALUE;
    let mut origin_pts = has_start_time.then_some(start_time);

    let mut cues = Vec::new();
    if !info.subtitles.is_empty() {
        let origin_ms = origin_pts.map_or(0, |pts| to_ms(pts, time_base));
        cues.extend(embedded_cues(source, origin_ms, &open)?);
    }
    if let InputSource::File(path) = source {
        cues.extend(sidecar_cues(path));
    }
    let cues = normalize_cues(cues);

    let mut segmenter = Segmenter::new(options, &track, chunk_prefix(&name), 0, name.clone());
    let mut last_end_ms = 0u64;
    let mut corrupt_packets = 0u64;
    let mut consecutive_corrupt = 0usize;
    let mut stopped = false;
    let mut read_error = None;
    let max_segment_ms = options.max_segment_ms.max(options.segment_ms);
    let mut continuity = Continuity::new(&opened, time_base);
    // Where remuxing could not go on (no keyframe in time, a refused stream), and why.
    let mut reencode: Option<(u64, String)> = None;
    let next_seq;
    let mut packet = ffmpeg::Packet::empty();
    loop {
        match packet.read(&mut opened.context) {
            Ok(()) => {
                opened.touch();
                consecutive_corrupt = 0;
            }
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => {
                corrupt_packets += 1;
                consecutive_corrupt += 1;
                if consecutive_corrupt > options.max_consecutive_corrupt_packets {
                    read_error = Some(MediaError::InvalidData {
                        input: name.clone(),
                        reason: format!("{consecutive_corrupt} consecutive unreadable packets"),
                    });
                    break;
                }
                continue;
            }
            Err(error) => {
                read_error = Some(read_failure(&opened, error, last_end_ms));
                break;
            }
        }
        if packet.stream() != video_index {
            continue;
        }
        let Some(pts) = packet.pts().or(packet.dts()) else {
            continue;
        };
        let shift = continuity.shift(&packet);
        let pts = pts + shift;
        let origin = *origin_pts.get_or_insert(pts);
        let time_ms = (to_ms(pts, time_base) - to_ms(origin, time_base)).max(0) as u64;
        if !packet.is_key()
            && segmenter
                .current_start_ms()
                .is_some_and(|start| time_ms >= start + max_segment_ms)
        {
            reencode = Some((
                time_ms,
                format!(
                    "no keyframe for {} s (media.max_segment_secs)",
                    max_segment_ms / 1000
                ),
            ));
            break;
        }
        if let Some(finished) = segmenter.cut_if_due(packet.is_key(), time_ms, &cues)? {
            let go_on = sink(finished);
            // The sink's time (a slow publish, a blob upload) is not the input stalling.
            opened.touch();
            if !go_on {
                stopped = true;
                break;
            }
        }
        // Read before writing: the remux rescales the packet's timestamps and duration.
        let packet_duration = packet.duration().max(0);
        // The packet's own timestamps move by the same shift as its media time.
        match segmenter.write(&mut packet, time_ms, origin - shift) {
            Ok(true) => {
                let duration_ms = to_ms(packet_duration, time_base).max(0) as u64;
                last_end_ms = last_end_ms.max(time_ms + duration_ms);
            }
            Ok(false) => {}
            // The chunk container refuses the stream: re-encode instead.
            Err(error) if segmenter.remux_failed() => {
                reencode = Some((time_ms, error.to_string()));
                break;
            }
            Err(error) => return Err(error),
        }
    }
    let mut reencoded_from_ms = None;
    if let Some((at_ms, reason)) = reencode {
        let from_ms = segmenter.abandon_current().unwrap_or(at_ms);
        tracing::info!(input = %name, from_ms, %reason, "cutting the rest of the input by re-encoding");
        let done = crate::transcode::reencode_from(
            crate::transcode::Resume {
                source,
                open: &open,
                options,
                track: &track,
                origin_pts: origin_pts.unwrap_or(0),
                from_ms,
                first_seq: segmenter.next_seq(),
                chunk_prefix: chunk_prefix(&name),
                cues: &cues,
            },
            &mut sink,
        )?;
        reencoded_from_ms = Some(from_ms);
        last_end_ms = done.end_ms;
        stopped = done.stopped;
        corrupt_packets += done.corrupt_packets;
        next_seq = done.next_seq;
    } else if stopped {
        segmenter.discard_current();
        next_seq = segmenter.next_seq();
    } else {
        if let Some(finished) = segmenter.finish_current(last_end_ms, &cues, true)?
            && !sink(finished)
        {
            stopped = true;
        }
        next_seq = segmenter.next_seq();
    }
    if let Some(error) = read_error {
        return Err(error);
    }
    if next_seq == 0 {
        return Err(MediaError::InvalidData {
            input: name,
            reason: "no decodable video packets (no keyframe found)".into(),
        });
    }
    if !stopped {
        let expected_ms = if stream_duration > 0 {
            Some(to_ms(stream_duration, time_base).max(0) as u64)
        } else {
            info.duration_ms
        };
        if let Some(expected_ms) = expected_ms {
            let tolerance_ms = 2000u64.max(expected_ms / 20);
            if last_end_ms + tolerance_ms < expected_ms {
                return Err(MediaError::Truncated {
                    input: name,
                    reason: format!(
                        "video data ends at {} ms but the header promises {} ms",
                        last_end_ms, expected_ms
                    ),
                });
            }
        }
    }
    Ok(SegmentSummary {
        info,
        segments: next_seq,
        duration_ms: last_end_ms,
        subtitle_cues: cues.len(),
        corrupt_packets,
        stopped,
        reencoded_from_ms,
    })
}

/// Timestamps that restart or leap in formats that allow it (MPEG-TS recordings joined end to
/// end, a broadcast splice, a recorder restarted): the video's media time goes on from where
/// it was, as FFmpeg's CLI does — a jump back of more than 100 ms, or forward of more than
/// 10 s, becomes a shift of every later timestamp.
struct Continuity {
    enabled: bool,
    back: i64,
    forward: i64,
    /// Added to every timestamp from here on (time base units).
    shift: i64,
    /// The last decode time after the shift, and the step before it.
    last: Option<i64>,
    step: i64,
}

impl Continuity {
    fn new(opened: &OpenedInput, time_base: ffmpeg::Rational) -> Self {
        let per_second = if time_base.numerator() > 0 {
            i64::from(time_base.denominator()) / i64::from(time_base.numerator())
        } else {
            0
        };
        let format = opened.context.format();
        #[allow(unsafe_code)]
        // SAFETY: `format` borrows the input's AVInputFormat, a static table entry of libavformat
        // that outlives the context; `flags` is a plain integer field (ffmpeg-next has no getter).
        let flags = unsafe { (*format.as_ptr()).flags };
        Self {
            enabled: per_second > 0
                && ffmpeg::format::Flags::from_bits_truncate(flags)
                    .contains(ffmpeg::format::Flags::TS_DISCONT),
            back: per_second / 10,
            forward: per_second * 10,
            shift: 0,
            last: None,
            step: 0,
        }
    }

    /// The shift for `packet` (0 where timestamps are continuous).
    fn shift(&mut self, packet: &ffmpeg::Packet) -> i64 {
        let Some(dts) = packet.dts().or(packet.pts()).filter(|_| self.enabled) else {
            return self.shift;
        };
        let mut shifted = dts + self.shift;
        if let Some(last) = self.last {
            let step = if packet.duration() > 0 {
                packet.duration()
            } else {
                self.step.max(1)
            };
            let delta = shifted - (last + step);
            if delta < -self.back || delta > self.forward {
                self.shift -= delta;
                shifted -= delta;
                tracing::debug!(delta, "timestamp discontinuity: media time goes on");
            }
            if shifted > last {
                self.step = shifted - last;
            }
        }
        self.last = Some(shifted);
        self.shift
    }
}

pub(crate) fn create_spool_dir(spool_dir: &Path, name: &str) -> Result<(), MediaError> {
    std::fs::create_dir_all(spool_dir).map_err(|error| MediaError::Io {
        input: name.to_string(),
        reason: format!("cannot create spool dir {}: {error}", spool_dir.display()),
    })
}

/// The video stream chosen for segmenting, checked to be decodable and within the size limit.
#[derive(Clone)]
pub(crate) struct VideoTrack {
    pub info: MediaInfo,
    pub index: usize,
    pub time_base: ffmpeg::Rational,
    pub parameters: ffmpeg::codec::Parameters,
    pub start_time: i64,
    pub duration: i64,
    /// Clockwise degrees the frames are turned for display, kept in every chunk.
    pub rotation: u16,
}

impl VideoTrack {
    pub(crate) fn select(opened: &OpenedInput, max_pixels: u64) -> Result<Self, MediaError> {
        let name = opened.name.clone();
        let info = describe(&opened.context, &name);
        let video = info.video.clone().ok_or_else(|| MediaError::Unsupported {
            input: name.clone(),
            reason: "no video stream".into(),
        })?;
        let stream =
            opened
                .context
                .stream(video.stream_index)
                .ok_or_else(|| MediaError::InvalidData {
                    input: name.clone(),
                    reason: "video stream vanished".into(),
                })?;
        let (index, time_base, parameters, start_time, duration) = (
            stream.index(),
            stream.time_base(),
            stream.parameters(),
            stream.start_time(),
            stream.duration(),
        );
        if ffmpeg::decoder::find(parameters.id()).is_none() {
            return Err(MediaError::Unsupported {
                input: name,
                reason: format!("no decoder for video codec {}", video.codec),
            });
        }
        if video.width == 0 || video.height == 0 {
            return Err(MediaError::InvalidData {
                input: name,
                reason: "video stream has no frame size".into(),
            });
        }
        if u64::from(video.width) * u64::from(video.height) > max_pixels {
            return Err(MediaError::Unsupported {
                input: name,
                reason: format!(
                    "frame size {}x{} exceeds the limit of {} pixels",
                    video.width, video.height, max_pixels
                ),
            });
        }
        Ok(Self {
            rotation: video.rotation,
            info,
            index,
            time_base,
            parameters: without_codec_tag(&parameters),
            start_time,
            duration,
        })
    }
}

/// An owned copy of `parameters` with the container-specific codec tag cleared, as the ffmpeg
/// CLI does when remuxing: MPEG-TS stores its stream type there (0x1b for H.264), which the
/// Matroska muxer rejects as an incompatible tag ("Invalid data" at `write_header`); with tag 0
/// the muxer picks its own from the codec id.
fn without_codec_tag(parameters: &ffmpeg::codec::Parameters) -> ffmpeg::codec::Parameters {
    // An owned copy, so the input stream's own parameters stay untouched.
    let mut owned = parameters.clone();
    // ffmpeg-next has no setter for the tag.
    #[allow(unsafe_code)]
    // SAFETY: `owned` owns a valid, live AVCodecParameters (allocated by its `clone`) for
    // this whole scope; writing its plain integer `codec_tag` field cannot invalidate it.
    unsafe {
        (*owned.as_mut_ptr()).codec_tag = 0;
    }
    owned
}

/// Keyframe-aligned cutting of one video track into chunk files. The caller reads packets and
/// decides what time each one has (media ms for files, wall-clock ms for live sources).
pub(crate) struct Segmenter<'options> {
    options: &'options SegmentOptions,
    parameters: ffmpeg::codec::Parameters,
    time_base: ffmpeg::Rational,
    chunk_prefix: String,
    name: String,
    rotation: u16,
    current: Option<ChunkWriter>,
    next_seq: u64,
    /// The last [`write`](Self::write) failed in the chunk container (not reading the input).
    remux_failed: bool,
}

impl<'options> Segmenter<'options> {
    pub(crate) fn new(
        options: &'options SegmentOptions,
        track: &VideoTrack,
        chunk_prefix: String,
        first_seq: u64,
        name: String,
    ) -> Self {
        Self {
            options,
            parameters: track.parameters.clone(),
            time_base: track.time_base,
            chunk_prefix,
            name,
            rotation: track.rotation,
            current: None,
            next_seq: first_seq,
            remux_failed: false,
        }
    }

    /// The seq the next chunk will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Start of the chunk in progress, if any.
    pub(crate) fn current_start_ms(&self) -> Option<u64> {
        self.current.as_ref().map(|chunk| chunk.start_ms)
    }

    /// A keyframe at `time_ms` at least `segment_ms` after the chunk in progress began closes
    /// that chunk (the keyframe itself starts the next one, in [`Segmenter::write`]).
    pub(crate) fn cut_if_due(
        &mut self,
        is_key: bool,
        time_ms: u64,
        cues: &[SubtitleCue],
    ) -> Result<Option<SegmentChunk>, MediaError> {
        let due = is_key
            && self
                .current
                .as_ref()
                .is_some_and(|chunk| time_ms >= chunk.start_ms + self.options.segment_ms);
        if !due {
            return Ok(None);
        }
        self.finish_current(time_ms, cues, false)
    }

    /// Write one packet, opening a chunk at a keyframe when none is in progress. Returns
    /// whether the packet was written: packets before the first keyframe cannot be decoded on
    /// their own and are dropped.
    pub(crate) fn write(
        &mut self,
        packet: &mut ffmpeg::Packet,
        time_ms: u64,
        origin_pts: i64,
    ) -> Result<bool, MediaError> {
        if self.current.is_none() {
            if !packet.is_key() {
                return Ok(false);
            }
            let seq = self.next_seq;
            let path = self
                .options
                .spool_dir
                .join(format!("{}-{seq:06}.mkv", self.chunk_prefix));
            let created = ChunkWriter::create(
                &path,
                seq,
                time_ms,
                &self.parameters,
                self.time_base,
                self.rotation,
                &self.name,
            );
            self.remux_failed = created.is_err();
            self.current = Some(created?);
            self.next_seq += 1;
        }
        let Some(chunk) = self.current.as_mut() else {
            return Ok(false);
        };
        let written = chunk.write(packet, origin_pts, self.time_base, &self.name);
        self.remux_failed = written.is_err();
        written.map(|()| true)
    }

    /// Whether the last [`write`](Self::write) failed in the chunk container.
    pub(crate) fn remux_failed(&self) -> bool {
        self.remux_failed
    }

    /// Drop the chunk in progress and its file, and give its seq to the next chunk; its
    /// start, if there was one.
    pub(crate) fn abandon_current(&mut self) -> Option<u64> {
        let chunk = self.current.take()?;
        let start_ms = chunk.start_ms;
        self.next_seq = chunk.seq;
        chunk.discard();
        Some(start_ms)
    }

    /// Close the chunk in progress with its packets so far; its range ends at `end_ms` (at
    /// least 1 ms after its start).
    pub(crate) fn finish_current(
        &mut self,
        end_ms: u64,
        cues: &[SubtitleCue],
        is_last: bool,
    ) -> Result<Option<SegmentChunk>, MediaError> {
        let Some(chunk) = self.current.take() else {
            return Ok(None);
        };
        let end_ms = end_ms.max(chunk.start_ms + 1);
        chunk.finish(end_ms, cues, is_last, &self.name).map(Some)
    }

    /// Drop the chunk in progress and its file.
    pub(crate) fn discard_current(&mut self) {
        if let Some(chunk) = self.current.take() {
            chunk.discard();
        }
    }
}

fn read_failure(opened: &OpenedInput, error: ffmpeg::Error, last_end_ms: u64) -> MediaError {
    match error {
        ffmpeg::Error::Exit => MediaError::Io {
            input: opened.name.clone(),
            reason: format!("stalled after {last_end_ms} ms of media, aborted"),
        },
        other => MediaError::Truncated {
            input: opened.name.clone(),
            reason: format!("read failed after {last_end_ms} ms of media: {other}"),
        },
    }
}

/// A short, file-name-safe, collision-resistant prefix for the chunks of one input.
pub(crate) fn chunk_prefix(name: &str) -> String {
    // FNV-1a: stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub(crate) struct ChunkWriter {
    output: ffmpeg::format::context::Output,
    path: PathBuf,
    pub(crate) seq: u64,
    pub(crate) start_ms: u64,
    output_time_base: ffmpeg::Rational,
    packets: u64,
}

impl ChunkWriter {
    pub(crate) fn create(
        path: &Path,
        seq: u64,
        start_ms: u64,
        parameters: &ffmpeg::codec::Parameters,
        input_time_base: ffmpeg::Rational,
        rotation: u16,
        input: &str,
    ) -> Result<Self, MediaError> {
        let io_error = |stage: &str, error: ffmpeg::Error| MediaError::Io {
            input: input.to_string(),
            reason: format!("writing segment {seq} ({stage}): {error}"),
        };
        let mut output = ffmpeg::format::output_as(path, "matroska")
            .map_err(|error| io_error("create", error))?;
        {
            let mut stream = output
                .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
                .map_err(|error| io_error("add stream", error))?;
            stream.set_parameters(parameters.clone());
            stream.set_time_base(input_time_base);
            if rotation != 0 {
                let mut tags = ffmpeg::Dictionary::new();
                tags.set(crate::orient::ROTATION_TAG, &rotation.to_string());
                stream.set_metadata(tags);
            }
        }
        output
            .write_header()
            .map_err(|error| io_error("header", error))?;
        let output_time_base = output
            .stream(0)
            .map(|stream| stream.time_base())
            .unwrap_or(input_time_base);
        Ok(Self {
            output,
            path: path.to_path_buf(),
            seq,
            start_ms,
            output_time_base,
            packets: 0,
        })
    }

    pub(crate) fn write(
        &mut self,
        packet: &mut ffmpeg::Packet,
        origin_pts: i64,
        input_time_base: ffmpeg::Rational,
        input: &str,
    ) -> Result<(), MediaError> {
        // A packet still without a presentation time is shown when it is decoded.
        let pts = packet.pts().or(packet.dts());
        packet.set_pts(pts.map(|pts| pts - origin_pts));
        packet.set_dts(packet.dts().map(|dts| dts - origin_pts));
        packet.rescale_ts(input_time_base, self.output_time_base);
        packet.set_stream(0);
        packet.set_position(-1);
        packet
            .write_interleaved(&mut self.output)
            .map_err(|error| MediaError::InvalidData {
                input: input.to_string(),
                reason: format!("cannot remux packet into segment {}: {error}", self.seq),
            })?;
        self.packets += 1;
        Ok(())
    }

    pub(crate) fn finish(
        mut self,
        end_ms: u64,
        cues: &[SubtitleCue],
        is_last: bool,
        input: &str,
    ) -> Result<SegmentChunk, MediaError> {
        self.output
            .write_trailer()
            .map_err(|error| MediaError::Io {
                input: input.to_string(),
                reason: format!("finishing segment {}: {error}", self.seq),
            })?;
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let range = TimeRange::new(self.start_ms, end_ms);
        Ok(SegmentChunk {
            seq: self.seq,
            range,
            subtitles: cues_for_segment(cues, range, self.seq == 0, is_last),
            path: self.path,
            bytes,
            packets: self.packets,
        })
    }

    pub(crate) fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}
