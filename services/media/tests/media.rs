//! The ffmpeg adapter on real encoded video made with the ffmpeg CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use vidx_core::ports::FrameSampler;
use vidx_core::{MediaError, TimeRange};
use vidx_media::{
    FfmpegFrameSampler, InputSource, SegmentChunk, SegmentOptions, probe, segment_source,
};

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

/// 30 s of testsrc2 at 25 fps, H.264 with a keyframe exactly every 2 s.
fn gop_video(directory: &Path, extra: &[&str]) -> Result<PathBuf> {
    let path = directory.join("gop.mp4");
    let mut arguments = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-keyint_min",
        "50",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
    ];
    arguments.extend_from_slice(extra);
    arguments.push(path.to_str().context("path")?);
    ffmpeg(&arguments)?;
    Ok(path)
}

fn segment_all(
    path: &Path,
    segment_ms: u64,
    spool: &Path,
) -> (
    Vec<SegmentChunk>,
    Result<vidx_media::SegmentSummary, MediaError>,
) {
    let mut chunks = Vec::new();
    let result = segment_source(
        &InputSource::File(path.to_path_buf()),
        &SegmentOptions::new(segment_ms, spool.to_path_buf()),
        |chunk| {
            chunks.push(chunk);
            true
        },
    );
    (chunks, result)
}

fn ffprobe_frames(path: &Path) -> Result<u64> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (codec, frames) = text.trim().split_once(',').context("ffprobe output")?;
    ensure!(codec == "h264", "chunk was re-encoded to {codec}");
    Ok(frames.parse()?)
}

#[test]
fn probe_reports_stream_facts() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = gop_video(directory.path(), &[])?;
    let info = probe(&InputSource::File(video))?;
    let stream = info.video.context("video stream")?;
    assert_eq!((stream.width, stream.height), (320, 240));
    assert!((stream.fps - 25.0).abs() < 0.01, "{}", stream.fps);
    assert_eq!(stream.codec, "h264");
    assert!(
        info.duration_ms
            .is_some_and(|ms| (29_900..=30_100).contains(&ms)),
        "{:?}",
        info.duration_ms
    );
    assert!(info.subtitles.is_empty());
    Ok(())
}

#[test]
fn segments_are_keyframe_aligned_self_contained_remuxes() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = gop_video(directory.path(), &[])?;
    let (chunks, result) = segment_all(&video, 7_000, &directory.path().join("spool"));
    let summary = result?;
    // Keyframes every 2 s; a segment closes at the first keyframe >= 7 s after its start: 0, 8, 16, 24.
    let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
    assert_eq!(starts, vec![0, 8_000, 16_000, 24_000]);
    assert_eq!(summary.segments, 4);
    for pair in chunks.windows(2) {
        assert_eq!(
            pair[0].range.end_ms, pair[1].range.start_ms,
            "segments are contiguous"
        );
    }
    let last = chunks.last().context("chunks")?;
    assert!(
        (29_900..=30_100).contains(&last.range.end_ms),
        "{:?}",
        last.range
    );
    // Each chunk decodes on its own, untouched (still H.264), and together they hold every frame.
    let mut total_frames = 0;
    for chunk in &chunks {
        let frames = ffprobe_frames(&chunk.path)?;
        assert_eq!(
            frames, chunk.packets,
            "chunk {} decodes all its packets",
            chunk.seq
        );
        total_frames += frames;
    }
    assert_eq!(total_frames, 750);
    Ok(())
}

/// MPEG-TS stores its stream type in the codec tag (0x1b for H.264), which the Matroska muxer
/// rejects unless the tag is cleared: `.ts` files (and live MPEG-TS) used to fail at segment 0.
#[test]
fn mpegts_inputs_are_segmented() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = directory.path().join("clip.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=160x120:r=25:d=6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mpegts",
        video.to_str().context("path")?,
    ])?;
    let (chunks, result) = segment_all(&video, 2_000, &directory.path().join("spool"));
    let summary = result?;
    assert_eq!(summary.segments, 3);
    let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
    assert_eq!(starts, vec![0, 2_000, 4_000]);
    let mut total_frames = 0;
    for chunk in &chunks {
        total_frames += ffprobe_frames(&chunk.path)?;
    }
    assert_eq!(total_frames, 150);
    Ok(())
}

#[test]
fn sampled_frames_carry_their_real_time_and_content() -> Result<()> {
    let directory = tempfile::tempdir()?;
    // 2 s each of red, green, blue, white at 25 fps; keyframe every 2 s.
    let video = directory.path().join("colors.mp4");
    ffmpeg(&[
        "-filter_complex",
        "color=c=red:s=64x48:r=25:d=2[a];color=c=green:s=64x48:r=25:d=2[b];color=c=blue:s=64x48:r=25:d=2[c];color=c=white:s=64x48:r=25:d=2[d];[a][b][c][d]concat=n=4:v=1:a=0,format=yuv420p[v]",
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-bf",
        "2",
        video.to_str().context("path")?,
    ])?;
    let (chunks, result) = segment_all(&video, 100_000, &directory.path().join("spool"));
    result?;
    assert_eq!(chunks.len(), 1);
    let sampler = FfmpegFrameSampler::new(32);
    let frames = sampler.sample(&chunks[0].path, chunks[0].range, 4)?;
    assert_eq!(frames.len(), 4);
    let expected = [
        (1_000, [255, 0, 0]),
        (3_000, [0, 128, 0]),
        (5_000, [0, 0, 255]),
        (7_000, [255, 255, 255]),
    ];
    for (frame, (target_ms, colour)) in frames.iter().zip(expected) {
        // The frame on screen at the target: a real frame time (40 ms grid) within one frame of it.
        assert_eq!(frame.pts_ms % 40, 0, "{} is not a frame time", frame.pts_ms);
        assert!(
            frame.pts_ms <= target_ms && target_ms < frame.pts_ms + 40,
            "target {target_ms}, frame {}",
            frame.pts_ms
        );
        // 320x240 decoded just large enough for a 32-pixel model input: 43x32, as shown.
        assert_eq!(
            (frame.width, frame.height, frame.rgb.len()),
            (43, 32, 43 * 32 * 3)
        );
        let centre = &frame.rgb[(16 * 43 + 21) * 3..(16 * 43 + 21) * 3 + 3];
        for (got, want) in centre.iter().zip(colour) {
            assert!(
                (i32::from(*got) - want).abs() <= 24,
                "at {target_ms} ms: {centre:?}, want {colour:?}"
            );
        }
    }
    // A later segment reports absolute stream times.
    let frames = sampler.sample(&chunks[0].path, TimeRange::new(60_000, 68_000), 2)?;
    assert_eq!((frames[0].pts_ms, frames[1].pts_ms), (62_000, 66_000));

    // The same chunk held in memory (an inline segment) is read in place through FFmpeg's
    // custom I/O and gives the very same frames; garbage bytes are a clear error.
    let bytes: vidx_core::ports::SharedBytes = std::sync::Arc::new(std::fs::read(&chunks[0].path)?);
    let from_file = sampler.sample(&chunks[0].path, chunks[0].range, 4)?;
    let from_memory = sampler.sample_bytes(bytes, chunks[0].range, 4)?;
    assert_eq!(from_memory, from_file);
    let garbage: vidx_core::ports::SharedBytes = std::sync::Arc::new(vec![7u8; 4096]);
    let error = sampler
        .sample_bytes(garbage, chunks[0].range, 4)
        .expect_err("garbage is not a segment");
    assert!(error.to_string().contains("inline segment"), "{error}");
    let empty: vidx_core::ports::SharedBytes = std::sync::Arc::new(Vec::<u8>::new());
    assert!(matches!(
        sampler.sample_bytes(empty, chunks[0].range, 4),
        Err(MediaError::Empty { .. })
    ));
    Ok(())
}

#[test]
fn truncated_faststart_file_is_an_error_naming_it_after_the_good_part() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = gop_video(directory.path(), &["-movflags", "+faststart"])?;
    let bytes = std::fs::read(&video)?;
    let truncated = directory.path().join("cut.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() * 6 / 10])?;
    let (chunks, result) = segment_all(&truncated, 5_000, &directory.path().join("spool"));
    let error = result.expect_err("truncated file must fail");
    assert!(matches!(error, MediaError::Truncated { .. }), "{error}");
    assert!(error.to_string().contains("cut.mp4"), "{error}");
    assert!(!chunks.is_empty(), "the readable part was still segmented");
    Ok(())
}

#[test]
fn unsupported_inputs_are_typed_errors() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let audio = directory.path().join("tone.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=d=2",
        audio.to_str().context("path")?,
    ])?;
    let (_, result) = segment_all(&audio, 5_000, &directory.path().join("spool"));
    let error = result.expect_err("audio only");
    assert!(
        matches!(error, MediaError::Unsupported { .. })
            && error.to_string().contains("no video stream"),
        "{error}"
    );

    let video = gop_video(directory.path(), &[])?;
    let options = SegmentOptions {
        max_pixels: 100 * 100,
        ..SegmentOptions::new(5_000, directory.path().join("spool"))
    };
    let error =
        segment_source(&InputSource::File(video), &options, |_| true).expect_err("too large");
    assert!(error.to_string().contains("320x240"), "{error}");

    let missing = segment_all(&directory.path().join("nope.mp4"), 5_000, directory.path())
        .1
        .expect_err("missing");
    assert!(matches!(missing, MediaError::NotFound { .. }), "{missing}");
    Ok(())
}

#[test]
fn embedded_and_sidecar_subtitles_become_cues_once() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = gop_video(directory.path(), &[])?;
    let srt = directory.path().join("in.srt");
    std::fs::write(
        &srt,
        "1\n00:00:03,500 --> 00:00:05,000\nfirst <b>line</b>\n\n2\n00:00:15,000 --> 00:00:17,250\nsecond line\n",
    )?;
    let muxed = directory.path().join("muxed.mkv");
    ffmpeg(&[
        "-i",
        video.to_str().context("p")?,
        "-i",
        srt.to_str().context("p")?,
        "-c:v",
        "copy",
        "-c:s",
        "srt",
        muxed.to_str().context("p")?,
    ])?;
    let info = probe(&InputSource::File(muxed.clone()))?;
    assert_eq!(info.subtitles.len(), 1);
    // A sidecar with one cue equal to the embedded one and one new cue.
    std::fs::write(
        directory.path().join("muxed.en.vtt"),
        "WEBVTT\n\n00:03.500 --> 00:05.000\nfirst line\n\n00:25.000 --> 00:26.000\nfrom the sidecar\n",
    )?;
    let (chunks, result) = segment_all(&muxed, 10_000, &directory.path().join("spool"));
    assert_eq!(result?.subtitle_cues, 3);
    let placed: Vec<(u64, u64, u64, String)> = chunks
        .iter()
        .flat_map(|chunk| {
            chunk
                .subtitles
                .iter()
                .map(move |cue| (chunk.seq, cue.start_ms, cue.end_ms, cue.text.clone()))
        })
        .collect();
    assert_eq!(
        placed,
        vec![
            (0, 3_500, 5_000, "first line".to_string()),
            (1, 15_000, 17_250, "second line".to_string()),
            (2, 25_000, 26_000, "from the sidecar".to_string()),
        ]
    );
    Ok(())
}

/// docs/reliability.md 8a: every container and codec FFmpeg reads is segmented, including
/// archive formats whose packets carry presentation timestamps on some packets only (AVI with
/// B-frames, MPEG program streams, VOB), with segment times within one frame of the source's.
#[test]
fn archive_and_web_formats_segment_at_the_source_times() -> Result<()> {
    let directory = tempfile::tempdir()?;
    // 30 fps and a keyframe every 60 frames (2 s): a GOP the MPEG-1/2 encoders keep exactly
    // with two B-frames (they round it to a multiple of three).
    let keyframes = ["-g", "60", "-keyint_min", "60"];
    let formats: &[(&str, &str, &[&str], u64)] = &[
        (
            "AVI, MPEG-4 part 2 with B-frames",
            "avi",
            &["-c:v", "mpeg4", "-bf", "2"],
            34,
        ),
        ("AVI, MS-MPEG4 v2", "avi", &["-c:v", "msmpeg4v2"], 34),
        ("AVI, MS-MPEG4 v3", "avi", &["-c:v", "msmpeg4"], 34),
        ("AVI, MJPEG", "avi", &["-c:v", "mjpeg", "-q:v", "8"], 34),
        (
            "MPEG-PS, MPEG-1 with B-frames",
            "mpg",
            &["-c:v", "mpeg1video", "-bf", "2", "-f", "mpeg"],
            34,
        ),
        (
            "VOB, MPEG-2 with B-frames",
            "vob",
            &["-c:v", "mpeg2video", "-bf", "2", "-f", "vob"],
            34,
        ),
        (
            "MPEG-TS, H.264",
            "ts",
            &["-c:v", "libx264", "-preset", "ultrafast"],
            34,
        ),
        (
            "MOV, H.264 with B-frames",
            "mov",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-sc_threshold",
                "0",
            ],
            34,
        ),
        (
            "MKV, H.264 with B-frames",
            "mkv",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-sc_threshold",
                "0",
            ],
            34,
        ),
        ("WebM, VP8", "webm", &["-c:v", "libvpx", "-b:v", "300k"], 34),
        (
            "WebM, VP9",
            "webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-b:v",
                "300k",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
            ],
            34,
        ),
        ("FLV, Sorenson H.263", "flv", &["-c:v", "flv1"], 34),
    ];
    let mut failures = Vec::new();
    for (index, (name, extension, codec, frame_ms)) in formats.iter().enumerate() {
        let path = directory.path().join(format!("clip{index}.{extension}"));
        let mut arguments = vec!["-f", "lavfi", "-i", "testsrc2=s=160x120:r=30:d=12"];
        arguments.extend_from_slice(codec);
        arguments.extend_from_slice(&keyframes);
        arguments.push(path.to_str().context("path")?);
        ffmpeg(&arguments).with_context(|| format!("making the {name} clip"))?;
        let spool = directory.path().join(format!("spool{index}"));
        let (chunks, result) = segment_all(&path, 2_000, &spool);
        let summary = match result {
            Ok(summary) => summary,
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
        let end = chunks.last().map_or(0, |chunk| chunk.range.end_ms);
        let on_time = starts
            .iter()
            .enumerate()
            .all(|(seq, start)| start.abs_diff(seq as u64 * 2_000) <= *frame_ms);
        let worst_ms = starts
            .iter()
            .enumerate()
            .map(|(seq, start)| start.abs_diff(seq as u64 * 2_000))
            .chain([end.abs_diff(12_000)])
            .max()
            .unwrap_or(0);
        // The format table of docs/formats.md (`--nocapture`).
        println!("| {name} | {} | {worst_ms} ms |", chunks.len());
        if summary.segments != 6
            || chunks.len() != 6
            || !on_time
            || end.abs_diff(12_000) > *frame_ms
        {
            failures.push(format!(
                "{name}: {} segments starting at {starts:?} ms, ending at {end} ms \
                 (expected 6 every 2000 ms to 12000, within {frame_ms} ms)",
                chunks.len()
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A sink that takes longer than the stall timeout (a slow publish, a blob upload) does not
/// make the input look stalled: the watchdog counts only the time spent reading it.
#[test]
fn a_slow_sink_does_not_trip_the_stall_watchdog() -> Result<()> {
    let directory = tempfile::tempdir()?;
    // MPEG-TS at a high rate: the demuxer reads the file as it goes (many refills of its
    // buffer, each of which checks the watchdog).
    let path = directory.path().join("short.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x480:r=25:d=8",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "8",
        "-g",
        "50",
        "-keyint_min",
        "50",
        path.to_str().context("path")?,
    ])?;
    let options = SegmentOptions {
        stall_timeout: std::time::Duration::from_millis(500),
        ..SegmentOptions::new(2_000, directory.path().join("spool"))
    };
    let mut handed = 0;
    let summary = segment_source(&InputSource::File(path), &options, |_| {
        handed += 1;
        std::thread::sleep(std::time::Duration::from_millis(800));
        true
    })?;
    ensure!(
        summary.segments == 4 && handed == 4,
        "{summary:?}, {handed} handed over"
    );
    Ok(())
}

/// docs/reliability.md 28: a stream that declares small frames and then decodes huge ones (a
/// resolution change mid-stream) is refused on the decoder's real frame size, before the
/// frame is allocated, with an error naming the size and the limit.
#[test]
fn frames_larger_than_declared_are_refused_by_their_decoded_size() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let part = |name: &str, size: &str, seconds: &str, offset: &str| -> Result<PathBuf> {
        let path = directory.path().join(name);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=s={size}:r=25:d={seconds}"),
            // The second part's timestamps follow the first's: one continuous stream.
            "-output_ts_offset",
            offset,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "mpegts",
            path.to_str().context("path")?,
        ])?;
        Ok(path)
    };
    let small = part("small.ts", "160x120", "2", "0")?;
    let large = part("large.ts", "2400x2400", "0.4", "2")?;
    // One MPEG-TS stream: its header (what probing sees) says 160x120.
    let joined = directory.path().join("joined.ts");
    let mut bytes = std::fs::read(&small)?;
    bytes.extend(std::fs::read(&large)?);
    std::fs::write(&joined, bytes)?;
    let (chunks, result) = segment_all(&joined, 60_000, directory.path());
    let summary = result?;
    ensure!(summary.segments == 1 && chunks.len() == 1, "{summary:?}");
    let sampler = FfmpegFrameSampler::with_max_pixels(32, 640 * 480);
    let chunk = &chunks[0];
    let error = sampler
        .sample(&chunk.path, chunk.range, 40)
        .expect_err("frames of 2400x2400 with a limit of 640x480");
    let text = error.to_string();
    ensure!(
        text.contains("2400x2400") && text.contains("media.max_pixels"),
        "{text}"
    );
    // The same chunk within the default limit samples.
    let frames = FfmpegFrameSampler::new(32).sample(&chunk.path, chunk.range, 4)?;
    ensure!(frames.len() == 4, "{} frames", frames.len());
    Ok(())
}

/// What FFmpeg's CLI shows of `path` at `at_secs`, scaled to `size` (width, height) as the
/// sampler scales (bicubic, after the CLI's autorotate): packed RGB.
fn cli_frame(path: &Path, at_secs: f64, size: (u32, u32)) -> Result<Vec<u8>> {
    let (width, height) = size;
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-ss",
            &at_secs.to_string(),
            "-i",
        ])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-vf",
            &format!("scale={width}:{height}:flags=bicubic"),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()?;
    ensure!(
        output.status.success() && output.stdout.len() == (width * height * 3) as usize,
        "ffmpeg frame of {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// The sampler's frame's size, for its CLI reference.
fn size_of(frame: &vidx_core::Frame) -> (u32, u32) {
    (frame.width, frame.height)
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.len().max(1) as f64
}

/// Write the display matrix a phone held upright writes (turn 90° clockwise) into the video
/// track header (`tkhd`) of an MP4 made by FFmpeg (which writes the identity there).
fn turn_mp4_upright(from: &Path, to: &Path) -> Result<()> {
    let mut bytes = std::fs::read(from)?;
    let matrix =
        |values: [i32; 9]| -> Vec<u8> { values.iter().flat_map(|v| v.to_be_bytes()).collect() };
    let identity = matrix([0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000]);
    let portrait = matrix([0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x4000_0000]);
    let tkhd = bytes
        .windows(4)
        .position(|window| window == b"tkhd")
        .context("no tkhd box")?;
    let at = tkhd
        + bytes[tkhd..]
            .windows(identity.len())
            .position(|window| window == identity.as_slice())
            .context("no identity matrix in tkhd")?;
    bytes[at..at + portrait.len()].copy_from_slice(&portrait);
    std::fs::write(to, bytes)?;
    Ok(())
}

#[test]
fn a_rotated_phone_clip_is_turned_as_ffmpeg_turns_it() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let landscape = directory.path().join("landscape.mp4");
    // Left half red, right half blue; turned clockwise, red is on top.
    ffmpeg(&[
        "-filter_complex",
        "color=c=red:s=80x120:r=30:d=4[a];color=c=blue:s=80x120:r=30:d=4[b];[a][b]hstack",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
        landscape.to_str().context("path")?,
    ])?;
    let phone = directory.path().join("phone.mp4");
    turn_mp4_upright(&landscape, &phone)?;

    let info = probe(&InputSource::File(phone.clone()))?;
    let video = info.video.context("no video")?;
    ensure!(
        video.rotation == 90,
        "rotation {} (expected 90)",
        video.rotation
    );

    const SIDE: u32 = 32;
    let sampler = FfmpegFrameSampler::new(SIDE);
    // Upright as shown: taller than wide, the short side at SIDE.
    let shown = sampler.sample(&phone, TimeRange::new(0, 1_000), 1)?;
    let size = size_of(shown.first().context("no frame")?);
    ensure!(
        size.0 == SIDE && size.1 > SIDE,
        "the turned frame is {size:?}, not upright"
    );
    let reference = cli_frame(&phone, 0.5, size)?;
    let pixel = |rgb: &[u8], row: u32, column: u32| {
        let at = ((row * size.0 + column) * 3) as usize;
        [rgb[at], rgb[at + 1], rgb[at + 2]]
    };
    let bottom = size.1 - 3;
    ensure!(
        pixel(&reference, 2, 16)[0] > 200 && pixel(&reference, bottom, 16)[2] > 200,
        "the CLI's reference is not red on top, blue below"
    );
    let (chunks, summary) = segment_all(&phone, 2_000, &directory.path().join("spool"));
    summary?;
    ensure!(chunks.len() == 2, "{} chunks", chunks.len());
    for (what, path, range) in [
        ("the source", phone.clone(), TimeRange::new(0, 1_000)),
        (
            "its first chunk",
            chunks[0].path.clone(),
            TimeRange::new(0, 1_000),
        ),
        (
            "its second chunk",
            chunks[1].path.clone(),
            TimeRange::new(2_000, 3_000),
        ),
    ] {
        let frames = sampler.sample(&path, range, 1)?;
        let frame = frames.first().context("no frame")?;
        let difference = mean_abs_diff(&frame.rgb, &reference);
        ensure!(
            difference < 8.0,
            "{what}: frame differs from FFmpeg's turned frame by {difference:.1} per channel \
             (top {:?}, bottom {:?})",
            pixel(&frame.rgb, 2, 16),
            pixel(&frame.rgb, bottom, 16)
        );
    }
    Ok(())
}

#[test]
fn variable_frame_rate_and_10_bit_clips_segment_at_the_source_times() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let every_2s = ["-force_key_frames", "expr:gte(t,n_forced*2)"];
    let clips: &[(&str, &str, Vec<&str>, u64)] = &[
        (
            "variable frame rate, 30 then 10 fps",
            "vfr.mkv",
            vec![
                "-filter_complex",
                "testsrc2=s=160x120:r=30:d=6[a];testsrc2=s=160x120:r=10:d=6[b];[a][b]concat=n=2:v=1",
                "-fps_mode",
                "vfr",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ],
            100,
        ),
        (
            "H.264 High 10",
            "h264-10bit.mkv",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=160x120:r=30:d=12",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p10le",
            ],
            34,
        ),
        (
            "HEVC Main 10",
            "hevc-10bit.mp4",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=160x120:r=30:d=12",
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
                "-pix_fmt",
                "yuv420p10le",
            ],
            34,
        ),
    ];
    let sampler = FfmpegFrameSampler::new(32);
    let mut failures = Vec::new();
    for (index, (name, file, arguments, frame_ms)) in clips.iter().enumerate() {
        let path = directory.path().join(file);
        let mut arguments = arguments.clone();
        arguments.extend_from_slice(&every_2s);
        arguments.push(path.to_str().context("path")?);
        ffmpeg(&arguments).with_context(|| format!("making the {name} clip"))?;
        let (chunks, result) =
            segment_all(&path, 2_000, &directory.path().join(format!("s{index}")));
        if let Err(error) = result {
            failures.push(format!("{name}: {error}"));
            continue;
        }
        let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
        let end = chunks.last().map_or(0, |chunk| chunk.range.end_ms);
        let on_time = starts
            .iter()
            .enumerate()
            .all(|(seq, start)| start.abs_diff(seq as u64 * 2_000) <= *frame_ms);
        if chunks.len() != 6 || !on_time || end.abs_diff(12_000) > *frame_ms {
            failures.push(format!(
                "{name}: {} segments starting at {starts:?} ms, ending at {end} ms",
                chunks.len()
            ));
            continue;
        }
        // The frame shown 0.5 s into the fifth segment (in the 10 fps part of the VFR clip):
        // at the source's time, with the source's picture.
        let frames = sampler.sample(&chunks[4].path, TimeRange::new(8_000, 9_000), 1)?;
        let frame = frames.first().context("no frame")?;
        let reference = cli_frame(&path, 8.5, size_of(frame))?;
        let difference = mean_abs_diff(&frame.rgb, &reference);
        if frame.pts_ms.abs_diff(8_500) > *frame_ms || difference > 12.0 {
            failures.push(format!(
                "{name}: the frame at 8.5 s is at {} ms, {difference:.1} per channel from \
                 FFmpeg's",
                frame.pts_ms
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Inputs remuxing cannot cut are cut by re-encoding, every segment length, from the segment
/// where remuxing stopped: an animated GIF (one keyframe, then partial frames), uncompressed
/// RGB in AVI (every frame a keyframe, but the chunk container refuses the codec) and H.264
/// with one keyframe in 12 s. Each chunk is playable on its own and shows the source's
/// picture.
#[test]
fn inputs_remuxing_cannot_cut_are_cut_by_re_encoding() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let clips: &[(&str, &str, &[&str], u64)] = &[
        (
            "animated GIF",
            "clip.gif",
            &["-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=12"],
            100,
        ),
        (
            "AVI, uncompressed RGB (which Matroska refuses)",
            "raw.avi",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=160x120:r=10:d=12",
                "-c:v",
                "rawvideo",
                "-pix_fmt",
                "bgr24",
            ],
            100,
        ),
        (
            "H.264 with one keyframe",
            "one-keyframe.mp4",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=160x120:r=30:d=12",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "1000",
                "-keyint_min",
                "1000",
                "-sc_threshold",
                "0",
            ],
            34,
        ),
    ];
    let sampler = FfmpegFrameSampler::new(32);
    let mut failures = Vec::new();
    for (index, (name, file, arguments, frame_ms)) in clips.iter().enumerate() {
        let path = directory.path().join(file);
        let mut arguments = arguments.to_vec();
        arguments.push(path.to_str().context("path")?);
        ffmpeg(&arguments).with_context(|| format!("making the {name} clip"))?;
        let spool = directory.path().join(format!("s{index}"));
        let mut chunks = Vec::new();
        let summary = segment_source(
            &InputSource::File(path.clone()),
            &SegmentOptions {
                max_segment_ms: 5_000,
                ..SegmentOptions::new(2_000, spool)
            },
            |chunk| {
                chunks.push(chunk);
                true
            },
        );
        let summary = match summary {
            Ok(summary) => summary,
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
        let end = chunks.last().map_or(0, |chunk| chunk.range.end_ms);
        let on_time = starts
            .iter()
            .enumerate()
            .all(|(seq, start)| start.abs_diff(seq as u64 * 2_000) <= *frame_ms);
        if summary.segments != 6
            || chunks.len() != 6
            || !on_time
            || end.abs_diff(12_000) > *frame_ms
            || summary.reencoded_from_ms != Some(0)
        {
            failures.push(format!(
                "{name}: {} segments starting at {starts:?} ms, ending at {end} ms, \
                 re-encoded from {:?}",
                chunks.len(),
                summary.reencoded_from_ms
            ));
            continue;
        }
        for chunk in &chunks {
            let at_ms = chunk.range.start_ms + 500;
            let frames = sampler.sample(
                &chunk.path,
                TimeRange::new(chunk.range.start_ms, chunk.range.start_ms + 1_000),
                1,
            )?;
            let frame = frames.first().context("no frame")?;
            let reference = cli_frame(&path, at_ms as f64 / 1000.0, size_of(frame))?;
            let difference = mean_abs_diff(&frame.rgb, &reference);
            // Closer to the source's frame at that time than to its frame a second away
            // (testsrc2 moves): the right picture, not only a picture.
            let elsewhere = cli_frame(&path, (at_ms as f64 / 1000.0 + 1.0) % 12.0, size_of(frame))?;
            let wrong = mean_abs_diff(&frame.rgb, &elsewhere);
            if frame.pts_ms.abs_diff(at_ms) > *frame_ms || difference > 20.0 || difference >= wrong
            {
                failures.push(format!(
                    "{name}: segment {} shows {} ms, {difference:.1} per channel from FFmpeg's \
                     frame at {at_ms} ms ({wrong:.1} from its frame a second later)",
                    chunk.seq, frame.pts_ms
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Keyframes every 2 s for 6 s, then none for 6 s: the first segments stay remuxed, the
/// rest is re-encoded from the segment that ran past `max_segment_ms`.
#[test]
fn a_file_that_stops_having_keyframes_is_re_encoded_from_there() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let path = directory.path().join("late.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=160x120:r=30:d=12",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "1000",
        "-sc_threshold",
        "0",
        "-force_key_frames",
        "0,2,4",
        path.to_str().context("path")?,
    ])?;
    let mut chunks = Vec::new();
    let summary = segment_source(
        &InputSource::File(path.clone()),
        &SegmentOptions {
            max_segment_ms: 5_000,
            ..SegmentOptions::new(2_000, directory.path().join("spool"))
        },
        |chunk| {
            chunks.push(chunk);
            true
        },
    )?;
    let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
    let seqs: Vec<u64> = chunks.iter().map(|chunk| chunk.seq).collect();
    ensure!(
        summary.reencoded_from_ms == Some(4_000)
            && seqs == [0, 1, 2, 3, 4, 5]
            && starts
                .iter()
                .enumerate()
                .all(|(seq, start)| start.abs_diff(seq as u64 * 2_000) <= 34),
        "re-encoded from {:?}; segments {seqs:?} at {starts:?}",
        summary.reencoded_from_ms
    );
    // The remuxed ones are still the source's H.264 packets, untouched.
    ensure!(
        ffprobe_frames(&chunks[0].path)? == 60,
        "first chunk not remuxed"
    );
    Ok(())
}

/// MPEG-TS recordings joined end to end (`cat a.ts b.ts`, a recorder restarted, a broadcast
/// splice) restart their timestamps: media time goes on across the jump, nothing is lost or
/// re-encoded, and the segments are those of the joined length.
#[test]
fn mpegts_timestamp_discontinuities_continue_the_media_time() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let mut joined = Vec::new();
    for (index, source) in [
        "testsrc2=s=160x120:r=30:d=6",
        "smptebars=s=160x120:r=30:d=6",
    ]
    .iter()
    .enumerate()
    {
        let part = directory.path().join(format!("part{index}.ts"));
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            source,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
            part.to_str().context("path")?,
        ])?;
        joined.extend(std::fs::read(&part)?);
    }
    let path = directory.path().join("joined.ts");
    std::fs::write(&path, joined)?;
    let (chunks, result) = segment_all(&path, 2_000, &directory.path().join("spool"));
    let summary = result?;
    let starts: Vec<u64> = chunks.iter().map(|chunk| chunk.range.start_ms).collect();
    let end = chunks.last().map_or(0, |chunk| chunk.range.end_ms);
    ensure!(
        chunks.len() == 6
            && summary.reencoded_from_ms.is_none()
            && starts
                .iter()
                .enumerate()
                .all(|(seq, start)| start.abs_diff(seq as u64 * 2_000) <= 34)
            && end.abs_diff(12_000) <= 34,
        "{} segments at {starts:?}, ending at {end} ms, re-encoded from {:?}",
        chunks.len(),
        summary.reencoded_from_ms
    );
    // The second recording's picture is in the second half.
    let sampler = FfmpegFrameSampler::new(32);
    let frames = sampler.sample(&chunks[4].path, TimeRange::new(8_000, 9_000), 1)?;
    let frame = frames.first().context("no frame")?;
    let bars = cli_frame(&directory.path().join("part1.ts"), 2.5, size_of(frame))?;
    let difference = mean_abs_diff(&frame.rgb, &bars);
    ensure!(
        difference < 12.0,
        "segment 4 is not the second recording ({difference:.1})"
    );
    Ok(())
}

fn ffprobe_streams(path: &Path) -> Result<String> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name:format=format_name,duration",
            "-of",
            "compact=p=0",
        ])
        .arg(path)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A hit's clip: an MP4 from the keyframe at or before its start (remuxed, with the AAC
/// audio), or — for a codec MP4 cannot hold — re-encoded to H.264 from its very start; each
/// shows the source's picture at the clip's start.
#[test]
fn clips_are_cut_as_mp4_from_the_keyframe_before_the_hit() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let with_audio = directory.path().join("talk.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=30",
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:d=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-keyint_min",
        "50",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        with_audio.to_str().context("path")?,
    ])?;
    let old = directory.path().join("old.avi");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=30",
        "-c:v",
        "msmpeg4",
        "-g",
        "50",
        old.to_str().context("path")?,
    ])?;
    let range = TimeRange::new(5_000, 9_000);
    for (source, expected_start, reencoded) in [(&with_audio, 4_000, false), (&old, 5_000, true)] {
        let output = directory.path().join(format!(
            "clip-of-{}.mp4",
            source
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("clip")
        ));
        let clip = vidx_media::cut_clip(
            &InputSource::File(source.clone()),
            range,
            &output,
            &vidx_media::ClipOptions::default(),
        )?;
        ensure!(
            clip.start_ms.abs_diff(expected_start) <= 40 && clip.reencoded == reencoded,
            "{}: {clip:?}",
            source.display()
        );
        ensure!(
            clip.end_ms >= 9_000 && clip.end_ms <= 10_100,
            "{}: ends at {} ms",
            source.display(),
            clip.end_ms
        );
        let streams = ffprobe_streams(&output)?;
        ensure!(
            streams.contains("codec_name=h264")
                && streams.contains("format_name=mov,mp4")
                && streams.contains("codec_name=aac") != reencoded,
            "{}: {streams}",
            source.display()
        );
        let shown = cli_frame(&output, 0.0, (32, 32))?;
        let expected = cli_frame(source, clip.start_ms as f64 / 1000.0, (32, 32))?;
        let other = cli_frame(source, clip.start_ms as f64 / 1000.0 + 1.0, (32, 32))?;
        let (near, far) = (
            mean_abs_diff(&shown, &expected),
            mean_abs_diff(&shown, &other),
        );
        ensure!(
            near < 12.0 && near < far,
            "{}: the clip's first frame is {near:.1} from the source at its start ({far:.1} a second later)",
            source.display()
        );
    }
    Ok(())
}
