//! Benchmark body for `scripts/bench-sampling.sh`: segment a file into keyframe-aligned
//! chunks and sample N frames from each at the model's input size, as `vidx index` does.
//! Prints one JSON line with the wall time.
//!
//!     cargo run --release -p vidx-media --example sampling_bench -- VIDEO SEGMENT_SECS FRAMES SIZE

use std::time::Instant;

use vidx_core::ports::FrameSampler;
use vidx_media::{FfmpegFrameSampler, InputSource, SegmentOptions};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        arguments.len() == 5,
        "usage: sampling_bench VIDEO SEGMENT_SECS FRAMES SIZE"
    );
    let video = std::path::PathBuf::from(&arguments[1]);
    let segment_secs: u64 = arguments[2].parse()?;
    let frames: usize = arguments[3].parse()?;
    let size: u32 = arguments[4].parse()?;
    let spool = tempfile::tempdir()?;
    let sampler = FfmpegFrameSampler::new(size);
    let started = Instant::now();
    let mut chunks = Vec::new();
    vidx_media::segment_source(
        &InputSource::File(video),
        &SegmentOptions::new(segment_secs * 1000, spool.path().to_path_buf()),
        |chunk| {
            chunks.push(chunk);
            true
        },
    )?;
    let segmented_secs = started.elapsed().as_secs_f64();
    let mut sampled = 0usize;
    let mut checksum = 0u64;
    for chunk in &chunks {
        let frames = sampler.sample(&chunk.path, chunk.range, frames)?;
        sampled += frames.len();
        checksum += frames
            .iter()
            .map(|frame| u64::from(frame.rgb[frame.rgb.len() / 2]))
            .sum::<u64>();
    }
    let total_secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"segments\":{},\"frames\":{},\"segment_secs\":{:.3},\"total_secs\":{:.3},\"checksum\":{}}}",
        chunks.len(),
        sampled,
        segmented_secs,
        total_secs,
        checksum
    );
    Ok(())
}
