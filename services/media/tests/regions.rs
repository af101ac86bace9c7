//! Region proposals on real encoded video made with the ffmpeg CLI: boxes moving on known
//! paths are found where they are on each sampled frame, and a static scene yields no motion
//! regions (issue 5's acceptance test).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use vidx_core::NormalizedBox;
use vidx_core::ports::FrameSampler;
use vidx_core::regions::{RegionKind, RegionSettings, motion_tracks, propose_regions};
use vidx_core::{Frame, TimeRange};
use vidx_media::FfmpegFrameSampler;

const SOURCE_WIDTH: f32 = 320.0;
const SOURCE_HEIGHT: f32 = 240.0;
const DURATION_MS: u64 = 4_000;
/// The sampler squashes every frame to this square, as for the model.
const FRAME_SIZE: u32 = 448;
/// Sample counts tried on the moving scene (a segment gets 8 to 32).
const SAMPLED_FRAME_COUNTS: [usize; 2] = [8, 16];
/// Samples of the static scene: more frames, more chances for noise to pass as motion.
const STILL_SAMPLED_FRAMES: usize = 32;

fn ffmpeg(arguments: &[&str]) -> Result<()> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(arguments)
        .output()?;
    ensure!(
        output.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Encode `filter_graph` (whose output is `[v]`) as lossy H.264, as cameras deliver it.
fn encode(filter_graph: &str, path: &Path) -> Result<()> {
    ffmpeg(&[
        "-filter_complex",
        filter_graph,
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "30",
        "-g",
        "50",
        "-pix_fmt",
        "yuv420p",
        path.to_str().context("path")?,
    ])
}

/// A solid square overlaid at `(left + velocity_x * t, top + velocity_y * t)` source pixels.
struct MovingSquare {
    colour: &'static str,
    side_px: f32,
    left_px: f32,
    top_px: f32,
    velocity_x_px_per_s: f32,
    velocity_y_px_per_s: f32,
}

impl MovingSquare {
    fn moves(&self) -> bool {
        self.velocity_x_px_per_s != 0.0 || self.velocity_y_px_per_s != 0.0
    }

    /// The square's true box at `pts_ms`, normalised: the sampler's squash to a square keeps
    /// normalised coordinates as they are in the source.
    fn box_at(&self, pts_ms: u64) -> NormalizedBox {
        let seconds = pts_ms as f32 / 1000.0;
        let left = self.left_px + self.velocity_x_px_per_s * seconds;
        let top = self.top_px + self.velocity_y_px_per_s * seconds;
        NormalizedBox {
            x0: left / SOURCE_WIDTH,
            y0: top / SOURCE_HEIGHT,
            x1: (left + self.side_px) / SOURCE_WIDTH,
            y1: (top + self.side_px) / SOURCE_HEIGHT,
        }
    }
}

/// Written here rather than taken from `vidx_core::regions`, so that the test does not trust
/// the code under test to measure it.
fn iou(left: &NormalizedBox, right: &NormalizedBox) -> f32 {
    let width = (left.x1.min(right.x1) - left.x0.max(right.x0)).max(0.0);
    let height = (left.y1.min(right.y1) - left.y0.max(right.y0)).max(0.0);
    let intersection = width * height;
    let area = |bbox: &NormalizedBox| (bbox.x1 - bbox.x0) * (bbox.y1 - bbox.y0);
    intersection / (area(left) + area(right) - intersection)
}

fn sample(video: &Path, count: usize) -> Result<Vec<Frame>> {
    let frames =
        FfmpegFrameSampler::new(FRAME_SIZE).sample(video, TimeRange::new(0, DURATION_MS), count)?;
    ensure!(frames.len() == count, "{} frames", frames.len());
    Ok(frames)
}

#[test]
fn moving_objects_are_boxed_on_their_known_paths() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let squares = [
        // Diagonally from the top left. Between samples 500 ms apart it moves (28, 18) px, so
        // the box around its old and new positions has IoU 0.46 with the truth: a detector that
        // reports that union (two-frame differencing) fails here.
        MovingSquare {
            colour: "red",
            side_px: 48.0,
            left_px: 16.0,
            top_px: 16.0,
            velocity_x_px_per_s: 56.0,
            velocity_y_px_per_s: 36.0,
        },
        // Right to left along the top, clear of the red square's path at every time.
        MovingSquare {
            colour: "yellow",
            side_px: 32.0,
            left_px: 280.0,
            top_px: 8.0,
            velocity_x_px_per_s: -50.0,
            velocity_y_px_per_s: 0.0,
        },
        // Still: part of the scene, not a region.
        MovingSquare {
            colour: "lime",
            side_px: 40.0,
            left_px: 40.0,
            top_px: 160.0,
            velocity_x_px_per_s: 0.0,
            velocity_y_px_per_s: 0.0,
        },
    ];
    // A static noise texture as background (no temporal flag: the same pattern every frame),
    // the squares overlaid on their paths (`t` in seconds), then mild temporal noise on top.
    let seconds = DURATION_MS as f32 / 1000.0;
    let mut graph = format!(
        "color=c=0x50607a:s={SOURCE_WIDTH}x{SOURCE_HEIGHT}:r=25:d={seconds},noise=alls=30:allf=u[layer0];"
    );
    for (index, square) in squares.iter().enumerate() {
        let side = square.side_px;
        graph.push_str(&format!(
            "color=c={colour}:s={side}x{side}:r=25:d={seconds}[square{index}];\
             [layer{index}][square{index}]overlay=x='{left}+{velocity_x}*t':y='{top}+{velocity_y}*t'[layer{next}];",
            colour = square.colour,
            left = square.left_px,
            top = square.top_px,
            velocity_x = square.velocity_x_px_per_s,
            velocity_y = square.velocity_y_px_per_s,
            next = index + 1,
        ));
    }
    graph.push_str(&format!("[layer{}]noise=alls=6:allf=t+u[v]", squares.len()));
    let video = directory.path().join("moving.mp4");
    let started = Instant::now();
    encode(&graph, &video)?;
    eprintln!("regions: encoded in {:?}", started.elapsed());
    for count in SAMPLED_FRAME_COUNTS {
        let frames = sample(&video, count)?;
        check_motion_tracks(&squares, &frames)?;
    }
    Ok(())
}

/// Detect on `frames` and check the tracks against the squares' known paths.
fn check_motion_tracks(squares: &[MovingSquare], frames: &[Frame]) -> Result<()> {
    let started = Instant::now();
    let tracks = motion_tracks(frames, &RegionSettings::default())?;
    let detect_time = started.elapsed();
    assert!(tracks.iter().all(|track| track.kind == RegionKind::Motion));

    let moving: Vec<&MovingSquare> = squares.iter().filter(|square| square.moves()).collect();
    let mut matched = 0usize;
    let mut lowest_iou = 1.0f32;
    let mut misses = Vec::new();
    for frame in frames {
        for square in &moving {
            let truth = square.box_at(frame.pts_ms);
            let best = tracks
                .iter()
                .filter_map(|track| track.box_at(frame.pts_ms))
                .map(|found| iou(&found, &truth))
                .fold(0.0f32, f32::max);
            lowest_iou = lowest_iou.min(best);
            if best >= 0.5 {
                matched += 1;
            } else {
                misses.push(format!(
                    "{} at {} ms: IoU {best:.2}",
                    square.colour, frame.pts_ms
                ));
            }
        }
    }
    let total = frames.len() * moving.len();
    let fraction = matched as f32 / total as f32;
    eprintln!(
        "regions: {} frames, {} tracks, IoU >= 0.5 on {matched}/{total} moving-object frames \
         ({:.0} %), lowest IoU {lowest_iou:.2}, detected in {detect_time:?}",
        frames.len(),
        tracks.len(),
        fraction * 100.0,
    );
    assert!(
        fraction >= 0.8,
        "{} frames: IoU >= 0.5 on only {:.0} % of moving-object frames; misses: {misses:?}; \
         tracks: {tracks:?}",
        frames.len(),
        fraction * 100.0
    );

    // Nothing else is proposed: every box lies on a moving square, none on a still one.
    for track in &tracks {
        for timed in &track.boxes {
            let on_moving = moving
                .iter()
                .any(|square| iou(&timed.bbox, &square.box_at(timed.pts_ms)) > 0.3);
            assert!(on_moving, "spurious box {timed:?}");
            for still in squares.iter().filter(|square| !square.moves()) {
                let overlap = iou(&timed.bbox, &still.box_at(timed.pts_ms));
                assert!(overlap < 0.1, "box {timed:?} on the still {}", still.colour);
            }
        }
    }
    Ok(())
}

#[test]
fn a_static_scene_yields_no_motion_regions() -> Result<()> {
    let directory = tempfile::tempdir()?;
    // One testsrc frame (bars, gradients, text: edges that compression disturbs) held for the
    // whole duration, with temporal noise, so that only noise and encoding change.
    let video = directory.path().join("still.mp4");
    let frame_count = DURATION_MS / 40;
    encode(
        &format!(
            "testsrc=s={SOURCE_WIDTH}x{SOURCE_HEIGHT}:r=25:d=1,trim=end_frame=1,\
             loop=loop={}:size=1,setpts=N/25/TB,noise=alls=6:allf=t+u[v]",
            frame_count - 1
        ),
        &video,
    )?;
    let frames = sample(&video, STILL_SAMPLED_FRAMES)?;
    let settings = RegionSettings::default();
    let tracks = motion_tracks(&frames, &settings)?;
    assert!(tracks.is_empty(), "motion in a static scene: {tracks:?}");
    // The caller's fallback: the coarse grid over every sampled frame.
    let grid = propose_regions(&frames, &settings)?;
    let cells = settings.grid_cells_per_side as usize;
    assert_eq!(grid.len(), cells * cells);
    for track in &grid {
        assert_eq!(track.kind, RegionKind::Grid);
        assert_eq!(track.boxes.len(), STILL_SAMPLED_FRAMES);
    }
    Ok(())
}
