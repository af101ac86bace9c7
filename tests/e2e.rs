//! End-to-end tests of the `vidx` binary: real video made with the ffmpeg CLI, real
//! segmenting and decoding, the real sentence embedder (all-MiniLM-L6-v2) and the real Qdrant
//! Edge engine on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use vidx_testkit::ffmpeg;

const VIDX: &str = env!("CARGO_BIN_EXE_vidx");

/// Four 16-second scenes that look different, with two subtitle cues describing each.
const SCENE_MS: u64 = 16_000;
const CUES: &[(u64, u64, &str)] = &[
    (
        2_000,
        6_000,
        "A chef slices ripe tomatoes on a wooden cutting board.",
    ),
    (
        9_000,
        13_000,
        "The cook chops onions and garlic for the sauce.",
    ),
    (
        18_000,
        22_000,
        "Children kick a soccer ball across a sunny park.",
    ),
    (25_000, 29_000, "A boy scores a goal and his friends cheer."),
    (
        34_000,
        38_000,
        "A fluffy cat sleeps on a grey sofa by the window.",
    ),
    (
        41_000,
        45_000,
        "The kitten stretches and yawns in the afternoon light.",
    ),
    (
        50_000,
        54_000,
        "Heavy snow falls over the mountain pass at night.",
    ),
    (
        57_000,
        61_000,
        "A snowplow clears the icy road between the peaks.",
    ),
];

fn srt_time(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02},{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn write_srt(path: &Path) -> Result<()> {
    let mut text = String::new();
    for (index, (start, end, line)) in CUES.iter().enumerate() {
        text.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            index + 1,
            srt_time(*start),
            srt_time(*end),
            line
        ));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// A 64 s H.264 video of four distinct scenes (2 s GOP). With `embed_subtitles` the cues are
/// muxed in as a mov_text stream; otherwise a sidecar `.srt` with the same stem is written.
fn make_video(directory: &Path, name: &str, embed_subtitles: bool) -> Result<PathBuf> {
    let scenes = "testsrc2=s=320x240:r=25:d=16[a];\
                  color=c=red:s=320x240:r=25:d=16[b];\
                  smptebars=s=320x240:r=25:d=16[c];\
                  mandelbrot=s=320x240:r=25,trim=duration=16,setpts=PTS-STARTPTS[d];\
                  [a][b][c][d]concat=n=4:v=1:a=0,format=yuv420p[v]";
    let video = directory.join(name);
    let srt = video.with_extension("srt");
    write_srt(&srt)?;
    let plain = directory.join(format!(".plain-{name}"));
    let plain_str = plain.to_str().context("path")?;
    ffmpeg(&[
        "-filter_complex",
        scenes,
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        plain_str,
    ])?;
    if embed_subtitles {
        ffmpeg(&[
            "-i",
            plain_str,
            "-i",
            srt.to_str().context("path")?,
            "-map",
            "0:v",
            "-map",
            "1:s",
            "-c:v",
            "copy",
            "-c:s",
            "mov_text",
            video.to_str().context("path")?,
        ])?;
        std::fs::remove_file(&srt)?;
        std::fs::remove_file(&plain)?;
    } else {
        std::fs::rename(&plain, &video)?;
    }
    Ok(video)
}

fn vidx(arguments: &[&str], data_dir: &Path) -> Result<Output> {
    Command::new(VIDX)
        .args(arguments)
        .arg("--data-dir")
        .arg(data_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .output()
        .context("running vidx")
}

fn json_lines(output: &Output) -> Result<Vec<Value>> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn index(inputs: &[&Path], data_dir: &Path, extra: &[&str]) -> Result<(Output, Value)> {
    let mut arguments = vec!["index", "--json"];
    arguments.extend_from_slice(extra);
    let inputs: Vec<&str> = inputs
        .iter()
        .map(|path| path.to_str().unwrap_or_default())
        .collect();
    arguments.extend(inputs);
    let output = vidx(&arguments, data_dir)?;
    let summary = json_lines(&output)
        .with_context(|| describe(&output))?
        .pop()
        .with_context(|| format!("no summary\n{}", describe(&output)))?;
    Ok((output, summary))
}

fn point_count(data_dir: &Path) -> Result<u64> {
    let output = vidx(&["stats", "--json"], data_dir)?;
    ensure!(
        output.status.success(),
        "stats failed: {}",
        describe(&output)
    );
    let stats = json_lines(&output)?.pop().context("no stats")?;
    stats["points"].as_u64().context("points")
}

fn search(query: &str, data_dir: &Path, extra: &[&str]) -> Result<Vec<Value>> {
    let mut arguments = vec!["search", query, "--json"];
    arguments.extend_from_slice(extra);
    let output = vidx(&arguments, data_dir)?;
    ensure!(
        output.status.success(),
        "search failed: {}",
        describe(&output)
    );
    json_lines(&output)
}

/// Packed RGB of an image or of a video's frame at `at_secs`, scaled to `width × height`.
fn rgb_of(path: &Path, at_secs: Option<f64>, width: u32, height: u32) -> Result<Vec<u8>> {
    let mut command = Command::new("ffmpeg");
    command.args(["-hide_banner", "-loglevel", "error"]);
    if let Some(at) = at_secs {
        command.args(["-ss", &at.to_string()]);
    }
    let output = command
        .arg("-i")
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-vf",
            &format!("scale={width}:{height}"),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()?;
    ensure!(
        output.status.success() && output.stdout.len() == (width * height * 3) as usize,
        "ffmpeg on {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// The hit's `thumbnail_url` is a JPEG file under the data dir, 320 px wide in the video's
/// shape (320×240), showing the video at the hit's middle (compared with FFmpeg's frame).
fn assert_thumbnail_shows_the_hit(hit: &Value, video: &Path) -> Result<()> {
    let url = hit["thumbnail_url"]
        .as_str()
        .with_context(|| format!("no thumbnail_url: {hit}"))?;
    let path = Path::new(url.strip_prefix("file://").context("a file:// thumbnail")?);
    let jpeg = std::fs::read(path)?;
    ensure!(jpeg.starts_with(&[0xFF, 0xD8]), "{url} is not a JPEG");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()?;
    let size = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    ensure!(size == "320,240", "thumbnail is {size}, not 320,240");
    let middle = (hit["start_ms"].as_u64().context("start")?
        + hit["end_ms"].as_u64().context("end")?) as f64
        / 2000.0;
    let shown = rgb_of(path, None, 64, 48)?;
    let expected = rgb_of(video, Some(middle), 64, 48)?;
    let elsewhere = rgb_of(
        video,
        Some((middle + SCENE_MS as f64 / 1000.0) % 64.0),
        64,
        48,
    )?;
    let distance = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum::<u64>() as f64
            / a.len() as f64
    };
    let (near, far) = (distance(&shown, &expected), distance(&shown, &elsewhere));
    ensure!(
        near < 20.0 && near < far,
        "thumbnail differs from the frame at {middle} s by {near:.1} per channel (from another scene by {far:.1})"
    );
    Ok(())
}

fn assert_top_hit_in_scene(hits: &[Value], scene: u64, query: &str) -> Result<()> {
    let top = hits
        .first()
        .with_context(|| format!("no hits for {query:?}"))?;
    let (start, end) = (
        top["start_ms"].as_u64().context("start_ms")?,
        top["end_ms"].as_u64().context("end_ms")?,
    );
    let (scene_start, scene_end) = (scene * SCENE_MS, (scene + 1) * SCENE_MS);
    ensure!(
        scene_start <= start && end <= scene_end,
        "{query:?}: top hit {start}..{end} ms ({}) is not inside scene {scene} ({scene_start}..{scene_end})",
        top["caption"]
    );
    for key in ["stream_id", "caption", "score"] {
        ensure!(!top[key].is_null(), "hit lacks {key}: {top}");
    }
    Ok(())
}

#[test]
fn index_then_search_finds_the_paraphrased_scene() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let video = make_video(workspace.path(), "scenes.mp4", true)?;
    let data_dir = workspace.path().join("data");

    let (output, summary) = index(&[&video], &data_dir, &[])?;
    ensure!(output.status.success(), "{}", describe(&output));
    assert_eq!(summary["moments"], 8, "{summary}");
    assert_eq!(summary["inputs_failed"], 0, "{summary}");
    assert!(
        summary["segments"].as_u64().unwrap_or(0) >= 3,
        "64 s in 20 s segments: {summary}"
    );
    assert!(
        summary["media_ms"].as_u64().unwrap_or(0) >= 63_000,
        "{summary}"
    );

    // Paraphrases, not the subtitle words.
    assert_top_hit_in_scene(
        &search("someone cutting vegetables in a kitchen", &data_dir, &[])?,
        0,
        "kitchen",
    )?;
    assert_top_hit_in_scene(
        &search("kids playing football outdoors", &data_dir, &[])?,
        1,
        "football",
    )?;
    let kitty = search("a sleeping kitty on the couch", &data_dir, &[])?;
    assert_top_hit_in_scene(&kitty, 2, "kitty")?;
    assert_thumbnail_shows_the_hit(&kitty[0], &video)?;

    // The hit's clip, exported: an MP4 from the keyframe at or before the moment (every 2 s),
    // whose first frame is the source's at that keyframe.
    let clip = workspace.path().join("kitty.mp4");
    let id = kitty[0]["id"].as_str().context("id")?;
    let exported = vidx(
        &["clip", id, "-o", clip.to_str().context("path")?],
        &data_dir,
    )?;
    ensure!(exported.status.success(), "{}", describe(&exported));
    let start_ms = kitty[0]["start_ms"].as_u64().context("start")?;
    let keyframe_secs = (start_ms / 2_000 * 2) as f64;
    let shown = rgb_of(&clip, None, 64, 48)?;
    let expected = rgb_of(&video, Some(keyframe_secs), 64, 48)?;
    let difference = shown
        .iter()
        .zip(&expected)
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum::<u64>() as f64
        / shown.len() as f64;
    ensure!(
        difference < 12.0,
        "the clip starts {difference:.1} per channel away from the source at {keyframe_secs} s: {}",
        describe(&exported)
    );
    let missing = vidx(
        &[
            "clip",
            "00000000-0000-0000-0000-000000000000",
            "-o",
            clip.to_str().context("path")?,
        ],
        &data_dir,
    )?;
    ensure!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no hit"),
        "{}",
        describe(&missing)
    );

    // Filters: a time window excludes the snow scene; a stream filter for another stream finds nothing.
    let windowed = search("blizzard in the mountains", &data_dir, &["--to", "30000"])?;
    assert!(!windowed.is_empty());
    for hit in &windowed {
        assert!(
            hit["start_ms"].as_u64().unwrap_or(u64::MAX) <= 30_000,
            "{hit}"
        );
    }
    assert!(search("snow", &data_dir, &["--stream", "/nonexistent.mp4"])?.is_empty());

    // Indexing the same file again leaves the point count unchanged.
    assert_eq!(point_count(&data_dir)?, 8);
    let (output, summary) = index(&[&video], &data_dir, &[])?;
    ensure!(output.status.success(), "{}", describe(&output));
    assert_eq!(summary["moments"], 8);
    assert_eq!(point_count(&data_dir)?, 8);
    Ok(())
}

/// Stream labels set at index time filter searches; several streams in one search; hits
/// carry their labels and model revision; `vidx delete` forgets one stream (points and
/// thumbnail files) and then everything indexed before now, idempotently.
#[test]
fn labels_filter_searches_and_delete_forgets_a_stream_with_its_thumbnails() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let north = make_video(workspace.path(), "north.mp4", true)?;
    let south = workspace.path().join("south.mp4");
    std::fs::copy(&north, &south)?;
    let data_dir = workspace.path().join("data");
    let (north_id, south_id) = (
        north.to_str().context("path")?,
        south.to_str().context("path")?,
    );
    for (video, labels) in [
        (&north, ["--label", "site=north", "--label", "group=lobby"]),
        (&south, ["--label", "site=south", "--label", "group=lobby"]),
    ] {
        let (output, summary) = index(&[video.as_path()], &data_dir, &labels)?;
        ensure!(output.status.success(), "{}", describe(&output));
        assert_eq!(summary["moments"], 8, "{summary}");
    }
    assert_eq!(point_count(&data_dir)?, 16);

    let northern = search(
        "a sleeping kitty",
        &data_dir,
        &["--label", "site=north", "--top-k", "20"],
    )?;
    assert_eq!(northern.len(), 8, "{northern:?}");
    for hit in &northern {
        assert_eq!(hit["stream_id"], north_id, "{hit}");
        assert_eq!(hit["labels"]["site"], "north", "{hit}");
        assert_eq!(hit["labels"]["group"], "lobby", "{hit}");
        ensure!(
            hit["model_rev"].as_str().is_some_and(|rev| !rev.is_empty()),
            "no model_rev: {hit}"
        );
    }
    let lobby = search(
        "a sleeping kitty",
        &data_dir,
        &["--label", "group=lobby", "--top-k", "20"],
    )?;
    assert_eq!(lobby.len(), 16);
    assert!(search("a sleeping kitty", &data_dir, &["--label", "site=east"])?.is_empty());
    let both = search(
        "a sleeping kitty",
        &data_dir,
        &["--stream", north_id, "--stream", south_id, "--top-k", "20"],
    )?;
    assert_eq!(both.len(), 16);
    let bad = vidx(&["search", "cat", "--label", "Site"], &data_dir)?;
    ensure!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--label"),
        "{}",
        describe(&bad)
    );

    // Forget the northern stream: its points and thumbnail files go, the southern stays.
    // Points showing the same frame share its thumbnail: each file once.
    let north_thumbnails: std::collections::BTreeSet<PathBuf> = northern
        .iter()
        .filter_map(|hit| hit["thumbnail_url"].as_str())
        .filter_map(|url| url.strip_prefix("file://"))
        .map(PathBuf::from)
        .collect();
    ensure!(!north_thumbnails.is_empty(), "no thumbnails: {northern:?}");
    ensure!(north_thumbnails.iter().all(|path| path.is_file()));
    let deleted = vidx(&["delete", "--stream", north_id, "--json"], &data_dir)?;
    ensure!(deleted.status.success(), "{}", describe(&deleted));
    let report = json_lines(&deleted)?.pop().context("no report")?;
    assert_eq!(report["points"], 8, "{report}");
    assert_eq!(report["thumbnails"], north_thumbnails.len(), "{report}");
    assert_eq!(point_count(&data_dir)?, 8);
    ensure!(
        north_thumbnails.iter().all(|path| !path.exists()),
        "thumbnails left behind"
    );
    let left = search("a sleeping kitty", &data_dir, &["--top-k", "20"])?;
    assert_eq!(left.len(), 8);
    ensure!(left.iter().all(|hit| hit["stream_id"] == south_id));
    ensure!(
        left.iter()
            .filter_map(|hit| hit["thumbnail_url"].as_str())
            .filter_map(|url| url.strip_prefix("file://"))
            .all(|path| Path::new(path).is_file()),
        "the other stream's thumbnails went too"
    );
    // Again: nothing more, and no error.
    let again = vidx(&["delete", "--stream", north_id, "--json"], &data_dir)?;
    ensure!(again.status.success(), "{}", describe(&again));
    assert_eq!(json_lines(&again)?.pop().context("no report")?["points"], 0);

    // Everything indexed before now.
    let everything = vidx(&["delete", "--before", "now", "--json"], &data_dir)?;
    ensure!(everything.status.success(), "{}", describe(&everything));
    assert_eq!(
        json_lines(&everything)?.pop().context("no report")?["points"],
        8
    );
    assert_eq!(point_count(&data_dir)?, 0);
    let neither = vidx(&["delete"], &data_dir)?;
    ensure!(!neither.status.success(), "{}", describe(&neither));
    let file_time = vidx(&["delete", "--before", "01:00"], &data_dir)?;
    ensure!(
        !file_time.status.success()
            && String::from_utf8_lossy(&file_time.stderr).contains("a date"),
        "{}",
        describe(&file_time)
    );
    Ok(())
}

#[test]
fn killed_index_run_resumes_without_duplicates() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let videos_dir = workspace.path().join("videos");
    std::fs::create_dir(&videos_dir)?;
    let first = make_video(&videos_dir, "a.mp4", false)?;
    for name in ["b", "c"] {
        std::fs::copy(&first, videos_dir.join(format!("{name}.mp4")))?;
        std::fs::copy(
            first.with_extension("srt"),
            videos_dir.join(format!("{name}.srt")),
        )?;
    }
    let complete_dir = workspace.path().join("complete");
    let (output, summary) = index(&[&videos_dir], &complete_dir, &["--segment-secs", "4"])?;
    ensure!(output.status.success(), "{}", describe(&output));
    let expected = point_count(&complete_dir)?;
    assert_eq!(expected, 24, "3 videos x 8 cues: {summary}");

    // Kill -9 right after the first segment is acknowledged.
    let killed_dir = workspace.path().join("killed");
    let mut child = Command::new(VIDX)
        .args(["index", "--segment-secs", "4", "--data-dir"])
        .arg(&killed_dir)
        .arg(&videos_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut saw_progress = false;
    for line in BufReader::new(stderr).lines() {
        if line?.contains("segment indexed") {
            saw_progress = true;
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    ensure!(saw_progress, "vidx index never reported an indexed segment");
    let partial = point_count(&killed_dir)?;
    assert!(
        partial < expected,
        "the kill came too late to be midway ({partial} of {expected})"
    );

    let (output, summary) = index(&[&videos_dir], &killed_dir, &["--segment-secs", "4"])?;
    ensure!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        point_count(&killed_dir)?,
        expected,
        "rerun after kill: {summary}"
    );
    Ok(())
}

/// `vidx reindex` killed with SIGKILL after its first source: the next run takes the plan up
/// (the done sources are not indexed again), switches, and drops the old generation; the
/// index then holds one generation's points, as many as before.
#[test]
fn killed_reindex_resumes_and_switches_to_one_generation() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let videos_dir = workspace.path().join("videos");
    std::fs::create_dir(&videos_dir)?;
    let first = make_video(&videos_dir, "a.mp4", false)?;
    for name in ["b", "c", "d"] {
        std::fs::copy(&first, videos_dir.join(format!("{name}.mp4")))?;
        std::fs::copy(
            first.with_extension("srt"),
            videos_dir.join(format!("{name}.srt")),
        )?;
    }
    let data_dir = workspace.path().join("data");
    let (output, summary) = index(&[&videos_dir], &data_dir, &[])?;
    ensure!(output.status.success(), "{}", describe(&output));
    let expected = point_count(&data_dir)?;
    assert_eq!(expected, 32, "4 videos x 8 cues: {summary}");

    let mut child = Command::new(VIDX)
        .args(["reindex", "--data-dir"])
        .arg(&data_dir)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let first_done = line.contains("1/4 sources done");
        seen.push(line);
        if first_done {
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    ensure!(
        seen.iter().any(|line| line.contains("1/4 sources done")),
        "no progress before the kill: {seen:?}"
    );
    let plan: Value = serde_json::from_slice(&std::fs::read(data_dir.join("reindex.json"))?)?;
    let done = plan["sources"]
        .as_array()
        .context("sources")?
        .iter()
        .filter(|source| source["state"] == "done")
        .count();
    ensure!(
        (1..4).contains(&done),
        "killed midway, not at {done} of 4: {plan}"
    );
    // Searches still answer from generation 0 meanwhile.
    assert_eq!(point_count(&data_dir)?, expected);

    let output = vidx(&["reindex", "--json"], &data_dir)?;
    ensure!(output.status.success(), "{}", describe(&output));
    let status = json_lines(&output)?.pop().context("no status")?;
    assert_eq!(status["resumed"], true, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["sources_done"], 4, "{status}");
    assert_eq!(status["sources_skipped"], 0, "{status}");
    assert_eq!(point_count(&data_dir)?, expected, "one generation's points");
    let index_dir = data_dir.join("index");
    assert_eq!(
        std::fs::read_to_string(index_dir.join("CURRENT"))?.trim(),
        "1"
    );
    ensure!(!index_dir.join("shard").exists(), "generation 0 is dropped");
    ensure!(
        !data_dir.join("reindex.json").exists(),
        "the plan is removed"
    );
    let hits = search("slicing tomatoes", &data_dir, &[])?;
    ensure!(!hits.is_empty(), "search after the switch");
    Ok(())
}

#[test]
fn bad_inputs_are_reported_and_the_good_one_is_indexed() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let directory = workspace.path().join("mixed");
    std::fs::create_dir(&directory)?;
    let good = make_video(&directory, "good.mp4", false)?;
    let bytes = std::fs::read(&good)?;
    std::fs::write(directory.join("truncated.mp4"), &bytes[..bytes.len() / 2])?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(directory.join("random.mkv"), random)?;
    std::fs::write(directory.join("empty.mp4"), b"")?;

    let data_dir = workspace.path().join("data");
    let (output, summary) = index(&[&directory], &data_dir, &[])?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "partial failure exits 1\n{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(summary["inputs"], 4, "{summary}");
    assert_eq!(summary["inputs_failed"], 3, "{summary}");
    let failures = summary["failures"].as_array().context("failures")?;
    for name in ["truncated.mp4", "random.mkv", "empty.mp4"] {
        let failure = failures
            .iter()
            .find(|failure| {
                failure["input"]
                    .as_str()
                    .is_some_and(|input| input.ends_with(name))
            })
            .with_context(|| format!("{name} not reported: {summary}"))?;
        let error = failure["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(name) && error.len() > name.len() + 10,
            "{name}: no reason in {error:?}"
        );
    }
    assert!(
        !failures.iter().any(|failure| failure["input"]
            .as_str()
            .is_some_and(|input| input.ends_with("good.mp4"))),
        "{summary}"
    );
    assert_eq!(summary["moments"], 8);
    assert_top_hit_in_scene(
        &search("a snow plough on a frozen road", &data_dir, &[])?,
        3,
        "snowplow",
    )?;
    Ok(())
}

#[test]
fn bad_requests_and_config_name_the_field() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let data_dir = workspace.path().join("data");
    for (arguments, field) in [
        (vec!["search", "   "], "query"),
        (vec!["search", "cats", "--top-k", "0"], "top_k"),
        (
            vec!["search", "cats", "--from", "5000", "--to", "10"],
            "from_ms",
        ),
    ] {
        let output = vidx(&arguments, &data_dir)?;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{arguments:?}\n{}",
            describe(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(field),
            "{arguments:?}\n{}",
            describe(&output)
        );
    }
    let output = Command::new(VIDX)
        .args(["config", "check"])
        .env("VIDX__MEDIA__SEGMNT_SECS", "3")
        .output()?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("segmnt_secs"),
        "{}",
        describe(&output)
    );

    let output = Command::new(VIDX)
        .args(["config", "check"])
        .env("VIDX__MODELS__HF_TOKEN", "hf_topsecretvalue")
        .env("VIDX__MEDIA__SEGMENT_SECS", "12")
        .output()?;
    ensure!(output.status.success(), "{}", describe(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("segment_secs = 12"), "{shown}");
    assert!(
        !shown.contains("topsecret")
            && !String::from_utf8_lossy(&output.stderr).contains("topsecret")
    );

    let output = vidx(&["index", "file:///etc/passwd"], &data_dir)?;
    if output.status.code() == Some(0) {
        bail!("a file:// URL must be rejected\n{}", describe(&output));
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("not allowed"),
        "{}",
        describe(&output)
    );
    Ok(())
}

#[test]
fn http_source_is_indexed_when_private_hosts_are_allowed() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let served = workspace.path().join("served");
    std::fs::create_dir(&served)?;
    let original = make_video(&served, "original.mp4", true)?;
    // Python's http.server ignores Range requests: put the index first so a sequential read works.
    ffmpeg(&[
        "-i",
        original.to_str().context("path")?,
        "-map",
        "0",
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        served.join("remote.mp4").to_str().context("path")?,
    ])?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&served)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/remote.mp4");
    let result = (|| -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "http server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let data_dir = workspace.path().join("data");
        // Loopback is refused by default ...
        let output = vidx(&["index", "--json", &url], &data_dir)?;
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("loopback"),
            "{}",
            describe(&output)
        );
        // ... and allowed by the operator.
        let output = Command::new(VIDX)
            .args(["index", "--json", &url, "--data-dir"])
            .arg(&data_dir)
            .env("HF_HUB_OFFLINE", "1")
            .env("VIDX__MEDIA__ALLOW_PRIVATE_HOSTS", "true")
            .output()?;
        ensure!(output.status.success(), "{}", describe(&output));
        let summary = json_lines(&output)?.pop().context("summary")?;
        assert_eq!(summary["moments"], 8, "{summary}");
        let hits = search("a sleeping kitty on the couch", &data_dir, &[])?;
        assert_top_hit_in_scene(&hits, 2, "kitty over http")?;
        assert_eq!(hits[0]["stream_id"], url.as_str());
        Ok(())
    })();
    server.kill()?;
    server.wait()?;
    result
}

/// `vidx index --model-dir` with the tiny PerceptionLM checkpoint of the model parity tests:
/// the frames of every segment go through PLM, its captions are stored beside the
/// subtitles (kind `caption`), and a missing checkpoint is a clear, typed failure.
#[test]
fn plm_captioner_indexes_caption_moments_from_a_model_dir() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let data_dir = workspace.path().join("data");
    let video = make_video(workspace.path(), "plm.mp4", false)?;
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/plm/cls");
    let model_dir = model_dir.to_str().context("path")?;
    let (output, summary) = index(
        &[&video],
        &data_dir,
        &["--model-dir", model_dir, "--frames", "8"],
    )?;
    ensure!(output.status.success(), "{}", describe(&output));
    let segments = summary["segments"].as_u64().context("segments")?;
    let moments = summary["moments"].as_u64().context("moments")?;
    // Every segment yields at least one PLM moment, on top of the subtitle cues.
    ensure!(
        moments >= segments + CUES.len() as u64,
        "{moments} moments for {segments} segments and {} cues\n{}",
        CUES.len(),
        describe(&output)
    );
    let hits = search("a scene", &data_dir, &["--top-k", "100"])?;
    let captions: Vec<&Value> = hits.iter().filter(|hit| hit["kind"] == "caption").collect();
    ensure!(
        captions.len() as u64 >= segments,
        "{} caption hits for {segments} segments: {hits:?}",
        captions.len()
    );
    for hit in captions {
        let (start, end) = (
            hit["start_ms"].as_u64().context("start_ms")?,
            hit["end_ms"].as_u64().context("end_ms")?,
        );
        ensure!(
            start < end && end <= 4 * SCENE_MS + 1000,
            "caption at {start}..{end}"
        );
    }

    let missing = workspace.path().join("no-such-model");
    let output = vidx(
        &[
            "index",
            "--model-dir",
            missing.to_str().context("path")?,
            video.to_str().context("path")?,
        ],
        &workspace.path().join("data2"),
    )?;
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("no-such-model"),
        "{}",
        describe(&output)
    );
    Ok(())
}

/// A PE-Core checkpoint (the tiny random-weight fixture, in open_clip's layout) gives every
/// segment, frame and moment a `visual` vector and every region a `region` vector; visual,
/// region and hybrid searches return them with per-channel scores, and windows merge them.
#[test]
fn visual_model_indexes_frames_and_regions_and_hybrid_search_fuses_channels() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let data_dir = workspace.path().join("data");
    let video = make_video(workspace.path(), "visual.mp4", true)?;
    let model_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/pe_core/cls");
    let model_dir = model_dir.to_str().context("path")?;
    let visual = ["--visual-model-dir", model_dir];

    let (output, summary) = index(
        &[&video],
        &data_dir,
        &[&visual[..], &["--frames", "8"]].concat(),
    )?;
    ensure!(output.status.success(), "{}", describe(&output));
    let segments = summary["segments"].as_u64().context("segments")?;
    // Per segment: one segment record, 8 frame records, at least one region record; plus
    // the subtitle moments.
    let points = point_count(&data_dir)?;
    ensure!(
        points >= segments * 10 + CUES.len() as u64,
        "{points} points for {segments} segments"
    );

    // Without the model, visual search is refused naming what is missing.
    let output = vidx(&["search", "red", "--mode", "visual"], &data_dir)?;
    ensure!(output.status.code() == Some(2), "{}", describe(&output));
    ensure!(
        String::from_utf8_lossy(&output.stderr).contains("models.visual_embedder"),
        "{}",
        describe(&output)
    );

    let kinds = |hits: &[Value]| -> Vec<String> {
        hits.iter()
            .filter_map(|hit| hit["kind"].as_str().map(String::from))
            .collect()
    };
    let hits = search(
        "a red screen",
        &data_dir,
        &[&visual[..], &["--mode", "visual", "--top-k", "40"]].concat(),
    )?;
    ensure!(hits.len() == 40, "{} visual hits", hits.len());
    let visual_kinds = kinds(&hits);
    for kind in &visual_kinds {
        ensure!(
            ["frame", "segment", "subtitle"].contains(&kind.as_str()),
            "visual hit of kind {kind}"
        );
    }
    ensure!(
        visual_kinds.iter().any(|kind| kind == "frame"),
        "{visual_kinds:?}"
    );
    let mut previous = f64::INFINITY;
    for hit in &hits {
        let score = hit["score"].as_f64().context("score")?;
        let visual_score = hit["scores"]["visual"].as_f64().context("visual score")?;
        ensure!(
            (score - visual_score).abs() < 1e-5 && score <= previous + 1e-6,
            "{hit}"
        );
        ensure!(hit["scores"]["caption"].is_null(), "{hit}");
        previous = score;
    }

    let regions = search(
        "a square",
        &data_dir,
        &[&visual[..], &["--mode", "region", "--top-k", "20"]].concat(),
    )?;
    ensure!(!regions.is_empty(), "no region hits");
    for hit in &regions {
        ensure!(hit["kind"] == "region", "{hit}");
        let region = hit["box"].as_array().context("box")?;
        let values: Vec<f64> = region.iter().filter_map(Value::as_f64).collect();
        ensure!(
            values.len() == 4
                && values.iter().all(|value| (0.0..=1.0).contains(value))
                && values[0] < values[2]
                && values[1] < values[3],
            "{hit}"
        );
    }

    // Hybrid (the default with a visual model): the fused list mixes channels, scores fall.
    let hybrid = search(
        "tomatoes on a cutting board",
        &data_dir,
        &[&visual[..], &["--top-k", "30"]].concat(),
    )?;
    ensure!(
        hybrid
            .iter()
            .any(|hit| !hit["scores"]["caption"].is_null() && !hit["scores"]["visual"].is_null()),
        "no hit found by both the caption and the visual channel: {hybrid:?}"
    );
    ensure!(
        hybrid
            .iter()
            .any(|hit| hit["kind"] == "frame" || hit["kind"] == "region"),
        "hybrid returned only captions"
    );
    // The lexical channel: the cue that shares words with the query is found by it.
    let lexical: Vec<&Value> = hybrid
        .iter()
        .filter(|hit| !hit["scores"]["lexical"].is_null())
        .collect();
    ensure!(
        lexical.iter().any(|hit| hit["caption"]
            .as_str()
            .is_some_and(|caption| caption.contains("tomatoes"))),
        "no lexical hit on the tomato cue: {lexical:?}"
    );
    ensure!(
        lexical.iter().all(|hit| {
            let caption = hit["caption"].as_str().unwrap_or_default().to_lowercase();
            ["tomato", "cut", "board"]
                .iter()
                .any(|word| caption.contains(word))
        }),
        "a lexical hit without a query word: {lexical:?}"
    );
    let scores: Vec<f64> = hybrid
        .iter()
        .filter_map(|hit| hit["score"].as_f64())
        .collect();
    ensure!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "{scores:?}"
    );
    // Captions alone still find the scene.
    let captions = search(
        "tomatoes on a cutting board",
        &data_dir,
        &[&visual[..], &["--mode", "caption"]].concat(),
    )?;
    assert_top_hit_in_scene(&captions, 0, "tomatoes (caption mode)")?;

    // Search by example: a red picture finds the red scene (scene 1) first; the same pixels
    // embed to the same vector whatever the weights.
    let red = workspace.path().join("red.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=320x240",
        "-frames:v",
        "1",
        red.to_str().context("path")?,
    ])?;
    let by_image = search(
        "",
        &data_dir,
        &[
            &visual[..],
            &["--image", red.to_str().context("path")?, "--mode", "visual"],
        ]
        .concat(),
    )?;
    let top = by_image.first().context("no hits for the image")?;
    let (start, end) = (
        top["start_ms"].as_u64().context("start_ms")?,
        top["end_ms"].as_u64().context("end_ms")?,
    );
    // A frame's span runs to the next sampled frame, so the red scene's last frame may end
    // past the cut; where it was sampled is what counts.
    ensure!(
        (SCENE_MS..2 * SCENE_MS).contains(&start) && start < end,
        "the red picture's top hit is at {start}..{end} ms: {top}"
    );
    ensure!(
        top["scores"]["visual"].as_f64().context("visual")? > 0.99,
        "{top}"
    );
    // Search by a hit: the red frame's vector finds the red scene.
    let red_id = top["id"].as_str().context("id")?.to_string();
    let like = search(
        "",
        &data_dir,
        &["--like", &red_id, "--mode", "visual", "--top-k", "5"],
    )?;
    // (Every frame of the plain red scene has the same vector, so the order among them is a
    // tie: the hit itself or an identical frame comes first.)
    let first = like.first().context("no hits for --like")?;
    ensure!(
        first["scores"]["visual"].as_f64().context("visual")? > 0.999,
        "{first}"
    );
    for hit in &like {
        let start = hit["start_ms"].as_u64().context("start_ms")?;
        ensure!(
            (SCENE_MS..2 * SCENE_MS).contains(&start),
            "--like {red_id}: {hit} is not in the red scene"
        );
    }
    for (id, code) in [
        ("not-a-uuid", 2),
        ("00000000-0000-0000-0000-000000000000", 3),
    ] {
        let output = vidx(&["search", "--like", id], &data_dir)?;
        ensure!(
            output.status.code() == Some(code),
            "--like {id}: {}",
            describe(&output)
        );
    }
    let missing = vidx(
        &[
            "search",
            "--image",
            "/no/such/picture.png",
            "--visual-model-dir",
            model_dir,
        ],
        &data_dir,
    )?;
    ensure!(missing.status.code() == Some(3), "{}", describe(&missing));

    // Windows: members of one stream merged; windows of a stream do not overlap.
    let windows = search(
        "a red screen",
        &data_dir,
        &[&visual[..], &["--windows", "--top-k", "40"]].concat(),
    )?;
    ensure!(!windows.is_empty());
    let member_total: u64 = windows
        .iter()
        .filter_map(|window| window["hits"].as_u64())
        .sum();
    ensure!(member_total == 40, "{member_total} hits in windows");
    ensure!(
        windows.len() < 40,
        "nothing merged: {} windows",
        windows.len()
    );
    let mut spans: Vec<(u64, u64)> = windows
        .iter()
        .filter_map(|window| Some((window["start_ms"].as_u64()?, window["end_ms"].as_u64()?)))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        ensure!(pair[0].1 < pair[1].0, "overlapping windows {pair:?}");
    }

    // The same searches by example through a query node: the HTTP API of `vidx serve`
    // (the image in base64) and gRPC (`vidx search --endpoint`, the image's bytes).
    let in_red_scene = |hits: &[Value]| {
        !hits.is_empty()
            && hits.iter().all(|hit| {
                hit["start_ms"]
                    .as_u64()
                    .is_some_and(|start| (SCENE_MS..2 * SCENE_MS).contains(&start))
            })
    };
    {
        let port = free_port()?;
        let _serve = Killed(
            Command::new(VIDX)
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--visual-model-dir",
                    model_dir,
                    "--data-dir",
                ])
                .arg(&data_dir)
                .env("HF_HUB_OFFLINE", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let image = base64(&std::fs::read(&red)?);
        let by_image = wait_for_post(
            port,
            "/v1/search",
            &serde_json::json!({"image": image, "mode": "visual", "top_k": 3}),
        )?;
        let hits = by_image["hits"].as_array().context("hits")?;
        ensure!(
            in_red_scene(hits) && hits[0]["scores"]["visual"].as_f64().unwrap_or(0.0) > 0.99,
            "HTTP search by image: {by_image}"
        );
        let by_hit = wait_for_post(
            port,
            "/v1/search",
            &serde_json::json!({"like_id": red_id, "mode": "visual", "top_k": 5}),
        )?;
        ensure!(
            in_red_scene(by_hit["hits"].as_array().context("hits")?),
            "HTTP search by hit: {by_hit}"
        );
        ensure!(
            !by_hit["windows"].as_array().context("windows")?.is_empty(),
            "{by_hit}"
        );
    }
    let port = free_port()?;
    let query = Killed(
        Command::new(VIDX)
            .args([
                "run",
                "query",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--visual-model-dir",
                model_dir,
                "--data-dir",
            ])
            .arg(&data_dir)
            .env("VIDX__SERVER__HTTP_LISTEN", "")
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let red_path = red.to_str().context("path")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let remote = loop {
        let output = vidx(
            &[
                "search",
                "--image",
                red_path,
                "--mode",
                "visual",
                "--top-k",
                "3",
                "--json",
                "--endpoint",
                &endpoint,
            ],
            &data_dir,
        )?;
        if output.status.success() {
            break json_lines(&output)?;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "gRPC search by image: {}",
            describe(&output)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    ensure!(in_red_scene(&remote), "gRPC search by image: {remote:?}");
    let output = vidx(
        &[
            "search",
            "--like",
            &red_id,
            "--mode",
            "visual",
            "--top-k",
            "5",
            "--json",
            "--endpoint",
            &endpoint,
        ],
        &data_dir,
    )?;
    ensure!(output.status.success(), "{}", describe(&output));
    ensure!(
        in_red_scene(&json_lines(&output)?),
        "gRPC search by hit: {}",
        describe(&output)
    );
    let output = vidx(
        &[
            "search",
            "a red screen",
            "--windows",
            "--json",
            "--endpoint",
            &endpoint,
        ],
        &data_dir,
    )?;
    let windows = json_lines(&output)?;
    ensure!(
        output.status.success()
            && windows
                .iter()
                .all(|window| window["hits"].as_u64().is_some()),
        "gRPC windows: {}",
        describe(&output)
    );

    // The query node holds the index: stop it first.
    drop(query);

    // `vidx eval` on labelled queries: three paraphrases of scenes (the caption channel
    // ranks their scene first, as the search tests above check) and one labelled with a
    // stream that does not exist, which no mode can get right.
    let stream = hits
        .first()
        .and_then(|hit| hit["stream_id"].as_str())
        .context("stream_id")?
        .to_string();
    let labelled = |query: &str, stream: &str, scene: u64| {
        serde_json::json!({"query": query, "stream_id": stream, "start_ms": scene * SCENE_MS,
               "end_ms": (scene + 1) * SCENE_MS})
        .to_string()
    };
    let queries = workspace.path().join("queries.jsonl");
    std::fs::write(
        &queries,
        [
            labelled("someone cutting vegetables in a kitchen", &stream, 0),
            labelled("kids playing football outdoors", &stream, 1),
            labelled("a sleeping kitty on the couch", &stream, 2),
            labelled("snow on a mountain road", "no-such-stream", 3),
        ]
        .join("\n"),
    )?;
    let queries_arg = queries.to_str().context("path")?;
    let output = vidx(
        &[&["eval", queries_arg, "--json"], &visual[..]].concat(),
        &data_dir,
    )?;
    ensure!(output.status.success(), "{}", describe(&output));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    println!("vidx eval: {report}");
    ensure!(report["queries"] == 4, "{report}");
    let caption = &report["modes"]["caption"];
    for key in ["recall_at_1", "recall_at_10", "mrr"] {
        ensure!(caption[key] == 0.75, "caption {key}: {report}");
    }
    let caption_iou = caption["mean_iou"].as_f64().context("mean_iou")?;
    ensure!(caption_iou > 0.0 && caption_iou <= 0.75, "{report}");
    for mode in ["caption", "visual", "region", "hybrid"] {
        let scores = &report["modes"][mode];
        let at = |key: &str| scores[key].as_f64().unwrap_or(f64::NAN);
        ensure!(
            at("recall_at_1") <= at("recall_at_5")
                && at("recall_at_5") <= at("recall_at_10")
                && at("recall_at_10") <= 0.75
                && at("recall_at_1") <= at("mrr")
                && at("mrr") <= at("recall_at_10")
                && (0.0..=0.75).contains(&at("mean_iou")),
            "{mode}: {report}"
        );
    }
    // Without the visual model, its modes are reported as not run; a bad line is named.
    let output = vidx(&["eval", queries_arg, "--json"], &data_dir)?;
    let report: Value = serde_json::from_slice(&output.stdout)?;
    ensure!(
        report["unavailable"]["visual"]
            .as_str()
            .is_some_and(|reason| reason.contains("PE-Core"))
            && report["modes"]["caption"]["recall_at_1"] == 0.75,
        "{report}"
    );
    std::fs::write(
        &queries,
        format!("{}\n{{\"query\": \"x\"}}\n", labelled("a", &stream, 0)),
    )?;
    let output = vidx(&["eval", queries_arg], &data_dir)?;
    ensure!(
        output.status.code() == Some(2)
            && String::from_utf8_lossy(&output.stderr).contains("line 2"),
        "{}",
        describe(&output)
    );
    Ok(())
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// POST `body` as JSON to the local `port` until it answers 200 (the server may be starting).
fn wait_for_post(port: u16, path: &str, body: &Value) -> Result<Value> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = body.to_string();
    loop {
        let attempt = (|| -> Result<(u16, String)> {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
            write!(
                stream,
                "POST {path} HTTP/1.1\r\nHost: vidx\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, rest) = response.split_once("\r\n\r\n").context("no HTTP head")?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status")?;
            Ok((status, rest.to_string()))
        })();
        match attempt {
            Ok((200, text)) => return Ok(serde_json::from_str(&text)?),
            Ok((status, text)) if status != 503 => bail!("{path}: {status} {text}"),
            _ => {}
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{path}: no answer in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `vidx model fetch` with the hub out of reach fails fast, names the model and says what to
/// do; `models.dtype = "bf16"` on a CPU build is refused with the key named.
#[test]
fn model_fetch_and_dtype_errors_are_clear() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let output = Command::new(VIDX)
        .args(["model", "fetch", "facebook/Perception-LM-1B"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", workspace.path())
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .output()?;
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("facebook/Perception-LM-1B") && stderr.contains("HF_TOKEN"),
        "{}",
        describe(&output)
    );

    // A PE-Core id asks for the official layout's single pickle, named in the error.
    let output = Command::new(VIDX)
        .args(["model", "fetch", "facebook/PE-Core-L14-336"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", workspace.path())
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .output()?;
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("facebook/PE-Core-L14-336") && stderr.contains("PE-Core-L14-336.pt"),
        "{}",
        describe(&output)
    );

    let video = make_video(workspace.path(), "dtype.mp4", false)?;
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/plm/cls");
    let output = Command::new(VIDX)
        .args(["index", "--model-dir"])
        .arg(&model_dir)
        .arg(&video)
        .arg("--data-dir")
        .arg(workspace.path().join("data"))
        .env("VIDX__MODELS__DTYPE", "bf16")
        .output()?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("models.dtype"),
        "{}",
        describe(&output)
    );
    Ok(())
}

/// Stops the child with SIGTERM (or kills it) when the test ends early.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn vidx_run_serves_index_and_search_over_grpc_and_stops_on_sigterm() -> Result<()> {
    let workspace = tempfile::tempdir()?;
    let media = std::fs::canonicalize(workspace.path())?.join("media");
    std::fs::create_dir_all(&media)?;
    let video = make_video(&media, "scenes.mp4", true)?;
    let data_dir = workspace.path().join("data");
    let broker = vidx_testkit::LocalBroker::start()?;
    let kafka = broker.fresh_settings(2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = workspace.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[media]\nsegment_secs = 20\nframes_per_segment = 2\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\ningest_roots = [\"{}\"]\n\
             [kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\ndead_letter_topic = \"{}\"\njobs_topic = \"{}\"\n\
             group_id = \"{}\"\n\
             partitions = 2\nsession_timeout_ms = 6000\n\
             # The smallest message limit: every segment travels as a blob.\n\
             max_message_bytes = 65536\n",
            media.display(),
            kafka.brokers,
            kafka.topic,
            kafka.dead_letter_topic,
            kafka.jobs_topic,
            kafka.group_id
        ),
    )?;
    let config_arg = config.to_str().context("path")?;
    // The log goes to a file: a pipe nobody reads would fill up and stall the service.
    let log_path = workspace.path().join("run.log");
    let mut service = Service(
        Command::new(VIDX)
            .args(["run", "ingest", "worker", "query", "--config", config_arg])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );

    // Submit through the CLI once the service answers; it waits for the job to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let output = loop {
        let output = vidx(
            &[
                "index",
                "--endpoint",
                &endpoint,
                "--json",
                video.to_str().context("path")?,
            ],
            &data_dir,
        )?;
        if output.status.success() || std::time::Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    ensure!(output.status.success(), "{}", describe(&output));
    let lines = json_lines(&output)?;
    let job = lines.last().context("no job line")?;
    assert_eq!(job["state"], "JOB_STATE_DONE", "{job}");
    assert_eq!(job["segments_failed"], 0, "{job}");
    assert!(job["segments_total"].as_u64().unwrap_or(0) >= 3, "{job}");
    // Every segment went through the blob store (none fits a message); once committed, the
    // blobs are collected (the thumbnails beside them stay), and the spool is empty.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let blobs = data_dir.join("blobs");
    while files_under(&blobs) - files_under(&blobs.join("thumbnails")) > 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "blobs of indexed segments were not deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(files_under(&data_dir.join("spool")), 0);

    let search_remote = |query: &str| -> Result<Vec<Value>> {
        let output = vidx(
            &["search", query, "--json", "--endpoint", &endpoint],
            &data_dir,
        )?;
        ensure!(output.status.success(), "{}", describe(&output));
        json_lines(&output)
    };
    let cat = search_remote("a cat napping on a couch")?;
    assert_top_hit_in_scene(&cat, 2, "cat")?;
    assert_top_hit_in_scene(&search_remote("snowy mountain road at night")?, 3, "snow")?;
    // The workers put each moment's thumbnail in the blob store; the query node names it by
    // its HTTP path, never by where it is stored.
    ensure!(
        files_under(&blobs.join("thumbnails")) > 0,
        "no thumbnail in the blob store"
    );
    let id = cat[0]["id"].as_str().context("id")?;
    ensure!(
        cat[0]["thumbnail_url"].as_str() == Some(&format!("/v1/thumbnails/{id}.jpg") as &str),
        "{}",
        cat[0]
    );
    let bad = vidx(&["search", " ", "--endpoint", &endpoint], &data_dir)?;
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("query"),
        "{}",
        describe(&bad)
    );
    // Flags that only mean something locally are refused by name over --endpoint, not
    // silently ignored.
    for (arguments, flags) in [
        (
            vec!["index", "--frames", "4", "--device", "cpu"],
            vec!["--frames", "--device"],
        ),
        (vec!["index", "--segment-secs", "5"], vec!["--segment-secs"]),
        (
            vec!["index", "--model-dir", "/models/plm"],
            vec!["--model-dir"],
        ),
    ] {
        let mut arguments = arguments;
        arguments.extend(["--endpoint", endpoint.as_str()]);
        if arguments[0] == "index" {
            arguments.push(video.to_str().context("path")?);
        }
        let refused = vidx(&arguments, &data_dir)?;
        assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
        for flag in flags {
            assert!(
                String::from_utf8_lossy(&refused.stderr).contains(flag),
                "{flag}: {}",
                describe(&refused)
            );
        }
    }
    // Live streams: none here; stopping an unknown job is NotFound; no endpoint is a usage
    // error.
    let streams = vidx(&["streams", "--endpoint", &endpoint, "--json"], &data_dir)?;
    assert!(streams.status.success(), "{}", describe(&streams));
    assert!(json_lines(&streams)?.is_empty(), "{}", describe(&streams));
    let stop = vidx(
        &["streams", "--endpoint", &endpoint, "--stop", "no-such-job"],
        &data_dir,
    )?;
    assert_eq!(stop.status.code(), Some(3), "{}", describe(&stop));
    let no_endpoint = Command::new(VIDX)
        .args(["streams"])
        .env_remove("VIDX_ENDPOINT")
        .output()?;
    assert_eq!(
        no_endpoint.status.code(),
        Some(2),
        "{}",
        describe(&no_endpoint)
    );

    // SIGTERM: a clean stop, exit 0.
    let pid = service.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    ensure!(killed.success(), "kill -TERM failed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let status = loop {
        if let Some(status) = service.0.try_wait()? {
            break status;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "vidx run did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log_path)?;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    Ok(())
}

/// Regular files under `directory`, recursively (0 when it does not exist).
fn files_under(directory: &Path) -> usize {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() { files_under(&path) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}
