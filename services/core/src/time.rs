//! Time ranges in milliseconds and their human formatting.

use serde::{Deserialize, Serialize};

/// A half-open range `[start_ms, end_ms)` of media time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl TimeRange {
    /// A range; `end_ms` is raised to `start_ms` when it lies before it.
    pub fn new(start_ms: u64, end_ms: u64) -> Self {
        Self {
            start_ms,
            end_ms: end_ms.max(start_ms),
        }
    }

    pub fn duration_ms(&self) -> u64 {
        self.end_ms - self.start_ms
    }

    pub fn contains(&self, time_ms: u64) -> bool {
        self.start_ms <= time_ms && time_ms < self.end_ms
    }

    /// Whether the two ranges share any instant. Empty ranges overlap a range that contains
    /// their start.
    pub fn overlaps(&self, other: &TimeRange) -> bool {
        if self.start_ms == self.end_ms {
            return other.contains(self.start_ms) || other.start_ms == self.start_ms;
        }
        if other.start_ms == other.end_ms {
            return other.overlaps(self);
        }
        self.start_ms < other.end_ms && other.start_ms < self.end_ms
    }

    /// The part of `self` inside `bounds`, or `None` when they do not overlap.
    pub fn clamp_to(&self, bounds: &TimeRange) -> Option<TimeRange> {
        if !self.overlaps(bounds) {
            return None;
        }
        let start_ms = self.start_ms.clamp(bounds.start_ms, bounds.end_ms);
        let end_ms = self.end_ms.clamp(start_ms, bounds.end_ms);
        Some(TimeRange { start_ms, end_ms })
    }
}

/// `hh:mm:ss.mmm`, hours not wrapped at 24.
pub fn format_hms_ms(time_ms: u64) -> String {
    let hours = time_ms / 3_600_000;
    let minutes = time_ms / 60_000 % 60;
    let seconds = time_ms / 1000 % 60;
    let millis = time_ms % 1000;
    format!("{hours:02}:{minutes:02}:{seconds:02}.{millis:03}")
}

/// Times at or past this (2001-09-09, epoch ms) are wall-clock times of live streams: no
/// recording is 277 000 hours long.
pub const WALL_CLOCK_FROM_MS: u64 = 1_000_000_000_000;

/// A hit's time as a person reads it: a live stream's wall-clock time as RFC 3339 UTC
/// (`2026-12-02T10:00:00.250Z`), a recording's media time as `hh:mm:ss.mmm`.
pub fn format_time_ms(time_ms: u64) -> String {
    if time_ms >= WALL_CLOCK_FROM_MS {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms);
        humantime::format_rfc3339_millis(at).to_string()
    } else {
        format_hms_ms(time_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_times_read_as_dates_and_media_times_as_durations() {
        assert_eq!(
            format_time_ms(1_796_205_600_250),
            "2026-12-02T10:00:00.250Z"
        );
        assert_eq!(format_time_ms(3_723_004), "01:02:03.004");
    }

    #[test]
    fn formats_hours_minutes_seconds_millis() {
        assert_eq!(format_hms_ms(0), "00:00:00.000");
        assert_eq!(format_hms_ms(61_005), "00:01:01.005");
        assert_eq!(format_hms_ms(90_000_000), "25:00:00.000");
    }

    #[test]
    fn overlap_and_clamp() {
        let segment = TimeRange::new(20_000, 40_000);
        assert!(TimeRange::new(39_000, 45_000).overlaps(&segment));
        assert!(!TimeRange::new(40_000, 45_000).overlaps(&segment));
        assert_eq!(
            TimeRange::new(39_000, 45_000).clamp_to(&segment),
            Some(TimeRange::new(39_000, 40_000))
        );
        assert_eq!(TimeRange::new(0, 1_000).clamp_to(&segment), None);
        assert!(TimeRange::new(25_000, 25_000).overlaps(&segment));
        assert_eq!(TimeRange::new(50, 10), TimeRange::new(50, 50));
    }
}
