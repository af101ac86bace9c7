//! The ffmpeg adapter (ffmpeg-next against the system FFmpeg): input discovery and URL rules,
//! probing, keyframe-aligned segmenting by remuxing (of files and of live streams, with
//! reconnects and wall-clock ranges), frame sampling, and subtitle cues from
//! embedded streams and sidecar `.srt`/`.vtt` files.
//!
//! Every failure is a [`vidx_core::MediaError`] naming the input; nothing here panics on input
//! data.

mod clip;
mod guard;
mod input;
mod live;
mod orient;
mod probe;
mod sample;
mod segment;
mod source;
pub mod subtitles;
mod transcode;

pub use clip::{Clip, ClipOptions, MAX_CLIP_MS, cut_clip};
pub use live::{LiveOptions, LiveSummary, MAX_CLOCK_JUMP_MS, StopCause, StreamState, segment_live};
pub use probe::{MediaInfo, SubtitleStreamInfo, VideoInfo, probe};
pub use sample::{FfmpegFrameSampler, decode_size, uniform_targets_ms};
pub use segment::{SegmentChunk, SegmentOptions, SegmentSummary, segment_source};
pub use source::{
    InputSource, Network, UrlPolicy, discover_inputs, is_video_path, parse_input, redact_url,
    stored_source,
};

use std::sync::Once;

/// Initialise FFmpeg once per process and keep its own logging quiet: vidx reports errors itself.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Err(error) = ffmpeg_next::init() {
            tracing::error!(%error, "ffmpeg failed to initialise");
        }
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}
