//! Decoding a chunk and sampling frames uniformly over its time range, converted to packed
//! RGB at the model's input size.

use std::path::Path;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::media::Type as MediaType;
use ffmpeg_next::software::scaling;

use vidx_core::ports::{FrameSampler, SharedBytes};
use vidx_core::{Frame, MediaError, TimeRange};

use crate::input::{open_input, to_ms};
use crate::source::InputSource;

/// The sample times, as offsets from the start of a segment of `duration_ms`: the centres of
/// `count` equal bins.
pub fn uniform_targets_ms(duration_ms: u64, count: usize) -> Vec<u64> {
    let count_u64 = count as u64;
    (0..count_u64)
        .map(|index| (2 * index + 1) * duration_ms / (2 * count_u64.max(1)))
        .collect()
}

/// The ffmpeg implementation of the [`FrameSampler`] port.
#[derive(Debug, Clone)]
pub struct FfmpegFrameSampler {
    /// Frames are decoded as shown (pixel aspect and turn applied) at the smallest size that
    /// covers `frame_size` on both sides, or the source's own when smaller
    /// ([`decode_size`]); the models resize them as their references do.
    pub frame_size: u32,
    /// Decoder threads; 0 lets FFmpeg choose (as its CLI does).
    pub decoder_threads: usize,
    /// Largest frame (width × height) the decoder may produce, whatever the stream declares:
    /// the decoder refuses a larger one before allocating it (`media.max_pixels`).
    pub max_pixels: u64,
}

impl FfmpegFrameSampler {
    pub fn new(frame_size: u32) -> Self {
        Self {
            frame_size,
            decoder_threads: 0,
            max_pixels: 8192 * 8192,
        }
    }

    /// [`new`](Self::new) with a decoded-frame size limit.
    pub fn with_max_pixels(frame_size: u32, max_pixels: u64) -> Self {
        Self {
            max_pixels,
            ..Self::new(frame_size)
        }
    }
}

/// Segment bytes in memory as FFmpeg's custom I/O reads them (a read and a seek callback
/// over the shared buffer: no copy, no file).
struct SharedReader(SharedBytes);

impl AsRef<[u8]> for SharedReader {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl FrameSampler for FfmpegFrameSampler {
    fn sample(
        &self,
        media_path: &Path,
        range: TimeRange,
        count: usize,
    ) -> Result<Vec<Frame>, MediaError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut opened = open_input(&InputSource::File(media_path.to_path_buf()))?;
        let name = opened.name.clone();
        let watchdog = opened.toucher();
        self.sample_input(&mut opened.context, name, &watchdog, range, count)
    }

    fn sample_bytes(
        &self,
        media: SharedBytes,
        range: TimeRange,
        count: usize,
    ) -> Result<Vec<Frame>, MediaError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        crate::init();
        let name = format!("inline segment at {} ms", range.start_ms);
        if (*media).as_ref().is_empty() {
            return Err(MediaError::Empty { input: name });
        }
        let io = ffmpeg::format::context::StreamIo::from_read_seek(std::io::Cursor::new(
            SharedReader(media),
        ))
        .map_err(|error| MediaError::Io {
            input: name.clone(),
            reason: format!("custom I/O: {error}"),
        })?;
        let mut context = ffmpeg::format::input_from_stream(io, None, None)
            .map_err(|error| crate::input::map_open_error(&name, error, Duration::ZERO))?;
        self.sample_input(&mut context, name, &|| {}, range, count)
    }
}

impl FfmpegFrameSampler {
    /// Decode the video of an opened input and pick `count` frames over `range`; `touch`
    /// tells a stall watchdog about progress.
    fn sample_input(
        &self,
        input: &mut ffmpeg::format::context::Input,
        name: String,
        touch: &dyn Fn(),
        range: TimeRange,
        count: usize,
    ) -> Result<Vec<Frame>, MediaError> {
        let (stream_index, time_base, parameters, rotation) =
            {
                let stream = input.streams().best(MediaType::Video).ok_or_else(|| {
                    MediaError::Unsupported {
                        input: name.clone(),
                        reason: "no video stream".into(),
                    }
                })?;
                (
                    stream.index(),
                    stream.time_base(),
                    stream.parameters(),
                    crate::orient::stream_rotation(&stream),
                )
            };
        let mut context = ffmpeg::codec::Context::from_parameters(parameters).map_err(|error| {
            MediaError::Unsupported {
                input: name.clone(),
                reason: format!("decoder parameters: {error}"),
            }
        })?;
        context.set_threading(ffmpeg::codec::threading::Config {
            kind: ffmpeg::codec::threading::Type::Frame,
            count: self.decoder_threads,
            ..Default::default()
        });
        let max_pixels = i64::try_from(self.max_pixels).unwrap_or(i64::MAX);
        #[allow(unsafe_code)]
        // SAFETY: `context` owns a valid, not yet opened AVCodecContext; `max_pixels` is a
        // plain field the decoder reads when it allocates each frame (av_image_check_size2).
        unsafe {
            (*context.as_mut_ptr()).max_pixels = max_pixels;
        }
        let mut decoder = context
            .decoder()
            .video()
            .map_err(|error| MediaError::Unsupported {
                input: name.clone(),
                reason: format!("cannot open video decoder: {error}"),
            })?;

        let targets = uniform_targets_ms(range.duration_ms(), count);
        let mut selector = Selector::new(targets, range.start_ms, self.frame_size, name.clone());
        selector.rotation = rotation;
        let mut packet = ffmpeg::Packet::empty();
        let mut decode_errors = 0usize;
        'demux: loop {
            match packet.read(input) {
                Ok(()) => touch(),
                Err(ffmpeg::Error::Eof) => break,
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(error) => {
                    return Err(MediaError::Io {
                        input: name,
                        reason: format!("reading segment: {error}"),
                    });
                }
            }
            if packet.stream() != stream_index {
                continue;
            }
            if decoder.send_packet(&packet).is_err() {
                // A frame larger than allowed (the stream grew past what it declared) is
                // refused by the decoder before it is allocated: say so, not "undecodable".
                let pixels = u64::from(decoder.width()) * u64::from(decoder.height());
                if pixels > self.max_pixels {
                    return Err(MediaError::Unsupported {
                        input: name,
                        reason: format!(
                            "decoded frames are {}x{}, more than the {} pixels allowed \
                             (media.max_pixels)",
                            decoder.width(),
                            decoder.height(),
                            self.max_pixels
                        ),
                    });
                }
                decode_errors += 1;
                continue;
            }
            let mut decoded = ffmpeg::frame::Video::empty();
            while decoder.receive_frame(&mut decoded).is_ok() {
                if selector.offer(decoded, time_base)? {
                    break 'demux;
                }
                decoded = ffmpeg::frame::Video::empty();
            }
        }
        if !selector.is_done() {
            let _ = decoder.send_eof();
            let mut decoded = ffmpeg::frame::Video::empty();
            while decoder.receive_frame(&mut decoded).is_ok() {
                if selector.offer(decoded, time_base)? {
                    break;
                }
                decoded = ffmpeg::frame::Video::empty();
            }
        }
        let frames = selector.finish()?;
        if decode_errors > 0 {
            tracing::debug!(input = %name, decode_errors, "skipped undecodable packets");
        }
        Ok(frames)
    }
}

/// Picks, for each target time, the frame on screen at that time (the last frame whose
/// presentation time is at or before it), converting only the frames it keeps.
struct Selector {
    targets_ms: Vec<u64>,
    next_target: usize,
    segment_start_ms: u64,
    frame_size: u32,
    /// Clockwise degrees the frames are turned for display.
    rotation: u16,
    input: String,
    first_timestamp: Option<i64>,
    previous: Option<(u64, ffmpeg::frame::Video)>,
    scaler: Option<(ffmpeg::format::Pixel, u32, u32, scaling::Context)>,
    frames: Vec<Frame>,
}

impl Selector {
    fn new(targets_ms: Vec<u64>, segment_start_ms: u64, frame_size: u32, input: String) -> Self {
        Self {
            frames: Vec::with_capacity(targets_ms.len()),
            targets_ms,
            next_target: 0,
            segment_start_ms,
            frame_size,
            rotation: 0,
            input,
            first_timestamp: None,
            previous: None,
            scaler: None,
        }
    }

    fn is_done(&self) -> bool {
        self.next_target >= self.targets_ms.len()
    }

    /// Offer the next decoded frame; returns whether every target is served.
    fn offer(
        &mut self,
        frame: ffmpeg::frame::Video,
        time_base: ffmpeg::Rational,
    ) -> Result<bool, MediaError> {
        let Some(timestamp) = frame.timestamp().or(frame.pts()) else {
            return Ok(self.is_done());
        };
        // Chunk timestamps may be shifted by the muxer; offsets from the first frame are not.
        let first = *self.first_timestamp.get_or_insert(timestamp);
        let offset_ms = (to_ms(timestamp, time_base) - to_ms(first, time_base)).max(0) as u64;
        while self.next_target < self.targets_ms.len()
            && self.targets_ms[self.next_target] < offset_ms
        {
            let Some((previous_offset_ms, _)) = self.previous.as_ref() else {
                break;
            };
            let previous_offset_ms = *previous_offset_ms;
            self.emit_previous(previous_offset_ms)?;
        }
        // Targets before the very first frame are served by the first frame.
        if self.previous.is_none() {
            while self.next_target < self.targets_ms.len()
                && self.targets_ms[self.next_target] < offset_ms
            {
                let converted = self.convert(&frame, offset_ms)?;
                self.frames.push(converted);
                self.next_target += 1;
            }
        }
        self.previous = Some((offset_ms, frame));
        Ok(self.is_done())
    }

    fn emit_previous(&mut self, previous_offset_ms: u64) -> Result<(), MediaError> {
        let converted = match self.frames.last() {
            // The same source frame serves consecutive targets: convert it once.
            Some(last) if last.pts_ms == self.segment_start_ms + previous_offset_ms => last.clone(),
            _ => {
                let Some((_, previous)) = self.previous.take() else {
                    return Ok(());
                };
                let converted = self.convert(&previous, previous_offset_ms);
                self.previous = Some((previous_offset_ms, previous));
                converted?
            }
        };
        self.frames.push(converted);
        self.next_target += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Frame>, MediaError> {
        let Some((previous_offset_ms, _)) = self.previous.as_ref() else {
            return Err(MediaError::InvalidData {
                input: self.input,
                reason: "no decodable frames in segment".into(),
            });
        };
        let previous_offset_ms = *previous_offset_ms;
        while !self.is_done() {
            self.emit_previous(previous_offset_ms)?;
        }
        Ok(self.frames)
    }

    fn convert(
        &mut self,
        frame: &ffmpeg::frame::Video,
        offset_ms: u64,
    ) -> Result<Frame, MediaError> {
        let format = frame.format();
        let (width, height) = (frame.width(), frame.height());
        // The picture as shown (pixel aspect, turn), at the smallest size that still covers
        // `frame_size` on both sides, or its own when smaller: each model then resizes it as
        // its reference does (PLM's bicubic to 448², PE-Core's to its input).
        let shown = display_size(frame, self.rotation);
        let (out_width, out_height) = decode_size(shown, self.frame_size);
        let (scaled_width, scaled_height) = if self.rotation % 180 == 90 {
            (out_height, out_width)
        } else {
            (out_width, out_height)
        };
        let needs_new = self
            .scaler
            .as_ref()
            .is_none_or(|(f, w, h, _)| *f != format || *w != width || *h != height);
        if needs_new {
            let context = scaling::Context::get(
                format,
                width,
                height,
                ffmpeg::format::Pixel::RGB24,
                scaled_width,
                scaled_height,
                // FFmpeg's own default (what `ffmpeg -pix_fmt rgb24` converts with); its
                // filter widens with the downscale, so detail is averaged, not aliased.
                scaling::Flags::BICUBIC,
            )
            .map_err(|error| MediaError::Unsupported {
                input: self.input.clone(),
                reason: format!("cannot convert {format:?} {width}x{height} to RGB: {error}"),
            })?;
            self.scaler = Some((format, width, height, context));
        }
        let Some((_, _, _, scaler)) = self.scaler.as_mut() else {
            return Err(MediaError::InvalidData {
                input: self.input.clone(),
                reason: "scaler missing".into(),
            });
        };
        let mut rgb_frame = ffmpeg::frame::Video::empty();
        scaler
            .run(frame, &mut rgb_frame)
            .map_err(|error| MediaError::InvalidData {
                input: self.input.clone(),
                reason: format!("frame conversion failed: {error}"),
            })?;
        let row_bytes = scaled_width as usize * 3;
        let stride = rgb_frame.stride(0);
        let data = rgb_frame.data(0);
        let mut rgb = Vec::with_capacity(row_bytes * scaled_height as usize);
        for row in 0..scaled_height as usize {
            let start = row * stride;
            rgb.extend_from_slice(&data[start..start + row_bytes]);
        }
        let (rgb, width, height) = crate::orient::rotate_rgb(
            &rgb,
            scaled_width as usize,
            scaled_height as usize,
            self.rotation,
        );
        Ok(Frame {
            pts_ms: self.segment_start_ms + offset_ms,
            width: width as u32,
            height: height as u32,
            rgb,
            display_size: shown,
        })
    }
}

/// The size frames are decoded at: `shown` scaled down (never up) until its shorter side, in
/// proportion, reaches `frame_size` — the smallest size that still covers a
/// `frame_size × frame_size` model input on both sides.
pub fn decode_size(shown: (u32, u32), frame_size: u32) -> (u32, u32) {
    let (width, height) = (f64::from(shown.0.max(1)), f64::from(shown.1.max(1)));
    let target = f64::from(frame_size.max(1));
    let scale = (target / width).max(target / height).min(1.0);
    if scale >= 1.0 {
        return (shown.0.max(1), shown.1.max(1));
    }
    // Both sides exceed the target here: neither rounds below it.
    let side = |length: f64| ((length * scale).round() as u32).max(frame_size);
    (side(width), side(height))
}

/// The picture's size as shown: the pixel aspect ratio applied to the width, the sides
/// swapped for a quarter turn.
fn display_size(frame: &ffmpeg::frame::Video, rotation: u16) -> (u32, u32) {
    let (width, height) = (frame.width(), frame.height());
    let sar = frame.aspect_ratio();
    let width = if sar.numerator() > 0 && sar.denominator() > 0 {
        (u64::from(width) * sar.numerator() as u64 / sar.denominator() as u64).max(1) as u32
    } else {
        width
    };
    if rotation % 180 == 90 {
        (height, width)
    } else {
        (width, height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_decoded_just_large_enough_for_the_model() {
        assert_eq!(decode_size((1920, 1080), 448), (796, 448));
        assert_eq!(decode_size((1080, 1920), 448), (448, 796));
        assert_eq!(decode_size((3840, 2160), 448), (796, 448));
        // Never up: a small source stays as it is.
        assert_eq!(decode_size((320, 240), 448), (320, 240));
        assert_eq!(decode_size((1000, 300), 448), (1000, 300));
        assert_eq!(decode_size((448, 448), 448), (448, 448));
        assert_eq!(decode_size((320, 240), 32), (43, 32));
    }

    #[test]
    fn targets_are_bin_centres() {
        assert_eq!(
            uniform_targets_ms(20_000, 4),
            vec![2_500, 7_500, 12_500, 17_500]
        );
        assert_eq!(uniform_targets_ms(1_000, 1), vec![500]);
        assert!(uniform_targets_ms(1_000, 0).is_empty());
    }
}
