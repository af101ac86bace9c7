//! A frame sampler for tests that must never decode: any call is an error naming the media.

use std::path::Path;

use vidx_core::ports::{FrameSampler, SharedBytes};
use vidx_core::{Frame, MediaError, TimeRange};

/// Never expected to be called: tests that sample no frames (or nodes that only query).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFrames;

impl FrameSampler for NoFrames {
    fn sample(&self, path: &Path, _: TimeRange, _: usize) -> Result<Vec<Frame>, MediaError> {
        Err(MediaError::Io {
            input: path.display().to_string(),
            reason: "unexpected decode".into(),
        })
    }

    fn sample_bytes(
        &self,
        _: SharedBytes,
        range: TimeRange,
        _: usize,
    ) -> Result<Vec<Frame>, MediaError> {
        Err(MediaError::Io {
            input: format!("inline segment at {} ms", range.start_ms),
            reason: "unexpected decode".into(),
        })
    }
}
