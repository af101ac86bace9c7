//! Region proposals without a detector: boxes around what moves in a segment's sampled frames,
//! linked into short tracks, and a coarse grid for scenes where nothing moves.
//!
//! Motion is found against a per-pixel median background of the segment's own frames (on a
//! copy area-averaged down to `analysis_width`), so each frame's foreground is the object where
//! it *is* in that frame, not the union of where it was and where it went (as two-frame
//! differencing gives). The median only holds while an object covers a pixel in fewer than half
//! of the frames: an object that sits still for most of the segment becomes background and is
//! not proposed.
//!
//! Per frame: foreground = any channel differs from the background by more than a threshold;
//! a 3x3 opening drops noise specks and a 5x5 closing fills holes; 8-connected components under
//! a minimum area are dropped and intersecting boxes merged. Boxes are linked greedily across
//! consecutive frames by IoU, or by centre distance for fast objects; short tracks are dropped.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::time::TimeRange;
use crate::types::{Frame, NormalizedBox};

/// The median background needs at least this many distinct frames to tell an object from the
/// scene behind it; with fewer, no motion is reported.
pub const MIN_FRAMES_FOR_MOTION: usize = 3;

/// The most components kept per frame (the largest), bounding the linking work.
const MAX_BOXES_PER_FRAME: usize = 32;

/// Two boxes link by centre distance only when the smaller is at least this fraction of the
/// larger's area (a small blob does not continue a large one).
const MIN_LINK_AREA_RATIO: f32 = 0.25;

/// Opening radius (analysis pixels): removes specks of noise thinner than 3 px.
const OPEN_RADIUS: usize = 1;

/// Closing radius (analysis pixels): fills small holes and joins parts a few pixels apart.
const CLOSE_RADIUS: usize = 2;

/// The largest grid [`coarse_grid`] makes per side.
pub const MAX_GRID_CELLS_PER_SIDE: u32 = 16;

/// How regions are proposed. Every field has a default; distances and areas are fractions of
/// the frame, so the settings do not depend on the sampler's frame size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionSettings {
    /// Frames are area-averaged down to this width (height in proportion) before analysis;
    /// smaller frames are used as they are. The averaging also suppresses encoding noise.
    pub analysis_width: u32,
    /// A pixel is foreground when any of its R, G, B values differs from the background's by
    /// more than this (0..=255, measured on the downscaled frame).
    pub difference_threshold: u8,
    /// Components smaller than this fraction of the frame's area are dropped.
    pub min_area_fraction: f32,
    /// A frame with more than this fraction of foreground is skipped as a whole (camera motion,
    /// a cut or a flash, where boxes would mean nothing).
    pub max_foreground_fraction: f32,
    /// At most this many motion tracks are returned, the most salient first.
    pub max_tracks: usize,
    /// A box continues a track when its IoU with the track's last box reaches this...
    pub link_min_iou: f32,
    /// ...or when their centres are at most this far apart (normalised units, per frame step)
    /// and their areas are comparable; fast objects may not overlap between samples.
    pub link_max_centre_distance: f32,
    /// A track may miss this many frames and still be continued.
    pub max_gap_frames: usize,
    /// Tracks with fewer boxes than this are dropped.
    pub min_track_frames: usize,
    /// [`coarse_grid`] makes `grid_cells_per_side²` tracks (clamped to
    /// `1..=MAX_GRID_CELLS_PER_SIDE`).
    pub grid_cells_per_side: u32,
    /// With a captioner that reads regions (PLM): the tracks of a segment that get a region
    /// caption, the largest by area × duration first (`models.region_captions`; 0: none).
    pub captions: usize,
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            analysis_width: 112,
            difference_threshold: 24,
            min_area_fraction: 0.0025,
            max_foreground_fraction: 0.5,
            max_tracks: 8,
            link_min_iou: 0.1,
            link_max_centre_distance: 0.2,
            max_gap_frames: 1,
            min_track_frames: 3,
            grid_cells_per_side: 2,
            captions: 3,
        }
    }
}

impl RegionSettings {
    /// Check every field, naming the first offending key.
    pub fn validate(&self) -> Result<(), RegionError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(RegionError::InvalidSettings {
                key,
                reason: reason.to_string(),
            })
        };
        if self.analysis_width == 0 {
            return invalid("analysis_width", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.min_area_fraction) {
            return invalid("min_area_fraction", "must lie in 0..=1");
        }
        if !(self.max_foreground_fraction > 0.0 && self.max_foreground_fraction <= 1.0) {
            return invalid("max_foreground_fraction", "must lie in (0, 1]");
        }
        if !(self.link_min_iou > 0.0 && self.link_min_iou <= 1.0) {
            return invalid("link_min_iou", "must lie in (0, 1]");
        }
        if !(0.0..=2.0).contains(&self.link_max_centre_distance) {
            return invalid("link_max_centre_distance", "must lie in 0..=2");
        }
        if self.min_track_frames == 0 {
            return invalid("min_track_frames", "must be at least 1");
        }
        Ok(())
    }
}

/// Frames or settings the region proposer cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegionError {
    #[error(
        "frame {frame_index} is {width}x{height}, frame 0 is {expected_width}x{expected_height}"
    )]
    FrameSizeMismatch {
        frame_index: usize,
        width: u32,
        height: u32,
        expected_width: u32,
        expected_height: u32,
    },
    #[error("frame {frame_index} has {len} RGB bytes, {expected_len} expected")]
    FrameBufferSize {
        frame_index: usize,
        len: usize,
        expected_len: u64,
    },
    #[error("frame {frame_index} has no pixels")]
    EmptyFrame { frame_index: usize },
    #[error("region settings: {key} {reason}")]
    InvalidSettings { key: &'static str, reason: String },
}

impl RegionError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidInput
    }
}

/// How a region track was proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// Something that moves, found against the segment's background.
    Motion,
    /// A fixed cell of a coarse grid, for scenes without motion.
    Grid,
}

impl RegionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionKind::Motion => "motion",
            RegionKind::Grid => "grid",
        }
    }
}

/// A track's box on one sampled frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrackBox {
    /// The frame's presentation time, ms from the start of the stream.
    pub pts_ms: u64,
    pub bbox: NormalizedBox,
}

/// A short track of boxes over a segment's sampled frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionTrack {
    pub kind: RegionKind,
    /// One box per frame the track is seen on, in increasing `pts_ms`.
    pub boxes: Vec<TrackBox>,
    /// From the first box's `pts_ms` to the last box's (empty for a one-frame track).
    pub span: TimeRange,
    /// The smallest box containing every box of the track.
    pub union: NormalizedBox,
}

impl RegionTrack {
    /// A track over `boxes` (in time order); `None` when there are none.
    fn from_boxes(kind: RegionKind, boxes: Vec<TrackBox>) -> Option<Self> {
        let first = boxes.first()?;
        let last = boxes.last()?;
        let span = TimeRange::new(first.pts_ms, last.pts_ms);
        let union = boxes
            .iter()
            .map(|timed| timed.bbox)
            .reduce(|left, right| box_union(&left, &right))?;
        Some(Self {
            kind,
            boxes,
            span,
            union,
        })
    }

    /// The track's box on the frame at `pts_ms`, if it has one.
    pub fn box_at(&self, pts_ms: u64) -> Option<NormalizedBox> {
        self.boxes
            .iter()
            .find(|timed| timed.pts_ms == pts_ms)
            .map(|timed| timed.bbox)
    }
}

/// Area of a normalised box; 0 for an inverted one.
pub fn box_area(bbox: &NormalizedBox) -> f32 {
    (bbox.x1 - bbox.x0).max(0.0) * (bbox.y1 - bbox.y0).max(0.0)
}

/// Intersection over union of two boxes, in `0..=1`; 0 when either is empty.
pub fn box_iou(left: &NormalizedBox, right: &NormalizedBox) -> f32 {
    let intersection = NormalizedBox {
        x0: left.x0.max(right.x0),
        y0: left.y0.max(right.y0),
        x1: left.x1.min(right.x1),
        y1: left.y1.min(right.y1),
    };
    let intersection_area = box_area(&intersection);
    let union_area = box_area(left) + box_area(right) - intersection_area;
    if union_area > 0.0 {
        (intersection_area / union_area).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The smallest box containing both.
pub fn box_union(left: &NormalizedBox, right: &NormalizedBox) -> NormalizedBox {
    NormalizedBox {
        x0: left.x0.min(right.x0),
        y0: left.y0.min(right.y0),
        x1: left.x1.max(right.x1),
        y1: left.y1.max(right.y1),
    }
}

fn box_centre_distance(left: &NormalizedBox, right: &NormalizedBox) -> f32 {
    let delta_x = (left.x0 + left.x1 - right.x0 - right.x1) / 2.0;
    let delta_y = (left.y0 + left.y1 - right.y0 - right.y1) / 2.0;
    (delta_x * delta_x + delta_y * delta_y).sqrt()
}

/// Motion region tracks of one segment's sampled frames (all the same size, RGB).
///
/// Returns no tracks for an empty slice, for fewer than [`MIN_FRAMES_FOR_MOTION`] distinct
/// frame times, and for a static scene. Frames are taken in `pts_ms` order; frames repeating an
/// earlier `pts_ms` (the sampler repeats a frame when the source has fewer frames than targets)
/// are ignored. Tracks come most salient first (most frames, then largest total box area).
pub fn motion_tracks(
    frames: &[Frame],
    settings: &RegionSettings,
) -> Result<Vec<RegionTrack>, RegionError> {
    settings.validate()?;
    check_frames(frames)?;
    let mut ordered: Vec<&Frame> = frames.iter().collect();
    ordered.sort_by_key(|frame| frame.pts_ms);
    ordered.dedup_by_key(|frame| frame.pts_ms);
    if ordered.len() < MIN_FRAMES_FOR_MOTION {
        return Ok(Vec::new());
    }

    let images: Vec<SmallImage> = ordered
        .iter()
        .map(|frame| SmallImage::downscaled(frame, settings.analysis_width))
        .collect();
    let background = median_background(&images);
    let pixel_count = background.width * background.height;
    // Rounded up so that a fraction > 0 always demands at least one pixel.
    let min_area_pixels = (settings.min_area_fraction * pixel_count as f32).ceil() as usize;
    let max_foreground_pixels = (settings.max_foreground_fraction * pixel_count as f32) as usize;

    let mut boxes_per_frame = Vec::with_capacity(images.len());
    for (frame, image) in ordered.iter().zip(&images) {
        let raw = Mask::foreground(image, &background, settings.difference_threshold);
        let cleaned = raw
            .eroded(OPEN_RADIUS)
            .dilated(OPEN_RADIUS)
            .dilated(CLOSE_RADIUS)
            .eroded(CLOSE_RADIUS);
        let boxes = if cleaned.count() > max_foreground_pixels {
            Vec::new()
        } else {
            let mut components: Vec<PixelBox> = connected_components(&cleaned)
                .into_iter()
                .filter(|component| component.area >= min_area_pixels.max(1))
                .collect();
            components = merge_intersecting(components);
            components.sort_by_key(|component| std::cmp::Reverse(component.area));
            components.truncate(MAX_BOXES_PER_FRAME);
            components
                .iter()
                .map(|component| component.normalised(cleaned.width, cleaned.height))
                .collect()
        };
        boxes_per_frame.push(FrameBoxes {
            pts_ms: frame.pts_ms,
            boxes,
        });
    }

    let mut tracks: Vec<RegionTrack> = link_tracks(&boxes_per_frame, settings)
        .into_iter()
        .filter(|boxes| boxes.len() >= settings.min_track_frames)
        .filter_map(|boxes| RegionTrack::from_boxes(RegionKind::Motion, boxes))
        .collect();
    tracks.sort_by(|left, right| {
        let total_area = |track: &RegionTrack| -> f32 {
            track.boxes.iter().map(|timed| box_area(&timed.bbox)).sum()
        };
        right
            .boxes
            .len()
            .cmp(&left.boxes.len())
            .then(total_area(right).total_cmp(&total_area(left)))
            .then(left.span.start_ms.cmp(&right.span.start_ms))
    });
    tracks.truncate(settings.max_tracks);
    Ok(tracks)
}

/// A `grid_cells_per_side × grid_cells_per_side` grid of fixed cells, each a [`RegionKind::Grid`]
/// track with one box per distinct frame time, row by row from the top left. For scenes where
/// [`motion_tracks`] finds nothing. No frames, no tracks; the frames' pixels are not read.
pub fn coarse_grid(frames: &[Frame], settings: &RegionSettings) -> Vec<RegionTrack> {
    let mut times_ms: Vec<u64> = frames.iter().map(|frame| frame.pts_ms).collect();
    times_ms.sort_unstable();
    times_ms.dedup();
    let cells_per_side = settings
        .grid_cells_per_side
        .clamp(1, MAX_GRID_CELLS_PER_SIDE);
    let cell_size = 1.0 / cells_per_side as f32;
    let mut tracks = Vec::new();
    for row in 0..cells_per_side {
        for column in 0..cells_per_side {
            let cell = NormalizedBox {
                x0: column as f32 * cell_size,
                y0: row as f32 * cell_size,
                // The last cell ends exactly at 1 whatever the rounding.
                x1: if column + 1 == cells_per_side {
                    1.0
                } else {
                    (column + 1) as f32 * cell_size
                },
                y1: if row + 1 == cells_per_side {
                    1.0
                } else {
                    (row + 1) as f32 * cell_size
                },
            };
            let boxes = times_ms
                .iter()
                .map(|&pts_ms| TrackBox { pts_ms, bbox: cell })
                .collect();
            tracks.extend(RegionTrack::from_boxes(RegionKind::Grid, boxes));
        }
    }
    tracks
}

/// What a segment gets: its motion tracks, or the coarse grid when nothing moves.
pub fn propose_regions(
    frames: &[Frame],
    settings: &RegionSettings,
) -> Result<Vec<RegionTrack>, RegionError> {
    let tracks = motion_tracks(frames, settings)?;
    if tracks.is_empty() {
        Ok(coarse_grid(frames, settings))
    } else {
        Ok(tracks)
    }
}

fn check_frames(frames: &[Frame]) -> Result<(), RegionError> {
    let Some(first) = frames.first() else {
        return Ok(());
    };
    for (frame_index, frame) in frames.iter().enumerate() {
        if frame.width == 0 || frame.height == 0 {
            return Err(RegionError::EmptyFrame { frame_index });
        }
        if (frame.width, frame.height) != (first.width, first.height) {
            return Err(RegionError::FrameSizeMismatch {
                frame_index,
                width: frame.width,
                height: frame.height,
                expected_width: first.width,
                expected_height: first.height,
            });
        }
        // In u64: `width * height * 3` can overflow a 32-bit usize.
        let expected_len = u64::from(frame.width) * u64::from(frame.height) * 3;
        if frame.rgb.len() as u64 != expected_len {
            return Err(RegionError::FrameBufferSize {
                frame_index,
                len: frame.rgb.len(),
                expected_len,
            });
        }
    }
    Ok(())
}

/// A frame area-averaged down to analysis size: RGB, row-major.
#[derive(Debug, Clone, PartialEq)]
struct SmallImage {
    width: usize,
    height: usize,
    pixels: Vec<[u8; 3]>,
}

impl SmallImage {
    /// Area-average `frame` down to `analysis_width` (never up), height in proportion. The
    /// caller has checked that `rgb` holds `width * height * 3` bytes.
    fn downscaled(frame: &Frame, analysis_width: u32) -> Self {
        let source_width = frame.width as usize;
        let source_height = frame.height as usize;
        let width = (analysis_width as usize).clamp(1, source_width);
        let height = (source_height * width / source_width).clamp(1, source_height);
        // Source column `x` goes to output column `column_of[x]`, source rows to output rows in
        // consecutive runs of `rows_in_bin`; as the output is no larger than the source, every
        // output pixel averages at least one source pixel.
        let column_of: Vec<usize> = (0..source_width)
            .map(|x| (x * width / source_width).min(width - 1))
            .collect();
        let mut columns_per_bin = vec![0u64; width];
        for &column in &column_of {
            columns_per_bin[column] += 1;
        }
        let mut pixels = Vec::with_capacity(width * height);
        // u64: a bin of a huge frame at a tiny analysis width can pass u32::MAX.
        let mut sums = vec![[0u64; 3]; width];
        let mut source_rows = frame.rgb.chunks_exact(source_width * 3);
        for row in 0..height {
            let rows_in_bin = (row + 1) * source_height / height - row * source_height / height;
            sums.fill([0; 3]);
            for source_row in source_rows.by_ref().take(rows_in_bin) {
                for (rgb, &column) in source_row.chunks_exact(3).zip(&column_of) {
                    let sum = &mut sums[column];
                    sum[0] += u64::from(rgb[0]);
                    sum[1] += u64::from(rgb[1]);
                    sum[2] += u64::from(rgb[2]);
                }
            }
            for (sum, &columns) in sums.iter().zip(&columns_per_bin) {
                let count = (columns * rows_in_bin as u64).max(1);
                pixels.push(sum.map(|channel| (channel / count) as u8));
            }
        }
        Self {
            width,
            height,
            pixels,
        }
    }
}

/// The per-pixel, per-channel median of `images` (all the same size).
fn median_background(images: &[SmallImage]) -> SmallImage {
    let (width, height) = images
        .first()
        .map_or((0, 0), |image| (image.width, image.height));
    let mut values = Vec::with_capacity(images.len());
    let pixels = (0..width * height)
        .map(|pixel| {
            [0, 1, 2].map(|channel| {
                values.clear();
                values.extend(
                    images
                        .iter()
                        .filter_map(|image| image.pixels.get(pixel))
                        .map(|rgb| rgb[channel]),
                );
                let middle = values.len() / 2;
                if values.is_empty() {
                    0
                } else {
                    *values.select_nth_unstable(middle).1
                }
            })
        })
        .collect();
    SmallImage {
        width,
        height,
        pixels,
    }
}

/// A binary image, row-major.
#[derive(Debug, Clone, PartialEq)]
struct Mask {
    width: usize,
    height: usize,
    set: Vec<bool>,
}

impl Mask {
    /// Set where any channel differs from the background by more than `threshold`: a red
    /// object on a grey wall of the same luma still shows.
    fn foreground(image: &SmallImage, background: &SmallImage, threshold: u8) -> Self {
        let set = image
            .pixels
            .iter()
            .zip(&background.pixels)
            .map(|(frame_rgb, background_rgb)| {
                frame_rgb
                    .iter()
                    .zip(background_rgb)
                    .any(|(&value, &background_value)| value.abs_diff(background_value) > threshold)
            })
            .collect();
        Self {
            width: image.width,
            height: image.height,
            set,
        }
    }

    fn count(&self) -> usize {
        self.set.iter().filter(|&&set| set).count()
    }

    fn dilated(&self, radius: usize) -> Self {
        self.square_filter(radius, true)
    }

    fn eroded(&self, radius: usize) -> Self {
        self.square_filter(radius, false)
    }

    /// Dilation (any neighbour set) or erosion (all neighbours set) with a square of side
    /// `2 * radius + 1`, done separably. Only neighbours inside the image count, so an object
    /// touching the border is not eaten away from outside.
    fn square_filter(&self, radius: usize, dilate: bool) -> Self {
        if radius == 0 || self.set.is_empty() {
            return self.clone();
        }
        // Dilation: any pixel of the window set; erosion: all of them.
        fn combine(mut window: impl Iterator<Item = bool>, dilate: bool) -> bool {
            if dilate {
                window.any(|set| set)
            } else {
                window.all(|set| set)
            }
        }
        let mut horizontal = vec![false; self.set.len()];
        for row in 0..self.height {
            let line = &self.set[row * self.width..(row + 1) * self.width];
            for column in 0..self.width {
                let from = column.saturating_sub(radius);
                let to = (column + radius + 1).min(self.width);
                horizontal[row * self.width + column] =
                    combine(line[from..to].iter().copied(), dilate);
            }
        }
        let mut set = vec![false; self.set.len()];
        for row in 0..self.height {
            let from = row.saturating_sub(radius);
            let to = (row + radius + 1).min(self.height);
            for column in 0..self.width {
                set[row * self.width + column] = combine(
                    (from..to).map(|neighbour| horizontal[neighbour * self.width + column]),
                    dilate,
                );
            }
        }
        Self {
            width: self.width,
            height: self.height,
            set,
        }
    }
}

/// A component's bounding box in analysis pixels (inclusive) and its pixel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelBox {
    min_x: usize,
    min_y: usize,
    max_x: usize,
    max_y: usize,
    area: usize,
}

impl PixelBox {
    /// Pixel `x` covers `[x, x + 1)`, hence `max + 1` on the far edges.
    fn normalised(&self, width: usize, height: usize) -> NormalizedBox {
        let width = width.max(1) as f32;
        let height = height.max(1) as f32;
        NormalizedBox {
            x0: (self.min_x as f32 / width).clamp(0.0, 1.0),
            y0: (self.min_y as f32 / height).clamp(0.0, 1.0),
            x1: ((self.max_x + 1) as f32 / width).clamp(0.0, 1.0),
            y1: ((self.max_y + 1) as f32 / height).clamp(0.0, 1.0),
        }
    }

    fn intersects(&self, other: &PixelBox) -> bool {
        self.min_x <= other.max_x
            && other.min_x <= self.max_x
            && self.min_y <= other.max_y
            && other.min_y <= self.max_y
    }

    fn merged(&self, other: &PixelBox) -> PixelBox {
        PixelBox {
            min_x: self.min_x.min(other.min_x),
            min_y: self.min_y.min(other.min_y),
            max_x: self.max_x.max(other.max_x),
            max_y: self.max_y.max(other.max_y),
            area: self.area + other.area,
        }
    }
}

/// Bounding boxes of the 8-connected components of `mask`, in raster order of their first
/// pixel.
fn connected_components(mask: &Mask) -> Vec<PixelBox> {
    let mut visited = vec![false; mask.set.len()];
    let mut components = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.set.len() {
        if !mask.set[start] || visited[start] {
            continue;
        }
        visited[start] = true;
        stack.push(start);
        let (start_x, start_y) = (start % mask.width, start / mask.width);
        let mut component = PixelBox {
            min_x: start_x,
            min_y: start_y,
            max_x: start_x,
            max_y: start_y,
            area: 0,
        };
        while let Some(pixel) = stack.pop() {
            let (x, y) = (pixel % mask.width, pixel / mask.width);
            component.area += 1;
            component.min_x = component.min_x.min(x);
            component.min_y = component.min_y.min(y);
            component.max_x = component.max_x.max(x);
            component.max_y = component.max_y.max(y);
            for neighbour_y in y.saturating_sub(1)..=(y + 1).min(mask.height - 1) {
                for neighbour_x in x.saturating_sub(1)..=(x + 1).min(mask.width - 1) {
                    let neighbour = neighbour_y * mask.width + neighbour_x;
                    if mask.set[neighbour] && !visited[neighbour] {
                        visited[neighbour] = true;
                        stack.push(neighbour);
                    }
                }
            }
        }
        components.push(component);
    }
    components
}

/// Merge boxes that intersect until none do: the parts of one object that the mask split
/// (an interior the colour of the background) become one box again.
fn merge_intersecting(mut boxes: Vec<PixelBox>) -> Vec<PixelBox> {
    let mut merged_any = true;
    while merged_any {
        merged_any = false;
        let mut kept: Vec<PixelBox> = Vec::with_capacity(boxes.len());
        for candidate in boxes {
            if let Some(existing) = kept.iter_mut().find(|kept| kept.intersects(&candidate)) {
                *existing = existing.merged(&candidate);
                merged_any = true;
            } else {
                kept.push(candidate);
            }
        }
        boxes = kept;
    }
    boxes
}

/// One analysed frame's boxes.
#[derive(Debug, Clone, PartialEq)]
struct FrameBoxes {
    pts_ms: u64,
    boxes: Vec<NormalizedBox>,
}

/// Greedy frame-to-frame linking: each frame's boxes continue the open tracks they match best
/// (highest IoU, then nearest centre), each track and box used once; the rest start tracks.
fn link_tracks(frames: &[FrameBoxes], settings: &RegionSettings) -> Vec<Vec<TrackBox>> {
    struct OpenTrack {
        boxes: Vec<TrackBox>,
        last_frame_position: usize,
    }
    let mut tracks: Vec<OpenTrack> = Vec::new();
    for (frame_position, frame) in frames.iter().enumerate() {
        let mut candidates = Vec::new();
        for (track_index, track) in tracks.iter().enumerate() {
            let steps = frame_position - track.last_frame_position;
            if steps > settings.max_gap_frames + 1 {
                continue;
            }
            let Some(last) = track.boxes.last() else {
                continue;
            };
            for (box_index, bbox) in frame.boxes.iter().enumerate() {
                let iou = box_iou(&last.bbox, bbox);
                let distance = box_centre_distance(&last.bbox, bbox);
                let (small, large) = {
                    let (left, right) = (box_area(&last.bbox), box_area(bbox));
                    (left.min(right), left.max(right))
                };
                let comparable = large > 0.0 && small / large >= MIN_LINK_AREA_RATIO;
                let near = distance <= settings.link_max_centre_distance * steps as f32;
                if iou >= settings.link_min_iou || (near && comparable) {
                    candidates.push((iou, distance, track_index, box_index));
                }
            }
        }
        candidates.sort_by(|left, right| {
            right
                .0
                .total_cmp(&left.0)
                .then(left.1.total_cmp(&right.1))
                .then(left.2.cmp(&right.2))
                .then(left.3.cmp(&right.3))
        });
        let mut track_taken = vec![false; tracks.len()];
        let mut box_taken = vec![false; frame.boxes.len()];
        for (_, _, track_index, box_index) in candidates {
            if track_taken[track_index] || box_taken[box_index] {
                continue;
            }
            track_taken[track_index] = true;
            box_taken[box_index] = true;
            let track = &mut tracks[track_index];
            track.boxes.push(TrackBox {
                pts_ms: frame.pts_ms,
                bbox: frame.boxes[box_index],
            });
            track.last_frame_position = frame_position;
        }
        for (bbox, taken) in frame.boxes.iter().zip(box_taken) {
            if !taken {
                tracks.push(OpenTrack {
                    boxes: vec![TrackBox {
                        pts_ms: frame.pts_ms,
                        bbox: *bbox,
                    }],
                    last_frame_position: frame_position,
                });
            }
        }
    }
    tracks.into_iter().map(|track| track.boxes).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BACKGROUND: [u8; 3] = [90, 110, 130];

    /// A `size × size` frame of a flat background with, optionally, a white square.
    fn frame_with_square(pts_ms: u64, size: u32, square: Option<(u32, u32, u32)>) -> Frame {
        frame_with_rectangle(
            pts_ms,
            size,
            size,
            square.map(|(left, top, side)| (left, top, side, side)),
        )
    }

    /// A `width × height` frame of a flat background with, optionally, a white
    /// `(left, top, rectangle_width, rectangle_height)` rectangle.
    fn frame_with_rectangle(
        pts_ms: u64,
        width: u32,
        height: u32,
        rectangle: Option<(u32, u32, u32, u32)>,
    ) -> Frame {
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let inside =
                    rectangle.is_some_and(|(left, top, rectangle_width, rectangle_height)| {
                        (left..left + rectangle_width).contains(&x)
                            && (top..top + rectangle_height).contains(&y)
                    });
                rgb.extend_from_slice(if inside {
                    &[240, 240, 240]
                } else {
                    &BACKGROUND
                });
            }
        }
        Frame {
            pts_ms,
            width,
            height,
            rgb,
            display_size: (0, 0),
        }
    }

    fn nbox(x0: f32, y0: f32, x1: f32, y1: f32) -> NormalizedBox {
        NormalizedBox { x0, y0, x1, y1 }
    }

    fn mask(rows: &[&str]) -> Mask {
        Mask {
            width: rows[0].len(),
            height: rows.len(),
            set: rows
                .iter()
                .flat_map(|row| row.chars().map(|cell| cell == '#'))
                .collect(),
        }
    }

    #[test]
    fn iou_union_and_area() {
        let left = nbox(0.0, 0.0, 0.5, 0.5);
        let right = nbox(0.25, 0.0, 0.75, 0.5);
        assert!((box_iou(&left, &right) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(box_iou(&left, &left), 1.0);
        assert_eq!(box_iou(&left, &nbox(0.6, 0.6, 0.9, 0.9)), 0.0);
        assert_eq!(
            box_iou(&nbox(0.2, 0.2, 0.2, 0.2), &nbox(0.2, 0.2, 0.2, 0.2)),
            0.0
        );
        assert_eq!(box_union(&left, &right), nbox(0.0, 0.0, 0.75, 0.5));
        assert_eq!(box_area(&nbox(0.5, 0.5, 0.4, 0.9)), 0.0);
    }

    #[test]
    fn components_are_eight_connected_with_exact_bounds() {
        let image = mask(&[
            "##......", //
            "##......", "..#...#.", "......##", "........", "#.......",
        ]);
        let components = connected_components(&image);
        assert_eq!(
            components,
            vec![
                // The diagonal pixel joins the 2x2 block.
                PixelBox {
                    min_x: 0,
                    min_y: 0,
                    max_x: 2,
                    max_y: 2,
                    area: 5
                },
                PixelBox {
                    min_x: 6,
                    min_y: 2,
                    max_x: 7,
                    max_y: 3,
                    area: 3
                },
                PixelBox {
                    min_x: 0,
                    min_y: 5,
                    max_x: 0,
                    max_y: 5,
                    area: 1
                },
            ]
        );
    }

    #[test]
    fn pixel_boxes_normalise_to_pixel_edges() {
        let component = PixelBox {
            min_x: 0,
            min_y: 10,
            max_x: 49,
            max_y: 24,
            area: 1,
        };
        assert_eq!(component.normalised(100, 50), nbox(0.0, 0.2, 0.5, 0.5));
        let whole = PixelBox {
            min_x: 0,
            min_y: 0,
            max_x: 3,
            max_y: 3,
            area: 16,
        };
        assert_eq!(whole.normalised(4, 4), nbox(0.0, 0.0, 1.0, 1.0));
    }

    #[test]
    fn opening_removes_specks_and_keeps_rectangles() {
        let image = mask(&[
            "........", //
            ".#......", "....###.", "....###.", "....###.", "........",
        ]);
        let opened = image.eroded(1).dilated(1);
        assert_eq!(
            opened,
            mask(&[
                "........", //
                "........", "....###.", "....###.", "....###.", "........",
            ])
        );
        // A rectangle on the border survives erosion: outside pixels do not count.
        let border = mask(&["###.", "###.", "###.", "...."]);
        assert_eq!(border.eroded(1).dilated(1), border);
    }

    #[test]
    fn intersecting_boxes_merge_transitively() {
        let boxes = vec![
            PixelBox {
                min_x: 0,
                min_y: 0,
                max_x: 4,
                max_y: 4,
                area: 10,
            },
            PixelBox {
                min_x: 10,
                min_y: 0,
                max_x: 12,
                max_y: 2,
                area: 5,
            },
            PixelBox {
                min_x: 4,
                min_y: 4,
                max_x: 10,
                max_y: 6,
                area: 7,
            },
        ];
        assert_eq!(
            merge_intersecting(boxes),
            vec![PixelBox {
                min_x: 0,
                min_y: 0,
                max_x: 12,
                max_y: 6,
                area: 22
            }]
        );
    }

    #[test]
    fn linking_follows_overlap_and_distance_and_allows_one_gap() {
        let settings = RegionSettings::default();
        let frames = vec![
            FrameBoxes {
                pts_ms: 0,
                boxes: vec![nbox(0.0, 0.0, 0.2, 0.2), nbox(0.7, 0.7, 0.9, 0.9)],
            },
            FrameBoxes {
                pts_ms: 100,
                // Listed in the other order: matching is by geometry, not position.
                boxes: vec![nbox(0.7, 0.6, 0.9, 0.8), nbox(0.1, 0.0, 0.3, 0.2)],
            },
            // The first object is missed on this frame; the second jumps without overlap.
            FrameBoxes {
                pts_ms: 200,
                boxes: vec![nbox(0.7, 0.45, 0.9, 0.65)],
            },
            FrameBoxes {
                pts_ms: 300,
                boxes: vec![nbox(0.3, 0.0, 0.5, 0.2)],
            },
        ];
        let tracks = link_tracks(&frames, &settings);
        let times: Vec<Vec<u64>> = tracks
            .iter()
            .map(|track| track.iter().map(|timed| timed.pts_ms).collect())
            .collect();
        assert_eq!(times, vec![vec![0, 100, 300], vec![0, 100, 200]]);
        assert_eq!(tracks[0][2].bbox, nbox(0.3, 0.0, 0.5, 0.2));
        assert_eq!(tracks[1][2].bbox, nbox(0.7, 0.45, 0.9, 0.65));
    }

    #[test]
    fn linking_does_not_join_far_or_mismatched_boxes() {
        let settings = RegionSettings::default();
        let frames = vec![
            FrameBoxes {
                pts_ms: 0,
                boxes: vec![nbox(0.0, 0.0, 0.1, 0.1)],
            },
            // Far away.
            FrameBoxes {
                pts_ms: 100,
                boxes: vec![nbox(0.8, 0.8, 0.9, 0.9)],
            },
            // Near the second box but much larger, without enough overlap.
            FrameBoxes {
                pts_ms: 200,
                boxes: vec![nbox(0.5, 0.5, 1.0, 1.0)],
            },
        ];
        assert_eq!(link_tracks(&frames, &settings).len(), 3);
    }

    #[test]
    fn a_moving_square_is_boxed_on_every_frame() -> Result<(), RegionError> {
        // 224 px frames analysed at 112: the square's edges fall on analysis pixel edges.
        let frames: Vec<Frame> = (0..8)
            .map(|index| {
                frame_with_square(index * 250, 224, Some((20 + 20 * index as u32, 60, 40)))
            })
            .collect();
        let tracks = motion_tracks(&frames, &RegionSettings::default())?;
        assert_eq!(tracks.len(), 1, "{tracks:?}");
        let track = &tracks[0];
        assert_eq!(track.kind, RegionKind::Motion);
        assert_eq!(track.boxes.len(), 8);
        assert_eq!(track.span, TimeRange::new(0, 1_750));
        for (index, timed) in track.boxes.iter().enumerate() {
            let left = (20 + 20 * index) as f32 / 224.0;
            let expected = nbox(left, 60.0 / 224.0, left + 40.0 / 224.0, 100.0 / 224.0);
            assert_eq!(timed.pts_ms, index as u64 * 250);
            assert!(
                box_iou(&timed.bbox, &expected) > 0.95,
                "frame {index}: {:?} vs {expected:?}",
                timed.bbox
            );
        }
        assert!(
            box_iou(
                &track.union,
                &nbox(20.0 / 224.0, 60.0 / 224.0, 200.0 / 224.0, 100.0 / 224.0)
            ) > 0.95
        );
        Ok(())
    }

    #[test]
    fn boxes_in_a_wide_frame_are_normalised_per_axis() -> Result<(), RegionError> {
        // 320x160 analysed at 160x80: a 40x20 rectangle moving down and right.
        let frames: Vec<Frame> = (0..6)
            .map(|index| {
                frame_with_rectangle(
                    index * 100,
                    320,
                    160,
                    Some((40 * index as u32, 20 * index as u32, 40, 20)),
                )
            })
            .collect();
        let settings = RegionSettings {
            analysis_width: 160,
            ..RegionSettings::default()
        };
        let tracks = motion_tracks(&frames, &settings)?;
        assert_eq!(tracks.len(), 1, "{tracks:?}");
        for (index, timed) in tracks[0].boxes.iter().enumerate() {
            let left = index as f32 * 0.125;
            let top = index as f32 * 0.125;
            assert_eq!(timed.bbox, nbox(left, top, left + 0.125, top + 0.125));
        }
        Ok(())
    }

    #[test]
    fn frames_are_ordered_by_time_and_repeats_ignored() -> Result<(), RegionError> {
        let mut frames: Vec<Frame> = (0..6)
            .map(|index| frame_with_square(index * 100, 64, Some((4 + 8 * index as u32, 20, 12))))
            .collect();
        frames.reverse();
        frames.push(frames[0].clone());
        let tracks = motion_tracks(&frames, &RegionSettings::default())?;
        assert_eq!(tracks.len(), 1, "{tracks:?}");
        let times: Vec<u64> = tracks[0].boxes.iter().map(|timed| timed.pts_ms).collect();
        assert_eq!(times, vec![0, 100, 200, 300, 400, 500]);
        Ok(())
    }

    #[test]
    fn a_static_scene_with_noise_has_no_motion() -> Result<(), RegionError> {
        // A fixed square on the background, plus deterministic per-frame noise of ±12.
        let mut seed = 0x2545_f491_u32;
        let frames: Vec<Frame> = (0..16)
            .map(|index| {
                let mut frame = frame_with_square(index * 500, 128, Some((30, 30, 40)));
                for value in &mut frame.rgb {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let noise = (seed % 25) as i16 - 12;
                    *value = (i16::from(*value) + noise).clamp(0, 255) as u8;
                }
                frame
            })
            .collect();
        assert!(motion_tracks(&frames, &RegionSettings::default())?.is_empty());
        // The grid stands in: 4 cells, each over every frame.
        let grid = propose_regions(&frames, &RegionSettings::default())?;
        assert_eq!(grid.len(), 4);
        assert!(grid.iter().all(|track| track.kind == RegionKind::Grid
            && track.boxes.len() == 16
            && track.span == TimeRange::new(0, 7_500)));
        assert_eq!(grid[3].union, nbox(0.5, 0.5, 1.0, 1.0));
        Ok(())
    }

    #[test]
    fn a_global_change_is_not_a_region() -> Result<(), RegionError> {
        // The lights go on for one frame: the whole frame differs, and is skipped.
        let frames: Vec<Frame> = (0..6)
            .map(|index| {
                let mut frame = frame_with_square(index * 100, 32, None);
                if index == 3 {
                    frame.rgb.fill(250);
                }
                frame
            })
            .collect();
        assert!(motion_tracks(&frames, &RegionSettings::default())?.is_empty());
        Ok(())
    }

    #[test]
    fn odd_inputs_are_empty_or_typed_errors() {
        let settings = RegionSettings::default();
        assert_eq!(motion_tracks(&[], &settings), Ok(Vec::new()));
        assert!(coarse_grid(&[], &settings).is_empty());
        let one = frame_with_square(0, 16, Some((2, 2, 4)));
        assert_eq!(
            motion_tracks(std::slice::from_ref(&one), &settings),
            Ok(Vec::new())
        );
        let two = frame_with_square(100, 16, Some((8, 8, 4)));
        assert_eq!(
            motion_tracks(&[one.clone(), two], &settings),
            Ok(Vec::new())
        );

        let other_size = frame_with_square(100, 20, None);
        assert!(matches!(
            motion_tracks(&[one.clone(), other_size], &settings),
            Err(RegionError::FrameSizeMismatch {
                frame_index: 1,
                width: 20,
                ..
            })
        ));
        let mut short = one.clone();
        short.rgb.pop();
        assert!(matches!(
            motion_tracks(&[one.clone(), short], &settings),
            Err(RegionError::FrameBufferSize { frame_index: 1, .. })
        ));
        let empty = Frame {
            pts_ms: 0,
            width: 0,
            height: 0,
            rgb: Vec::new(),
            display_size: (0, 0),
        };
        assert_eq!(
            motion_tracks(&[empty], &settings),
            Err(RegionError::EmptyFrame { frame_index: 0 })
        );
        let bad = RegionSettings {
            link_min_iou: f32::NAN,
            ..RegionSettings::default()
        };
        let error = motion_tracks(&[one], &bad).expect_err("NaN setting");
        assert!(error.to_string().contains("link_min_iou"), "{error}");
        assert_eq!(error.code(), ErrorCode::InvalidInput);
    }

    #[test]
    fn grid_cells_tile_the_frame() {
        let frames = [
            frame_with_square(40, 8, None),
            frame_with_square(0, 8, None),
        ];
        let settings = RegionSettings {
            grid_cells_per_side: 3,
            ..RegionSettings::default()
        };
        let grid = coarse_grid(&frames, &settings);
        assert_eq!(grid.len(), 9);
        let total_area: f32 = grid.iter().map(|track| box_area(&track.union)).sum();
        assert!((total_area - 1.0).abs() < 1e-5);
        assert_eq!(grid[0].boxes[0].pts_ms, 0, "boxes in time order");
        assert_eq!(grid[8].union.x1, 1.0);
        let zero = RegionSettings {
            grid_cells_per_side: 0,
            ..RegionSettings::default()
        };
        assert_eq!(
            coarse_grid(&frames, &zero)[0].union,
            nbox(0.0, 0.0, 1.0, 1.0)
        );
    }

    #[test]
    fn settings_read_partially_from_json() -> Result<(), serde_json::Error> {
        let settings: RegionSettings = serde_json::from_str(r#"{"max_tracks": 3}"#)?;
        assert_eq!(settings.max_tracks, 3);
        assert_eq!(
            settings.analysis_width,
            RegionSettings::default().analysis_width
        );
        assert!(serde_json::from_str::<RegionSettings>(r#"{"max_trakcs": 3}"#).is_err());
        Ok(())
    }

    proptest! {
        #[test]
        fn any_frames_give_well_formed_tracks_or_errors(
            size in 1u32..24,
            pixels in proptest::collection::vec(any::<u8>(), 0..(24 * 24 * 3 * 6)),
            frame_count in 0usize..6,
            analysis_width in 1u32..40,
        ) {
            let frame_bytes = (size * size * 3) as usize;
            let frames: Vec<Frame> = (0..frame_count)
                .map(|index| Frame {
                    pts_ms: (index as u64 * 37) % 100,
                    width: size,
                    height: size,
                    rgb: pixels.iter().copied().cycle().skip(index * 7).take(frame_bytes).collect(), display_size: (0, 0),
                })
                .collect();
            let settings = RegionSettings { analysis_width, min_track_frames: 1, ..RegionSettings::default() };
            // An empty pixel pool gives short frames: an error, never a panic.
            if let Ok(tracks) = motion_tracks(&frames, &settings) {
                prop_assert!(tracks.len() <= settings.max_tracks);
                for track in tracks {
                    prop_assert!(!track.boxes.is_empty());
                    prop_assert!(track.boxes.windows(2).all(|pair| pair[0].pts_ms < pair[1].pts_ms));
                    for timed in &track.boxes {
                        let bbox = timed.bbox;
                        prop_assert!(0.0 <= bbox.x0 && bbox.x0 < bbox.x1 && bbox.x1 <= 1.0);
                        prop_assert!(0.0 <= bbox.y0 && bbox.y0 < bbox.y1 && bbox.y1 <= 1.0);
                        prop_assert_eq!(box_union(&track.union, &bbox), track.union);
                    }
                    prop_assert_eq!(track.span.start_ms, track.boxes[0].pts_ms);
                }
            }
        }

        #[test]
        fn iou_is_symmetric_and_bounded(
            a in proptest::array::uniform4(0.0f32..1.0),
            b in proptest::array::uniform4(0.0f32..1.0),
        ) {
            let left = nbox(a[0], a[1], a[2], a[3]);
            let right = nbox(b[0], b[1], b[2], b[3]);
            let iou = box_iou(&left, &right);
            prop_assert!((0.0..=1.0).contains(&iou));
            prop_assert_eq!(iou, box_iou(&right, &left));
        }
    }
}
