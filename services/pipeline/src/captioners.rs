//! Captioners that need no model.

use vidx_core::ModelError;
use vidx_core::ports::{Captioner, SegmentInput};
use vidx_core::{Moment, RecordKind, TimeRange};

/// Subtitle and closed-caption cues (embedded streams and sidecar files, extracted at
/// segmenting time and carried in the task) as moments of kind `subtitle`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SubtitleCaptioner;

/// Bump when the way cues become moments changes: new ids, old points can be told apart.
pub const SUBTITLE_CAPTIONER_REVISION: &str = "subtitles-v1";

impl Captioner for SubtitleCaptioner {
    fn name(&self) -> &str {
        "subtitles"
    }

    fn revision(&self) -> &str {
        SUBTITLE_CAPTIONER_REVISION
    }

    fn needs_frames(&self) -> bool {
        false
    }

    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
        Ok(segment
            .task
            .subtitles
            .iter()
            .filter(|cue| !cue.text.trim().is_empty())
            .map(|cue| Moment {
                kind: RecordKind::Subtitle,
                range: TimeRange::new(cue.start_ms, cue.end_ms),
                caption: cue.text.clone(),
                region: None,
            })
            .collect())
    }
}
