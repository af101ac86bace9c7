//! PerceptionLM's processor: video frames squashed to the tile size, images tiled on the
//! best grid with a thumbnail first (transformers `PerceptionLMImageProcessor`, "thumb+tile"),
//! normalisation, the red rectangle of PLM's region prompts, and the chat template with its
//! placeholder tokens.
//!
//! Resizing is the separable antialiased bicubic filter (a = −0.5) that torchvision applies
//! to uint8 images on the CPU (torch's native uint8 kernel, after PIL's): per axis, the
//! normalised weights quantised to int16, a horizontal pass in integers rounded to u8, then
//! a vertical pass — so that the pixels are the reference's to the level.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use vidx_core::{ModelError, NormalizedBox};

/// An RGB image, row-major, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, String> {
        if data.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(format!(
                "{} bytes do not make a {width}x{height} RGB image",
                data.len()
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Squash-resize to `width` × `height` (no aspect preservation), bicubic.
    pub fn resized(&self, width: usize, height: usize) -> RgbImage {
        self.resized_with(width, height, Filter::Bicubic)
    }

    /// Squash-resize with PIL's antialiased `filter`.
    pub fn resized_with(&self, width: usize, height: usize, filter: Filter) -> RgbImage {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let horizontal = if width == self.width {
            self.data.clone()
        } else {
            resample_axis(
                &self.data,
                self.width,
                self.height,
                width,
                Axis::Horizontal,
                filter,
            )
        };
        let data = if height == self.height {
            horizontal
        } else {
            resample_axis(
                &horizontal,
                width,
                self.height,
                height,
                Axis::Vertical,
                filter,
            )
        };
        RgbImage {
            width,
            height,
            data,
        }
    }

    /// The `tile`-sized square at grid cell (`column`, `row`).
    fn tile(&self, column: usize, row: usize, tile: usize) -> RgbImage {
        let mut data = Vec::with_capacity(tile * tile * 3);
        for y in row * tile..(row + 1) * tile {
            let start = (y * self.width + column * tile) * 3;
            data.extend_from_slice(&self.data[start..start + tile * 3]);
        }
        RgbImage {
            width: tile,
            height: tile,
            data,
        }
    }

    /// Draw an axis-aligned rectangle outline `thickness` px wide (inside the box), clipped.
    pub fn draw_rectangle(&mut self, region: &NormalizedBox, color: [u8; 3], thickness: usize) {
        let to_px = |value: f32, size: usize| {
            ((value.clamp(0.0, 1.0) * size as f32).round() as usize).min(size.saturating_sub(1))
        };
        let (x1, x2) = (to_px(region.x0, self.width), to_px(region.x1, self.width));
        let (y1, y2) = (to_px(region.y0, self.height), to_px(region.y1, self.height));
        if x2 < x1 || y2 < y1 {
            return;
        }
        for y in y1..=y2 {
            for x in x1..=x2 {
                let on_edge = x < x1 + thickness
                    || x + thickness > x2
                    || y < y1 + thickness
                    || y + thickness > y2;
                if on_edge {
                    let offset = (y * self.width + x) * 3;
                    self.data[offset..offset + 3].copy_from_slice(&color);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Axis {
    Horizontal,
    Vertical,
}

/// PIL's resampling filters: PLM resizes bicubic, PE-Core bilinear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bicubic,
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
        }
    }
}

/// PIL's bicubic kernel (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the normalised weights (PIL's
/// `precompute_coeffs`, as torch computes them: the support widens by the scale when
/// downsampling — antialiasing).
fn coefficients(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let support = filter.support() * scale.max(1.0);
    let inverse = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|index| {
            let center = scale * (index as f64 + 0.5);
            let first = ((center - support + 0.5).trunc().max(0.0)) as usize;
            let last = ((center + support + 0.5).trunc() as usize).min(input);
            let mut weights: Vec<f64> = (first..last)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|weight| *weight /= total);
            }
            (first, weights)
        })
        .collect()
}

/// One axis's weights in fixed point, as torch's uint8 kernel quantises them: int16 with
/// as many fraction bits (at most 22) as the largest weight leaves room for, each rounded
/// half away from zero.
struct FixedWeights {
    table: Vec<(usize, Vec<i32>)>,
    precision: u32,
}

impl FixedWeights {
    fn new(input: usize, output: usize, filter: Filter) -> Self {
        let table = coefficients(input, output, filter);
        let largest = table
            .iter()
            .flat_map(|(_, weights)| weights.iter().copied())
            .fold(0.0f64, f64::max);
        let mut precision = 0u32;
        while precision < 22 {
            let next = (0.5 + largest * f64::from(1u32 << (precision + 1))) as i64;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }
        let one = f64::from(1u32 << precision);
        let table = table
            .into_iter()
            .map(|(first, weights)| {
                let fixed = weights
                    .iter()
                    .map(|weight| {
                        let value = weight * one;
                        (if value < 0.0 {
                            value - 0.5
                        } else {
                            value + 0.5
                        }) as i32
                    })
                    .collect();
                (first, fixed)
            })
            .collect();
        Self { table, precision }
    }

    /// The weighted sum of `samples` for output `index`, rounded and clamped to u8.
    fn apply(&self, index: usize, sample: impl Fn(usize) -> u8) -> u8 {
        let (first, weights) = &self.table[index];
        let mut sum: i32 = 1 << (self.precision.max(1) - 1);
        for (offset, weight) in weights.iter().enumerate() {
            sum += i32::from(sample(first + offset)) * weight;
        }
        (sum >> self.precision).clamp(0, 255) as u8
    }
}

fn resample_axis(
    data: &[u8],
    width: usize,
    height: usize,
    size: usize,
    axis: Axis,
    filter: Filter,
) -> Vec<u8> {
    let (input, out_width, out_height) = match axis {
        Axis::Horizontal => (width, size, height),
        Axis::Vertical => (height, width, size),
    };
    let weights = FixedWeights::new(input, size, filter);
    let mut output = vec![0u8; out_width * out_height * 3];
    for y in 0..out_height {
        for x in 0..out_width {
            let target = (y * out_width + x) * 3;
            for channel in 0..3 {
                output[target + channel] = match axis {
                    Axis::Horizontal => weights.apply(x, |sx| data[(y * width + sx) * 3 + channel]),
                    Axis::Vertical => weights.apply(y, |sy| data[(sy * width + x) * 3 + channel]),
                };
            }
        }
    }
    output
}

/// How images become tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionInputType {
    /// A thumbnail of the whole image, then the tiles of the best grid.
    ThumbTile,
    /// A single squashed tile.
    Vanilla,
}

/// `processor_config.json` / `preprocessor_config.json`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub tile_size: usize,
    pub max_num_tiles: usize,
    pub vision_input_type: VisionInputType,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub video_size: usize,
}

#[derive(Deserialize)]
struct ImageJson {
    tile_size: Option<usize>,
    max_num_tiles: Option<usize>,
    vision_input_type: Option<String>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

#[derive(Deserialize)]
struct VideoJson {
    size: Option<SizeJson>,
}

#[derive(Deserialize)]
struct SizeJson {
    height: usize,
    width: usize,
}

impl ProcessorConfig {
    /// PLM's published defaults for a tower of `image_size` pixels.
    pub fn defaults(image_size: usize) -> Self {
        Self {
            tile_size: image_size,
            max_num_tiles: 36,
            vision_input_type: VisionInputType::ThumbTile,
            mean: [0.5; 3],
            std: [0.5; 3],
            video_size: image_size,
        }
    }

    /// Read a processor config file (either the combined `processor_config.json` with
    /// `image_processor`/`video_processor` sections or a flat `preprocessor_config.json`);
    /// missing values keep the defaults.
    pub fn from_file(path: &Path, image_size: usize, model: &str) -> Result<Self, ModelError> {
        let unsupported = |field: &str, reason: String| ModelError::UnsupportedConfig {
            model: model.into(),
            field: format!("{}: {field}", path.display()),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::Load {
            model: model.into(),
            reason: format!("{}: {error}", path.display()),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| unsupported("*", error.to_string()))?;
        let image_value = value.get("image_processor").unwrap_or(&value);
        let image: ImageJson = serde_json::from_value(image_value.clone())
            .map_err(|error| unsupported("image_processor", error.to_string()))?;
        let mut config = Self::defaults(image_size);
        if let Some(tile) = image.tile_size {
            config.tile_size = tile;
            config.video_size = tile;
        }
        if let Some(tiles) = image.max_num_tiles {
            config.max_num_tiles = tiles.max(1);
        }
        match image.vision_input_type.as_deref() {
            None | Some("thumb+tile") => {}
            Some("vanilla") => config.vision_input_type = VisionInputType::Vanilla,
            Some(other) => {
                return Err(unsupported(
                    "vision_input_type",
                    format!("`{other}`: only thumb+tile and vanilla"),
                ));
            }
        }
        config.mean = image.image_mean.unwrap_or(config.mean);
        config.std = image.image_std.unwrap_or(config.std);
        if let Some(video) = value.get("video_processor") {
            let video: VideoJson = serde_json::from_value(video.clone())
                .map_err(|error| unsupported("video_processor", error.to_string()))?;
            if let Some(size) = video.size {
                if size.height != size.width {
                    return Err(unsupported(
                        "video_processor.size",
                        format!("{}x{}: only square frames", size.width, size.height),
                    ));
                }
                config.video_size = size.height;
            }
        }
        if config.tile_size != image_size || config.video_size != image_size {
            return Err(unsupported(
                "tile_size",
                format!(
                    "tiles of {} px and frames of {} px do not match the vision tower's {image_size} px",
                    config.tile_size, config.video_size
                ),
            ));
        }
        Ok(config)
    }

    /// Thumbnail first, then the tiles row-major.
    pub fn image_tiles(&self, image: &RgbImage) -> Vec<RgbImage> {
        let tile = self.tile_size;
        let thumbnail = image.resized(tile, tile);
        if self.vision_input_type == VisionInputType::Vanilla {
            return vec![thumbnail];
        }
        let (columns, rows) = tile_grid(image.width, image.height, tile, self.max_num_tiles);
        let canvas = image.resized(columns * tile, rows * tile);
        let mut tiles = vec![thumbnail];
        for row in 0..rows {
            for column in 0..columns {
                tiles.push(canvas.tile(column, row, tile));
            }
        }
        tiles
    }

    /// A video frame squashed to the frame size.
    pub fn video_frame(&self, frame: &RgbImage) -> RgbImage {
        frame.resized(self.video_size, self.video_size)
    }

    /// `[N, 3, S, S]` normalised pixel values: `(x/255 − mean) / std`.
    pub fn pixel_values(
        &self,
        images: &[RgbImage],
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let Some(first) = images.first() else {
            candle_core::bail!("no images");
        };
        let (width, height) = (first.width, first.height);
        let plane = width * height;
        let mut values = vec![0f32; images.len() * 3 * plane];
        for (index, image) in images.iter().enumerate() {
            if image.width != width || image.height != height {
                candle_core::bail!("images of different sizes");
            }
            let base = index * 3 * plane;
            for (pixel, rgb) in image.data.chunks_exact(3).enumerate() {
                for channel in 0..3 {
                    values[base + channel * plane + pixel] =
                        (f32::from(rgb[channel]) / 255.0 - self.mean[channel]) / self.std[channel];
                }
            }
        }
        Tensor::from_vec(values, (images.len(), 3, height, width), device)?.to_dtype(dtype)
    }
}

/// The tile grid `(columns, rows)` for an image (transformers' `_fit_image_to_canvas`, else
/// `_find_closest_aspect_ratio`): among grids of at most `max_tiles` whose canvas covers the
/// image, the one where the aspect-preserving upscale is largest (later grids win ties);
/// otherwise the closest aspect ratio.
pub fn tile_grid(width: usize, height: usize, tile: usize, max_tiles: usize) -> (usize, usize) {
    if max_tiles <= 1 {
        return (1, 1);
    }
    // Aspect-ratio buckets in first-seen order, each with its grids.
    let mut buckets: Vec<Bucket> = Vec::new();
    for count in (1..=max_tiles).rev() {
        let mut factors: Vec<usize> = (1..=count).filter(|x| count % x == 0).collect();
        factors.sort_unstable();
        for columns in factors {
            let grid = (columns, count / columns);
            let ratio = grid.0 as f64 / grid.1 as f64;
            match buckets.iter_mut().find(|(key, _)| *key == ratio) {
                Some((_, grids)) => grids.push(grid),
                None => buckets.push((ratio, vec![grid])),
            }
        }
    }
    let (w, h) = (width as f64, height as f64);
    let scale = w / h;
    // (new_w, new_h) of the aspect-preserving fit into a canvas.
    let fit = |canvas_w: f64, canvas_h: f64| {
        let factor = (canvas_w / w).min(canvas_h / h);
        if scale > 1.0 {
            let new_w = factor * w;
            (new_w, (new_w / scale).floor())
        } else {
            let new_h = factor * h;
            ((new_h * scale).floor(), new_h)
        }
    };
    let mut best: Option<((usize, usize), (f64, f64))> = None;
    for &(columns, rows) in buckets.iter().flat_map(|(_, grids)| grids) {
        let (canvas_w, canvas_h) = ((columns * tile) as f64, (rows * tile) as f64);
        if canvas_w < w || canvas_h < h {
            continue;
        }
        let size = fit(canvas_w, canvas_h);
        let better = match best {
            None => true,
            Some((_, best_size)) => {
                (scale < 1.0 && size.0 >= best_size.0) || (scale >= 1.0 && size.1 >= best_size.1)
            }
        };
        if better {
            best = Some(((columns, rows), size));
        }
    }
    if let Some((grid, _)) = best {
        return grid;
    }
    // No canvas covers the image: the closest supported ratio (first minimum wins).
    if scale >= 1.0 {
        let candidates = buckets.iter().filter(|(key, _)| *key <= scale);
        closest_bucket(candidates, |key| (key - scale).abs())
            .and_then(|grids| first_max(grids, |grid| grid.0))
            .unwrap_or((1, 1))
    } else {
        let candidates = buckets.iter().filter(|(key, _)| *key > scale);
        closest_bucket(candidates, |key| (1.0 / key - 1.0 / scale).abs())
            .and_then(|grids| first_max(grids, |grid| grid.1))
            .unwrap_or((1, 1))
    }
}

type Bucket = (f64, Vec<(usize, usize)>);

/// The grids of the first bucket with the smallest distance (Python's `min`).
fn closest_bucket<'a>(
    buckets: impl Iterator<Item = &'a Bucket>,
    distance: impl Fn(f64) -> f64,
) -> Option<&'a [(usize, usize)]> {
    let mut best: Option<&Bucket> = None;
    for bucket in buckets {
        if best.is_none_or(|current| distance(bucket.0) < distance(current.0)) {
            best = Some(bucket);
        }
    }
    best.map(|(_, grids)| grids.as_slice())
}

/// The first element with the largest key (Python's `max`).
fn first_max(
    grids: &[(usize, usize)],
    key: impl Fn(&(usize, usize)) -> usize,
) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for grid in grids {
        if best.is_none_or(|current| key(grid) > key(&current)) {
            best = Some(*grid);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked examples from docs/models.md, PLM pre-processing (tile 448, up to 36 tiles).
    #[test]
    fn tile_grids_match_the_reference_algorithm() {
        assert_eq!(tile_grid(448, 448, 448, 36), (6, 6));
        assert_eq!(tile_grid(640, 480, 448, 36), (7, 5));
        assert_eq!(tile_grid(1920, 1080, 448, 36), (8, 4));
        assert_eq!(tile_grid(4032, 3024, 448, 36), (4, 3));
        assert_eq!(tile_grid(100, 100, 448, 1), (1, 1));
    }

    #[test]
    fn resize_keeps_a_flat_colour_and_identity_is_exact() {
        let flat = RgbImage::new(30, 20, [10u8, 200, 77].repeat(600)).expect("image");
        let resized = flat.resized(17, 41);
        assert!(resized.data.chunks_exact(3).all(|px| px == [10, 200, 77]));
        assert_eq!(flat.resized(30, 20), flat);
    }

    #[test]
    fn rectangle_is_drawn_on_the_edges_only() {
        let mut image = RgbImage::new(20, 20, vec![0; 1200]).expect("image");
        let region = NormalizedBox {
            x0: 0.25,
            y0: 0.25,
            x1: 0.75,
            y1: 0.75,
        };
        image.draw_rectangle(&region, [255, 0, 0], 2);
        let at = |x: usize, y: usize| &image.data[(y * 20 + x) * 3..(y * 20 + x) * 3 + 3];
        assert_eq!(at(5, 5), [255, 0, 0]);
        assert_eq!(at(10, 6), [255, 0, 0]);
        assert_eq!(at(10, 10), [0, 0, 0]);
        assert_eq!(at(2, 2), [0, 0, 0]);
    }
}
