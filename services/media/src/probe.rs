//! Probing: duration, frame rate, size and codecs, and the subtitle streams of an input.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::media::Type as MediaType;
use vidx_core::MediaError;

use crate::input::open_input;
use crate::source::InputSource;

/// The main video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub stream_index: usize,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Clockwise degrees (0, 90, 180, 270) the frames are turned for display (a phone's
    /// display matrix); `width` and `height` are the coded, unturned size.
    pub rotation: u16,
}

/// A subtitle or closed-caption stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtitleStreamInfo {
    pub stream_index: usize,
    pub codec: String,
    pub language: Option<String>,
}

/// What `probe` learns about an input.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub input: String,
    pub format: String,
    pub duration_ms: Option<u64>,
    pub video: Option<VideoInfo>,
    pub audio_codecs: Vec<String>,
    pub subtitles: Vec<SubtitleStreamInfo>,
}

/// Probe an input: open it, read its stream headers, close it.
pub fn probe(source: &InputSource) -> Result<MediaInfo, MediaError> {
    let opened = open_input(source)?;
    Ok(describe(&opened.context, &opened.name))
}

pub(crate) fn describe(context: &ffmpeg::format::context::Input, name: &str) -> MediaInfo {
    let duration = context.duration();
    let duration_ms = (duration > 0).then_some((duration / 1000) as u64);
    let mut video = None;
    let mut audio_codecs = Vec::new();
    let mut subtitles = Vec::new();
    let best_video = context
        .streams()
        .best(MediaType::Video)
        .map(|stream| stream.index());
    for stream in context.streams() {
        let parameters = stream.parameters();
        let codec = format!("{:?}", parameters.id()).to_lowercase();
        match parameters.medium() {
            MediaType::Video if Some(stream.index()) == best_video => {
                let (width, height) = video_size(&stream);
                let rate = stream.avg_frame_rate();
                let rate = if rate.denominator() == 0 || rate.numerator() == 0 {
                    stream.rate()
                } else {
                    rate
                };
                let fps = if rate.denominator() == 0 {
                    0.0
                } else {
                    f64::from(rate.numerator()) / f64::from(rate.denominator())
                };
                video = Some(VideoInfo {
                    stream_index: stream.index(),
                    codec,
                    width,
                    height,
                    fps,
                    rotation: crate::orient::stream_rotation(&stream),
                });
            }
            MediaType::Audio => audio_codecs.push(codec),
            MediaType::Subtitle => subtitles.push(SubtitleStreamInfo {
                stream_index: stream.index(),
                codec,
                language: stream.metadata().get("language").map(str::to_string),
            }),
            _ => {}
        }
    }
    MediaInfo {
        input: name.to_string(),
        format: context.format().name().to_string(),
        duration_ms,
        video,
        audio_codecs,
        subtitles,
    }
}

fn video_size(stream: &ffmpeg::format::stream::Stream<'_>) -> (u32, u32) {
    match ffmpeg::codec::Context::from_parameters(stream.parameters())
        .and_then(|context| context.decoder().video())
    {
        Ok(decoder) => (decoder.width(), decoder.height()),
        Err(_) => (0, 0),
    }
}
