//! Clips: the part of a source a hit points at, as an MP4 a browser plays (`faststart`: the
//! index first, so playback starts before the whole file arrived). The video is remuxed from
//! the keyframe at or before the start to the end (with the audio when MP4 holds its codec);
//! a video codec MP4 cannot hold is re-encoded to H.264 (no audio then). The clip starts at
//! that keyframe: [`Clip::start_ms`] says where, so a player seeks to the hit's start.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::Rescale;
use ffmpeg_next::media::Type as MediaType;
use vidx_core::{MediaError, TimeRange};

use crate::input::{OpenSettings, open_input_with, to_ms};
use crate::segment::VideoTrack;
use crate::source::InputSource;

/// What [`cut_clip`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clip {
    /// Media time of the clip's first frame (a keyframe at or before the asked start).
    pub start_ms: u64,
    /// Media time its last frame ends at.
    pub end_ms: u64,
    /// Whether the video was re-encoded (the source's codec does not fit MP4).
    pub reencoded: bool,
}

/// Options of [`cut_clip`].
#[derive(Debug, Clone, Default)]
pub struct ClipOptions {
    /// Check every connection of a URL source (as the ingest does); `None`: no check.
    pub url_guard: Option<crate::UrlPolicy>,
}

/// Longest clip cut, whatever the range asks: clips are for watching a moment.
pub const MAX_CLIP_MS: u64 = 10 * 60 * 1000;

/// Cut `range` (media time, as hits give it) of `source` into the MP4 file `output`.
pub fn cut_clip(
    source: &InputSource,
    range: TimeRange,
    output: &Path,
    options: &ClipOptions,
) -> Result<Clip, MediaError> {
    let open = OpenSettings {
        url_guard: options.url_guard.clone(),
        ..OpenSettings::default()
    };
    if let InputSource::File(path) = source
        && std::fs::canonicalize(path).ok() == std::fs::canonicalize(output).ok()
        && output.exists()
    {
        return Err(MediaError::Io {
            input: source.display_name(),
            reason: "a clip cannot overwrite its own source".into(),
        });
    }
    let end_wanted = range
        .end_ms
        .min(range.start_ms.saturating_add(MAX_CLIP_MS))
        .max(range.start_ms + 1);
    match remux(source, &open, range.start_ms, end_wanted, output) {
        Ok(clip) => Ok(clip),
        Err(Refused::Container(reason)) => {
            tracing::debug!(input = %source.display_name(), %reason, "clip re-encoded");
            let _ = std::fs::remove_file(output);
            crate::transcode::reencode_clip(source, &open, range.start_ms, end_wanted, output)
        }
        Err(Refused::Media(error)) => {
            let _ = std::fs::remove_file(output);
            Err(error)
        }
    }
}

/// Why remuxing did not make the clip.
pub(crate) enum Refused {
    /// MP4 does not hold the source's video: re-encode.
    Container(String),
    Media(MediaError),
}

impl From<MediaError> for Refused {
    fn from(error: MediaError) -> Self {
        Refused::Media(error)
    }
}

/// The media time 0 of a source: its video stream's start, as the segmenter counts it.
pub(crate) fn origin_pts(track: &VideoTrack) -> i64 {
    if track.start_time == ffmpeg::ffi::AV_NOPTS_VALUE {
        0
    } else {
        track.start_time
    }
}

/// Seek `input` to the keyframe at or before media time `start_ms` of the video track.
pub(crate) fn seek_to(
    input: &mut ffmpeg::format::context::Input,
    track: &VideoTrack,
    start_ms: u64,
) {
    let origin_us = to_ms(origin_pts(track), track.time_base) * 1000;
    let target = origin_us + start_ms as i64 * 1000;
    if start_ms > 0 {
        let _ = input.seek(target, ..target.saturating_add(1));
    }
}

fn remux(
    source: &InputSource,
    open: &OpenSettings,
    start_ms: u64,
    end_ms: u64,
    output: &Path,
) -> Result<Clip, Refused> {
    let mut opened = open_input_with(source, open)?;
    let name = opened.name.clone();
    let track = VideoTrack::select(&opened, u64::MAX)?;
    let audio = opened
        .context
        .streams()
        .best(MediaType::Audio)
        .filter(|stream| {
            matches!(
                stream.parameters().id(),
                ffmpeg::codec::Id::AAC | ffmpeg::codec::Id::MP3
            )
        })
        .map(|stream| (stream.index(), stream.time_base(), stream.parameters()));
    seek_to(&mut opened.context, &track, start_ms);
    let io_error = |stage: &str, error: ffmpeg::Error| MediaError::Io {
        input: name.clone(),
        reason: format!("writing the clip ({stage}): {error}"),
    };
    let mut mp4 =
        ffmpeg::format::output_as(output, "mp4").map_err(|error| io_error("create", error))?;
    {
        let mut stream = mp4
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(|error| io_error("video stream", error))?;
        stream.set_parameters(track.parameters.clone());
        stream.set_time_base(track.time_base);
        if track.rotation != 0 {
            let mut tags = ffmpeg::Dictionary::new();
            tags.set(crate::orient::ROTATION_TAG, &track.rotation.to_string());
            stream.set_metadata(tags);
        }
    }
    if let Some((_, time_base, parameters)) = &audio {
        let mut stream = mp4
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(|error| io_error("audio stream", error))?;
        let mut parameters = parameters.clone();
        clear_codec_tag(&mut parameters);
        stream.set_parameters(parameters);
        stream.set_time_base(*time_base);
    }
    let mut muxer_options = ffmpeg::Dictionary::new();
    muxer_options.set("movflags", "+faststart");
    if let Err(error) = mp4.write_header_with(muxer_options) {
        return Err(Refused::Container(format!(
            "MP4 refused the stream: {error}"
        )));
    }
    let video_out = mp4
        .stream(0)
        .map(|stream| stream.time_base())
        .unwrap_or(track.time_base);
    let audio_out = mp4.stream(1).map(|stream| stream.time_base());
    let origin_ms = to_ms(origin_pts(&track), track.time_base);

    // The clip's zero: the first keyframe's timestamp (in the video's time base).
    let mut zero: Option<i64> = None;
    let mut first_ms = start_ms;
    let mut last_end_ms = start_ms;
    let mut packet = ffmpeg::Packet::empty();
    loop {
        match packet.read(&mut opened.context) {
            Ok(()) => opened.touch(),
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => continue,
            Err(error) => {
                return Err(Refused::Media(MediaError::Truncated {
                    input: name,
                    reason: format!("read failed while cutting a clip: {error}"),
                }));
            }
        }
        let stream = packet.stream();
        if stream == track.index {
            let Some(pts) = packet.pts().or(packet.dts()) else {
                continue;
            };
            let time_ms = (to_ms(pts, track.time_base) - origin_ms).max(0) as u64;
            if zero.is_none() {
                if !packet.is_key() {
                    continue;
                }
                zero = Some(pts);
                first_ms = time_ms;
            }
            // Packets are in decode order: stop at the first keyframe past the end.
            if time_ms >= end_ms && packet.is_key() {
                break;
            }
            if time_ms >= end_ms.saturating_add(2_000) {
                break;
            }
            let duration_ms = to_ms(packet.duration().max(0), track.time_base).max(0) as u64;
            last_end_ms = last_end_ms.max(time_ms + duration_ms);
            let zero = zero.unwrap_or(pts);
            rebase(&mut packet, zero, track.time_base, video_out, 0);
        } else if let (Some((index, time_base, _)), Some(audio_out), Some(video_zero)) =
            (&audio, audio_out, zero)
        {
            if stream != *index {
                continue;
            }
            let Some(pts) = packet.pts().or(packet.dts()) else {
                continue;
            };
            let zero = video_zero.rescale(track.time_base, *time_base);
            if pts < zero {
                continue;
            }
            if (to_ms(pts, *time_base) - origin_ms).max(0) as u64 >= last_end_ms.max(end_ms) {
                continue;
            }
            rebase(&mut packet, zero, *time_base, audio_out, 1);
        } else {
            continue;
        }
        if let Err(error) = packet.write_interleaved(&mut mp4) {
            return Err(Refused::Container(format!("MP4 refused a packet: {error}")));
        }
    }
    if zero.is_none() {
        return Err(Refused::Media(MediaError::InvalidData {
            input: name,
            reason: format!("no keyframe at or after {start_ms} ms to start a clip"),
        }));
    }
    mp4.write_trailer()
        .map_err(|error| io_error("trailer", error))?;
    Ok(Clip {
        start_ms: first_ms,
        end_ms: last_end_ms.max(first_ms + 1),
        reencoded: false,
    })
}

/// Shift a packet so `zero` is time 0, into the output stream `index`'s time base.
fn rebase(
    packet: &mut ffmpeg::Packet,
    zero: i64,
    time_base: ffmpeg::Rational,
    output_time_base: ffmpeg::Rational,
    index: usize,
) {
    packet.set_pts(packet.pts().map(|pts| pts - zero));
    packet.set_dts(packet.dts().map(|dts| dts - zero));
    packet.rescale_ts(time_base, output_time_base);
    packet.set_stream(index);
    packet.set_position(-1);
}

fn clear_codec_tag(parameters: &mut ffmpeg::codec::Parameters) {
    #[allow(unsafe_code)]
    // SAFETY: `parameters` owns a valid AVCodecParameters; `codec_tag` is a plain integer.
    unsafe {
        (*parameters.as_mut_ptr()).codec_tag = 0;
    }
}
