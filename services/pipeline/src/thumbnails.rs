//! Thumbnails: a small JPEG per point, made at index time from the frames already sampled
//! (no second decode). A moment, segment or frame record shows the sampled frame nearest the
//! middle of its time span; a region record shows its box cropped from its middle frame. The
//! frames reach the models squashed square; the thumbnail restores the source's shape from
//! [`Frame::display_size`].

use std::sync::Arc;

use vidx_core::{Frame, NormalizedBox, RecordKind, SegmentTask, Thumbnail, TimeRange, point_id};

/// Width of a frame thumbnail (the height follows the source's shape); a region thumbnail's
/// longer side.
pub const THUMBNAIL_SIDE: u32 = 320;
/// JPEG quality: small files (≈ 10–20 kB at 320 px) that still read well in a grid.
const QUALITY: u8 = 78;

/// The index of the sampled frame nearest the middle of `range`.
pub fn nearest_frame(frames: &[Frame], range: TimeRange) -> Option<usize> {
    let middle = range.start_ms + range.duration_ms() / 2;
    frames
        .iter()
        .enumerate()
        .min_by_key(|(_, frame)| frame.pts_ms.abs_diff(middle))
        .map(|(index, _)| index)
}

/// The frames of one segment as thumbnails, each encoded once however many points show it.
pub struct SegmentThumbnails<'a> {
    task: &'a SegmentTask,
    frames: &'a [Frame],
    encoded: Vec<Option<Option<Thumbnail>>>,
}

impl<'a> SegmentThumbnails<'a> {
    pub fn new(task: &'a SegmentTask, frames: &'a [Frame]) -> Self {
        Self {
            task,
            frames,
            encoded: vec![None; frames.len()],
        }
    }

    /// The thumbnail of the frame nearest the middle of `range`; `None` without frames.
    pub fn for_range(&mut self, range: TimeRange) -> Option<Thumbnail> {
        let index = nearest_frame(self.frames, range)?;
        self.for_frame(index)
    }

    /// The thumbnail of sampled frame `index`.
    pub fn for_frame(&mut self, index: usize) -> Option<Thumbnail> {
        let frame = self.frames.get(index)?;
        if let Some(done) = &self.encoded[index] {
            return done.clone();
        }
        let thumbnail = frame_jpeg(frame).map(|jpeg| Thumbnail {
            key: key(point_id(
                &self.task.tenant,
                &self.task.stream_id,
                self.task.segment_seq,
                self.task.range.start_ms,
                RecordKind::Frame,
                index as u32,
                "thumbnail",
            )),
            jpeg: Arc::new(jpeg),
        });
        self.encoded[index] = Some(thumbnail.clone());
        thumbnail
    }

    /// The box of a region record, cropped from the frame nearest the middle of its span;
    /// `id` is the region point's id.
    pub fn for_region(
        &self,
        id: uuid::Uuid,
        range: TimeRange,
        bbox: &NormalizedBox,
    ) -> Option<Thumbnail> {
        let frame = &self.frames[nearest_frame(self.frames, range)?];
        region_jpeg(frame, bbox).map(|jpeg| Thumbnail {
            key: key(id),
            jpeg: Arc::new(jpeg),
        })
    }
}

fn key(id: uuid::Uuid) -> String {
    format!("thumbnails/{id}.jpg")
}

/// `frame` as a JPEG [`THUMBNAIL_SIDE`] wide, in the source's shape.
pub fn frame_jpeg(frame: &Frame) -> Option<Vec<u8>> {
    let (display_width, display_height) = display_size(frame);
    let width = THUMBNAIL_SIDE;
    let height = scaled(display_height, width, display_width);
    let rgb = resize(
        &frame.rgb,
        frame.width,
        frame.height,
        (0, 0, frame.width, frame.height),
        width,
        height,
    )?;
    encode(&rgb, width, height)
}

/// The part of `frame` inside `bbox`, as a JPEG whose longer side is [`THUMBNAIL_SIDE`] (or
/// the crop's own size in source pixels, if smaller), in the source's shape.
pub fn region_jpeg(frame: &Frame, bbox: &NormalizedBox) -> Option<Vec<u8>> {
    let clamp = |value: f32| value.clamp(0.0, 1.0);
    let (x0, x1) = (clamp(bbox.x0.min(bbox.x1)), clamp(bbox.x0.max(bbox.x1)));
    let (y0, y1) = (clamp(bbox.y0.min(bbox.y1)), clamp(bbox.y0.max(bbox.y1)));
    let to_pixels = |value: f32, side: u32| ((value * side as f32).round() as u32).min(side);
    let (left, right) = (to_pixels(x0, frame.width), to_pixels(x1, frame.width));
    let (top, bottom) = (to_pixels(y0, frame.height), to_pixels(y1, frame.height));
    if right <= left || bottom <= top {
        return None;
    }
    let (display_width, display_height) = display_size(frame);
    // The crop's size in source pixels: its shape, and a bound on the thumbnail's size.
    let crop_width = ((x1 - x0) * display_width as f32).max(1.0);
    let crop_height = ((y1 - y0) * display_height as f32).max(1.0);
    let longer = crop_width.max(crop_height);
    let side = (THUMBNAIL_SIDE as f32).min(longer.max(16.0));
    let width = ((crop_width / longer * side).round() as u32).max(1);
    let height = ((crop_height / longer * side).round() as u32).max(1);
    let rgb = resize(
        &frame.rgb,
        frame.width,
        frame.height,
        (left, top, right, bottom),
        width,
        height,
    )?;
    encode(&rgb, width, height)
}

fn display_size(frame: &Frame) -> (u32, u32) {
    match frame.display_size {
        (0, _) | (_, 0) => (frame.width.max(1), frame.height.max(1)),
        size => size,
    }
}

/// `value * numerator / denominator`, rounded, within 1..=4×THUMBNAIL_SIDE.
fn scaled(value: u32, numerator: u32, denominator: u32) -> u32 {
    let result = (u64::from(value) * u64::from(numerator) + u64::from(denominator) / 2)
        / u64::from(denominator.max(1));
    (result as u32).clamp(1, 4 * THUMBNAIL_SIDE)
}

/// Bilinear resampling of the `(left, top, right, bottom)` part of a packed-RGB image to
/// `width × height`. `None` when the image is not `source_width × source_height`.
fn resize(
    rgb: &[u8],
    source_width: u32,
    source_height: u32,
    (left, top, right, bottom): (u32, u32, u32, u32),
    width: u32,
    height: u32,
) -> Option<Vec<u8>> {
    let (sw, sh) = (source_width as usize, source_height as usize);
    if sw == 0
        || sh == 0
        || rgb.len() != sw * sh * 3
        || right > source_width
        || bottom > source_height
    {
        return None;
    }
    let (crop_width, crop_height) = (f64::from(right - left), f64::from(bottom - top));
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        // Pixel centres, as image scalers map them.
        let source_y =
            (f64::from(y) + 0.5) * crop_height / f64::from(height) - 0.5 + f64::from(top);
        let y0 = source_y
            .floor()
            .clamp(f64::from(top), f64::from(bottom - 1)) as usize;
        let y1 = (y0 + 1).min(bottom as usize - 1);
        let fy = (source_y - y0 as f64).clamp(0.0, 1.0);
        for x in 0..width {
            let source_x =
                (f64::from(x) + 0.5) * crop_width / f64::from(width) - 0.5 + f64::from(left);
            let x0 = source_x
                .floor()
                .clamp(f64::from(left), f64::from(right - 1)) as usize;
            let x1 = (x0 + 1).min(right as usize - 1);
            let fx = (source_x - x0 as f64).clamp(0.0, 1.0);
            for channel in 0..3 {
                let at = |x: usize, y: usize| f64::from(rgb[(y * sw + x) * 3 + channel]);
                let top_row = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
                let bottom_row = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
                out.push((top_row * (1.0 - fy) + bottom_row * fy).round() as u8);
            }
        }
    }
    Some(out)
}

fn encode(rgb: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    let (width, height) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, QUALITY)
        .encode(rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    Some(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pts_ms: u64, display_size: (u32, u32)) -> Frame {
        // 8×8, left half red, right half blue.
        let rgb = (0..64)
            .flat_map(|pixel| {
                if pixel % 8 < 4 {
                    [255, 0, 0]
                } else {
                    [0, 0, 255]
                }
            })
            .collect();
        Frame {
            pts_ms,
            width: 8,
            height: 8,
            rgb,
            display_size,
        }
    }

    /// Width and height of a baseline JPEG (its SOF0 marker).
    fn jpeg_size(jpeg: &[u8]) -> (u32, u32) {
        let at = jpeg
            .windows(2)
            .position(|marker| marker == [0xFF, 0xC0])
            .expect("SOF0");
        let height = u32::from(u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]));
        let width = u32::from(u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]));
        (width, height)
    }

    #[test]
    fn thumbnails_keep_the_source_shape() {
        let wide = frame_jpeg(&frame(0, (1920, 1080))).expect("jpeg");
        assert_eq!(jpeg_size(&wide), (320, 180));
        let portrait = frame_jpeg(&frame(0, (1080, 1920))).expect("jpeg");
        assert_eq!(jpeg_size(&portrait), (320, 569));
        let unknown = frame_jpeg(&frame(0, (0, 0))).expect("jpeg");
        assert_eq!(jpeg_size(&unknown), (320, 320));
        // The right half of a 1920×1080 picture: 960×1080 source pixels, 284×320.
        let half = NormalizedBox {
            x0: 0.5,
            y0: 0.0,
            x1: 1.0,
            y1: 1.0,
        };
        let region = region_jpeg(&frame(0, (1920, 1080)), &half).expect("jpeg");
        assert_eq!(jpeg_size(&region), (284, 320));
    }

    #[test]
    fn a_crop_shows_what_is_inside_the_box() {
        let rgb = resize(&frame(0, (8, 8)).rgb, 8, 8, (4, 0, 8, 8), 2, 2).expect("resize");
        assert!(rgb.chunks(3).all(|pixel| pixel == [0, 0, 255]), "{rgb:?}");
        let rgb = resize(&frame(0, (8, 8)).rgb, 8, 8, (0, 0, 4, 8), 2, 2).expect("resize");
        assert!(rgb.chunks(3).all(|pixel| pixel == [255, 0, 0]), "{rgb:?}");
    }

    #[test]
    fn the_frame_nearest_the_middle_is_chosen() {
        let frames: Vec<Frame> = [0, 1_000, 2_000, 3_000]
            .iter()
            .map(|&pts| frame(pts, (8, 8)))
            .collect();
        assert_eq!(
            nearest_frame(&frames, TimeRange::new(1_800, 2_600)),
            Some(2)
        );
        assert_eq!(nearest_frame(&frames, TimeRange::new(0, 400)), Some(0));
        assert_eq!(nearest_frame(&[], TimeRange::new(0, 400)), None);
    }
}
