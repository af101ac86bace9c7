//! Cutting by re-encoding, where remuxing cannot cut: an input whose keyframes are further
//! apart than `max_segment_ms` (an animated GIF, a stream with one keyframe, intra-refresh
//! video), or a stream the chunk container refuses to hold. From the start of the segment that
//! could not be cut or remuxed, the video is decoded and encoded again (H.264 when FFmpeg has
//! libx264, else MPEG-4 part 2) with a fresh encoder per segment, so that every segment starts
//! on a keyframe and lasts `segment_ms`. Frames stream through one at a time: nothing is held
//! beyond the frame being encoded and the chunk file being written.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::software::scaling;
use vidx_core::{MediaError, SubtitleCue};

use crate::input::{OpenSettings, open_input_with, to_ms};
use crate::segment::{ChunkWriter, SegmentChunk, SegmentOptions, VideoTrack};
use crate::source::InputSource;

/// Where re-encoding starts, and what it continues.
pub(crate) struct Resume<'a> {
    pub source: &'a InputSource,
    pub open: &'a OpenSettings,
    pub options: &'a SegmentOptions,
    pub track: &'a VideoTrack,
    /// The timestamp (in the track's time base) that is media time 0.
    pub origin_pts: i64,
    /// Media time of the first frame to re-encode: the start of the segment not cut.
    pub from_ms: u64,
    pub first_seq: u64,
    pub chunk_prefix: String,
    pub cues: &'a [SubtitleCue],
}

/// What re-encoding the rest of an input produced.
pub(crate) struct Reencoded {
    pub next_seq: u64,
    pub end_ms: u64,
    pub stopped: bool,
    pub corrupt_packets: u64,
}

/// Chunk timestamps are milliseconds of media time.
const MS: ffmpeg::Rational = ffmpeg::Rational(1, 1000);

/// Re-encode `resume.source` from `resume.from_ms` to its end, handing each chunk to `sink`
/// as it is finished (`false` stops).
pub(crate) fn reencode_from(
    resume: Resume<'_>,
    sink: &mut dyn FnMut(SegmentChunk) -> bool,
) -> Result<Reencoded, MediaError> {
    let mut opened = open_input_with(resume.source, resume.open)?;
    let name = opened.name.clone();
    let time_base = resume.track.time_base;
    let origin_ms = to_ms(resume.origin_pts, time_base);
    if resume.from_ms > 0 {
        // To the keyframe at or before the segment's start (in AV_TIME_BASE, microseconds);
        // frames before it are decoded and dropped if the seek lands earlier, or everything is
        // when the input cannot seek.
        let target = (origin_ms + resume.from_ms as i64).saturating_mul(1000);
        if let Err(error) = opened.context.seek(target, ..target.saturating_add(1)) {
            tracing::debug!(input = %name, %error, "seek failed; decoding from the start");
        }
    }
    let parameters = opened
        .context
        .stream(resume.track.index)
        .map(|stream| stream.parameters())
        .ok_or_else(|| MediaError::InvalidData {
            input: name.clone(),
            reason: "video stream vanished on reopening".into(),
        })?;
    let rate = opened
        .context
        .stream(resume.track.index)
        .map(|stream| stream.avg_frame_rate())
        .filter(|rate| rate.numerator() > 0 && rate.denominator() > 0);
    let mut decoder = ffmpeg::codec::Context::from_parameters(parameters)
        .and_then(|context| context.decoder().video())
        .map_err(|error| MediaError::Unsupported {
            input: name.clone(),
            reason: format!("cannot open video decoder to re-encode: {error}"),
        })?;

    let mut state = Cutter {
        resume: &resume,
        sink,
        name: name.clone(),
        rate,
        current: None,
        scaler: None,
        next_seq: resume.first_seq,
        last_ms: None,
        interval_ms: 0,
        stopped: false,
    };
    let mut corrupt_packets = 0u64;
    let mut consecutive_corrupt = 0usize;
    let mut packet = ffmpeg::Packet::empty();
    let mut frame = ffmpeg::frame::Video::empty();
    'read: loop {
        match packet.read(&mut opened.context) {
            Ok(()) => {
                opened.touch();
                consecutive_corrupt = 0;
            }
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => {
                corrupt_packets += 1;
                consecutive_corrupt += 1;
                if consecutive_corrupt > resume.options.max_consecutive_corrupt_packets {
                    return Err(MediaError::InvalidData {
                        input: name,
                        reason: format!("{consecutive_corrupt} consecutive unreadable packets"),
                    });
                }
                continue;
            }
            Err(error) => {
                return Err(MediaError::Truncated {
                    input: name,
                    reason: format!("read failed while re-encoding: {error}"),
                });
            }
        }
        if packet.stream() != resume.track.index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut frame).is_ok() {
            let go_on = state.offer(&frame, time_base, origin_ms)?;
            opened.touch();
            if !go_on {
                break 'read;
            }
        }
    }
    if !state.stopped {
        let _ = decoder.send_eof();
        while decoder.receive_frame(&mut frame).is_ok() {
            if !state.offer(&frame, time_base, origin_ms)? {
                break;
            }
        }
    }
    let end_ms = state.finish()?;
    Ok(Reencoded {
        next_seq: state.next_seq,
        end_ms,
        stopped: state.stopped,
        corrupt_packets,
    })
}

/// The segment being encoded.
struct Current {
    writer: ChunkWriter,
    encoder: ffmpeg::encoder::Video,
    size: (u32, u32),
}

type Scaler = (ffmpeg::format::Pixel, u32, u32, scaling::Context);

struct Cutter<'r, 'a, 's> {
    resume: &'r Resume<'a>,
    sink: &'s mut dyn FnMut(SegmentChunk) -> bool,
    name: String,
    rate: Option<ffmpeg::Rational>,
    current: Option<Current>,
    scaler: Option<Scaler>,
    next_seq: u64,
    /// Media time of the last frame encoded, and the gap before it (the last frame is taken
    /// to last as long).
    last_ms: Option<u64>,
    interval_ms: u64,
    stopped: bool,
}

impl Cutter<'_, '_, '_> {
    /// Encode one decoded frame, cutting before it when its segment is complete; `false`
    /// when the sink asked to stop.
    fn offer(
        &mut self,
        frame: &ffmpeg::frame::Video,
        time_base: ffmpeg::Rational,
        origin_ms: i64,
    ) -> Result<bool, MediaError> {
        if self.stopped {
            return Ok(false);
        }
        let Some(timestamp) = frame.timestamp().or(frame.pts()) else {
            return Ok(true);
        };
        let time_ms = (to_ms(timestamp, time_base) - origin_ms).max(0) as u64;
        // Before the segment that could not be cut (the seek landed earlier), or a repeated
        // timestamp (frames must move forward in a chunk): dropped.
        if time_ms < self.resume.from_ms || self.last_ms.is_some_and(|last| time_ms <= last) {
            return Ok(true);
        }
        let segment_ms = self.resume.options.segment_ms;
        if self
            .current
            .as_ref()
            .is_some_and(|current| time_ms >= current.writer.start_ms + segment_ms)
            && let Some(chunk) = self.close(time_ms, false)?
            && !(self.sink)(chunk)
        {
            self.stopped = true;
            return Ok(false);
        }
        if self.current.is_none() {
            self.open(frame, time_ms)?;
        }
        let Some(current) = self.current.as_mut() else {
            return Ok(true);
        };
        let mut yuv = convert(&mut self.scaler, frame, current.size, &self.name)?;
        yuv.set_pts(Some(time_ms as i64));
        current
            .encoder
            .send_frame(&yuv)
            .map_err(|error| encode_error(&self.name, current.writer.seq, error))?;
        drain(current, &self.name)?;
        if let Some(last) = self.last_ms {
            self.interval_ms = time_ms - last;
        }
        self.last_ms = Some(time_ms);
        Ok(true)
    }

    /// Start a segment at `time_ms` with a new encoder (its first frame is a keyframe).
    fn open(&mut self, frame: &ffmpeg::frame::Video, time_ms: u64) -> Result<(), MediaError> {
        // 4:2:0 needs even sides.
        let size = ((frame.width() & !1).max(2), (frame.height() & !1).max(2));
        let encoder = open_encoder(size, self.rate).map_err(|reason| MediaError::Unsupported {
            input: self.name.clone(),
            reason: format!("cannot re-encode: {reason}"),
        })?;
        let seq = self.next_seq;
        let path = self
            .resume
            .options
            .spool_dir
            .join(format!("{}-{seq:06}.mkv", self.resume.chunk_prefix));
        let writer = ChunkWriter::create(
            &path,
            seq,
            time_ms,
            &ffmpeg::codec::Parameters::from(&encoder),
            MS,
            self.resume.track.rotation,
            &self.name,
        )?;
        self.next_seq += 1;
        self.current = Some(Current {
            writer,
            encoder,
            size,
        });
        Ok(())
    }

    /// Flush the segment in progress and finish its chunk, ending at `end_ms` (the last one
    /// of the input also takes the cues after it).
    fn close(&mut self, end_ms: u64, is_last: bool) -> Result<Option<SegmentChunk>, MediaError> {
        let Some(mut current) = self.current.take() else {
            return Ok(None);
        };
        let seq = current.writer.seq;
        current
            .encoder
            .send_eof()
            .map_err(|error| encode_error(&self.name, seq, error))?;
        drain(&mut current, &self.name)?;
        let end_ms = end_ms.max(current.writer.start_ms + 1);
        current
            .writer
            .finish(end_ms, self.resume.cues, is_last, &self.name)
            .map(Some)
    }

    /// Close the last segment; the media time the re-encoded video ends at.
    fn finish(&mut self) -> Result<u64, MediaError> {
        let end_ms = self
            .last_ms
            .map_or(self.resume.from_ms, |last| last + self.interval_ms.max(1));
        if self.stopped {
            if let Some(current) = self.current.take() {
                current.writer.discard();
            }
            return Ok(end_ms);
        }
        if let Some(chunk) = self.close(end_ms, true)?
            && !(self.sink)(chunk)
        {
            self.stopped = true;
        }
        Ok(end_ms)
    }
}

/// Write every packet the encoder has ready into the chunk.
fn drain(current: &mut Current, name: &str) -> Result<(), MediaError> {
    let mut packet = ffmpeg::Packet::empty();
    while current.encoder.receive_packet(&mut packet).is_ok() {
        current.writer.write(&mut packet, 0, MS, name)?;
    }
    Ok(())
}

fn encode_error(name: &str, seq: u64, error: ffmpeg::Error) -> MediaError {
    MediaError::Io {
        input: name.to_string(),
        reason: format!("re-encoding segment {seq}: {error}"),
    }
}

/// `frame` as 4:2:0 of `size`, the encoder's input.
fn convert(
    scaler: &mut Option<Scaler>,
    frame: &ffmpeg::frame::Video,
    size: (u32, u32),
    name: &str,
) -> Result<ffmpeg::frame::Video, MediaError> {
    let (format, width, height) = (frame.format(), frame.width(), frame.height());
    let stale = scaler
        .as_ref()
        .is_none_or(|(f, w, h, _)| *f != format || *w != width || *h != height);
    if stale {
        let context = scaling::Context::get(
            format,
            width,
            height,
            ffmpeg::format::Pixel::YUV420P,
            size.0,
            size.1,
            scaling::Flags::BILINEAR,
        )
        .map_err(|error| MediaError::Unsupported {
            input: name.to_string(),
            reason: format!("cannot convert {format:?} {width}x{height} to re-encode: {error}"),
        })?;
        *scaler = Some((format, width, height, context));
    }
    let Some((_, _, _, context)) = scaler.as_mut() else {
        return Err(MediaError::InvalidData {
            input: name.to_string(),
            reason: "scaler missing".into(),
        });
    };
    let mut converted = ffmpeg::frame::Video::empty();
    context
        .run(frame, &mut converted)
        .map_err(|error| MediaError::InvalidData {
            input: name.to_string(),
            reason: format!("frame conversion failed: {error}"),
        })?;
    Ok(converted)
}

/// An H.264 encoder (libx264, `veryfast`, CRF 23, no B-frames) or, without libx264, MPEG-4
/// part 2 — for 4:2:0 frames of `size` timed in milliseconds.
fn open_encoder(
    size: (u32, u32),
    rate: Option<ffmpeg::Rational>,
) -> Result<ffmpeg::encoder::Video, String> {
    let x264 = ffmpeg::encoder::find_by_name("libx264");
    let codec = x264
        .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::MPEG4))
        .ok_or("FFmpeg has neither a libx264 nor an MPEG-4 encoder")?;
    let mut context = ffmpeg::codec::context::Context::new_with_codec(codec);
    // Matroska keeps the codec's headers once, in the track.
    context.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
    let mut video = context
        .encoder()
        .video()
        .map_err(|error| error.to_string())?;
    video.set_width(size.0);
    video.set_height(size.1);
    video.set_format(ffmpeg::format::Pixel::YUV420P);
    video.set_time_base(MS);
    video.set_frame_rate(rate);
    video.set_max_b_frames(0);
    let mut options = ffmpeg::Dictionary::new();
    if x264.is_some() {
        options.set("preset", "veryfast");
        options.set("crf", "23");
    } else {
        video.set_bit_rate(4_000_000);
    }
    video
        .open_with(options)
        .map_err(|error| format!("opening the {} encoder: {error}", codec.name()))
}

/// A clip of `source` from `start_ms` to `end_ms` (media time) re-encoded to H.264 in MP4
/// (`faststart`), starting at the first frame at or after `start_ms`; no audio.
pub(crate) fn reencode_clip(
    source: &InputSource,
    open: &OpenSettings,
    start_ms: u64,
    end_ms: u64,
    output: &std::path::Path,
) -> Result<crate::Clip, MediaError> {
    let mut opened = open_input_with(source, open)?;
    let name = opened.name.clone();
    let track = VideoTrack::select(&opened, u64::MAX)?;
    crate::clip::seek_to(&mut opened.context, &track, start_ms);
    let parameters = opened
        .context
        .stream(track.index)
        .map(|stream| stream.parameters())
        .ok_or_else(|| MediaError::InvalidData {
            input: name.clone(),
            reason: "video stream vanished".into(),
        })?;
    let mut decoder = ffmpeg::codec::Context::from_parameters(parameters)
        .and_then(|context| context.decoder().video())
        .map_err(|error| MediaError::Unsupported {
            input: name.clone(),
            reason: format!("cannot open video decoder for a clip: {error}"),
        })?;
    let mp4 = ffmpeg::format::output_as(output, "mp4").map_err(|error| MediaError::Io {
        input: name.clone(),
        reason: format!("writing the clip: {error}"),
    })?;
    let mut clip = ClipEncoder {
        name: name.clone(),
        mp4,
        encoder: None,
        scaler: None,
        time_base: track.time_base,
        origin_ms: to_ms(crate::clip::origin_pts(&track), track.time_base),
        start_ms,
        end_ms,
        first_ms: None,
        last_ms: None,
        interval_ms: 0,
    };
    let mut packet = ffmpeg::Packet::empty();
    let mut frame = ffmpeg::frame::Video::empty();
    let mut done = false;
    while !done {
        match packet.read(&mut opened.context) {
            Ok(()) => opened.touch(),
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => continue,
            Err(error) => {
                return Err(MediaError::Truncated {
                    input: name,
                    reason: format!("read failed while cutting a clip: {error}"),
                });
            }
        }
        if packet.stream() != track.index || decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut frame).is_ok() {
            if !clip.offer(&frame)? {
                done = true;
                break;
            }
        }
    }
    if !done {
        let _ = decoder.send_eof();
        while decoder.receive_frame(&mut frame).is_ok() {
            if !clip.offer(&frame)? {
                break;
            }
        }
    }
    clip.finish()
}

/// The encoder and MP4 of [`reencode_clip`].
struct ClipEncoder {
    name: String,
    mp4: ffmpeg::format::context::Output,
    /// Opened at the first frame kept (its size is the clip's), with the stream's time base.
    encoder: Option<(ffmpeg::encoder::Video, (u32, u32), ffmpeg::Rational)>,
    scaler: Option<Scaler>,
    time_base: ffmpeg::Rational,
    origin_ms: i64,
    start_ms: u64,
    end_ms: u64,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    /// The gap before the last frame (the last frame is taken to last as long).
    interval_ms: u64,
}

impl ClipEncoder {
    fn io_error(&self, stage: &str, error: ffmpeg::Error) -> MediaError {
        MediaError::Io {
            input: self.name.clone(),
            reason: format!("writing the clip ({stage}): {error}"),
        }
    }

    /// Encode one decoded frame; `false` once past the end.
    fn offer(&mut self, frame: &ffmpeg::frame::Video) -> Result<bool, MediaError> {
        let Some(timestamp) = frame.timestamp().or(frame.pts()) else {
            return Ok(true);
        };
        let time_ms = (to_ms(timestamp, self.time_base) - self.origin_ms).max(0) as u64;
        if time_ms >= self.end_ms {
            return Ok(false);
        }
        if time_ms < self.start_ms || self.last_ms.is_some_and(|last| time_ms <= last) {
            return Ok(true);
        }
        if self.encoder.is_none() {
            let size = ((frame.width() & !1).max(2), (frame.height() & !1).max(2));
            let opened = open_encoder(size, None).map_err(|reason| MediaError::Unsupported {
                input: self.name.clone(),
                reason: format!("cannot re-encode a clip: {reason}"),
            })?;
            let added = self
                .mp4
                .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
                .map(|mut stream| {
                    stream.set_parameters(ffmpeg::codec::Parameters::from(&opened));
                    stream.set_time_base(MS);
                });
            added.map_err(|error| self.io_error("video stream", error))?;
            let mut options = ffmpeg::Dictionary::new();
            options.set("movflags", "+faststart");
            let header = self.mp4.write_header_with(options).map(|_| ());
            header.map_err(|error| self.io_error("header", error))?;
            let out = self
                .mp4
                .stream(0)
                .map(|stream| stream.time_base())
                .unwrap_or(MS);
            self.encoder = Some((opened, size, out));
            self.first_ms = Some(time_ms);
        }
        let first_ms = self.first_ms.unwrap_or(time_ms);
        let Some((encoder, size, _)) = self.encoder.as_mut() else {
            return Ok(true);
        };
        let size = *size;
        let mut yuv = convert(&mut self.scaler, frame, size, &self.name)?;
        yuv.set_pts(Some((time_ms - first_ms) as i64));
        encoder
            .send_frame(&yuv)
            .map_err(|error| encode_error(&self.name, 0, error))?;
        if let Some(last) = self.last_ms {
            self.interval_ms = time_ms - last;
        }
        self.last_ms = Some(time_ms);
        self.write_ready()?;
        Ok(true)
    }

    fn write_ready(&mut self) -> Result<(), MediaError> {
        let Some((encoder, _, out)) = self.encoder.as_mut() else {
            return Ok(());
        };
        let mut encoded = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut encoded).is_ok() {
            encoded.rescale_ts(MS, *out);
            encoded.set_stream(0);
            encoded
                .write_interleaved(&mut self.mp4)
                .map_err(|error| MediaError::Io {
                    input: self.name.clone(),
                    reason: format!("writing the clip: {error}"),
                })?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<crate::Clip, MediaError> {
        let (Some(first_ms), Some((encoder, _, _))) = (self.first_ms, self.encoder.as_mut()) else {
            return Err(MediaError::InvalidData {
                input: self.name,
                reason: format!(
                    "no frame between {} and {} ms to make a clip of",
                    self.start_ms, self.end_ms
                ),
            });
        };
        encoder
            .send_eof()
            .map_err(|error| encode_error(&self.name, 0, error))?;
        self.write_ready()?;
        let trailer = self.mp4.write_trailer();
        trailer.map_err(|error| self.io_error("trailer", error))?;
        Ok(crate::Clip {
            start_ms: first_ms,
            end_ms: self.last_ms.unwrap_or(first_ms) + self.interval_ms.max(1),
            reencoded: true,
        })
    }
}
