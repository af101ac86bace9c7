//! Subtitle cues: tolerant SRT, WebVTT and ASS/SSA parsers for sidecar files in any text
//! encoding (a byte-order mark, else UTF-8, else UTF-16 by its zero bytes, else the legacy
//! encoding `chardetng` finds), decoding of embedded text subtitle streams, and the rule that
//! gives each cue to exactly one segment.

use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::media::Type as MediaType;
use vidx_core::{MediaError, SubtitleCue, TimeRange};

use crate::input::{OpenSettings, open_input_with, to_ms};
use crate::source::InputSource;

/// Cues parsed from a subtitle file, and how many blocks were malformed and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedCues {
    pub cues: Vec<SubtitleCue>,
    pub skipped_blocks: usize,
}

/// The text of a subtitle file and the name of the encoding it was read in: the one its
/// byte-order mark names; UTF-8 when it is valid UTF-8; UTF-16 when every other byte of its
/// start is zero (a file without a mark); else the legacy encoding `chardetng` judges most
/// likely (CP1252 for Western European text, Shift_JIS, GBK, KOI8-R, …). Never fails:
/// undecodable bytes become U+FFFD.
pub fn decode_subtitle_bytes(bytes: &[u8]) -> (String, &'static str) {
    let encoding = if let Some((encoding, _)) = encoding_rs::Encoding::for_bom(bytes) {
        encoding
    } else if std::str::from_utf8(bytes).is_ok() {
        encoding_rs::UTF_8
    } else if let Some(encoding) = utf16_without_bom(bytes) {
        encoding
    } else {
        let mut detector = chardetng::EncodingDetector::new();
        detector.feed(bytes, true);
        detector.guess(None, true)
    };
    // `decode` strips a BOM of the encoding it sniffs (and prefers it to `encoding`).
    let (text, used, _) = encoding.decode(bytes);
    (text.into_owned(), used.name())
}

/// UTF-16 without a byte-order mark: subtitle text is mostly ASCII, so one byte of nearly
/// every pair in the file's start is zero — the second in little-endian, the first in
/// big-endian.
fn utf16_without_bom(bytes: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let pairs: Vec<&[u8]> = bytes.chunks_exact(2).take(512).collect();
    if pairs.len() < 4 {
        return None;
    }
    let zero_at = |index: usize| pairs.iter().filter(|pair| pair[index] == 0).count();
    let mostly = |count: usize| count * 10 >= pairs.len() * 9;
    match (mostly(zero_at(0)), mostly(zero_at(1))) {
        (false, true) => Some(encoding_rs::UTF_16LE),
        (true, false) => Some(encoding_rs::UTF_16BE),
        _ => None,
    }
}

/// Parse SRT, WebVTT or ASS/SSA text (detected from the content). Malformed blocks are
/// counted and skipped; cues with empty text are dropped.
pub fn parse_subtitle_text(text: &str) -> ParsedCues {
    let text = text
        .trim_start_matches('\u{feff}')
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    if is_ass(&text) {
        return parse_ass(&text);
    }
    let is_vtt = text.trim_start().starts_with("WEBVTT");
    let mut parsed = ParsedCues::default();
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let first = lines[0].trim();
        if is_vtt
            && (first.starts_with("WEBVTT")
                || first.starts_with("NOTE")
                || first.starts_with("STYLE")
                || first.starts_with("REGION"))
        {
            continue;
        }
        let Some(timing_line) = lines.iter().position(|line| line.contains("-->")) else {
            parsed.skipped_blocks += 1;
            continue;
        };
        // At most one identifier line (SRT index or VTT cue id) may precede the timing.
        if timing_line > 1 {
            parsed.skipped_blocks += 1;
            continue;
        }
        let Some((start_ms, end_ms)) = parse_timing_line(lines[timing_line]) else {
            parsed.skipped_blocks += 1;
            continue;
        };
        let caption = clean_cue_text(&lines[timing_line + 1..].join(" "));
        if caption.is_empty() {
            continue;
        }
        parsed.cues.push(SubtitleCue {
            start_ms,
            end_ms: end_ms.max(start_ms),
            text: caption,
        });
    }
    parsed.cues.sort_by_key(|cue| (cue.start_ms, cue.end_ms));
    parsed
}

fn parse_timing_line(line: &str) -> Option<(u64, u64)> {
    let (start, rest) = line.split_once("-->")?;
    let end = rest.split_whitespace().next()?;
    Some((parse_timestamp(start.trim())?, parse_timestamp(end.trim())?))
}

/// `hh:mm:ss,mmm`, `hh:mm:ss.mmm` or `mm:ss.mmm` → ms.
fn parse_timestamp(value: &str) -> Option<u64> {
    let value = value.replace(',', ".");
    let (clock, fraction) = value.split_once('.').unwrap_or((value.as_str(), "0"));
    let parts: Vec<&str> = clock.split(':').collect();
    let (hours, minutes, seconds) = match parts.as_slice() {
        [hours, minutes, seconds] => (*hours, *minutes, *seconds),
        [minutes, seconds] => ("0", *minutes, *seconds),
        _ => return None,
    };
    let hours: u64 = hours.trim().parse().ok()?;
    let minutes: u64 = minutes.trim().parse().ok()?;
    let seconds: u64 = seconds.trim().parse().ok()?;
    if minutes >= 60 || seconds >= 60 || fraction.is_empty() {
        return None;
    }
    let digits: String = fraction.chars().take(3).collect();
    if !digits.chars().all(|digit| digit.is_ascii_digit()) {
        return None;
    }
    let millis: u64 = format!("{digits:0<3}").parse().ok()?;
    Some(((hours * 60 + minutes) * 60 + seconds) * 1000 + millis)
}

/// Remove markup (`<i>`, `<v Speaker>`, `{\an8}`, ASS overrides) and entities; collapse spaces.
pub fn clean_cue_text(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    let mut depth_angle = false;
    let mut depth_brace = false;
    for character in text.chars() {
        match character {
            '<' if !depth_brace => depth_angle = true,
            '>' if depth_angle => depth_angle = false,
            '{' if !depth_angle => depth_brace = true,
            '}' if depth_brace => depth_brace = false,
            _ if depth_angle || depth_brace => {}
            _ => cleaned.push(character),
        }
    }
    let cleaned = cleaned
        .replace("\\N", " ")
        .replace("\\n", " ")
        .replace("\\h", " ")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&lrm;", "")
        .replace("&rlm;", "");
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` is an ASS/SSA script (`[Script Info]` first, or an `[Events]` section).
fn is_ass(text: &str) -> bool {
    let start = text.trim_start();
    start.starts_with("[Script Info]")
        || text
            .lines()
            .any(|line| line.trim().eq_ignore_ascii_case("[events]"))
}

/// The `Dialogue:` events of an ASS/SSA script's `[Events]` section, read by its `Format:`
/// line (by the standard order when it has none): start, end and text, the text last and
/// free to hold commas. Comments and other sections are ignored; a dialogue line without a
/// readable start or end is counted as skipped.
fn parse_ass(text: &str) -> ParsedCues {
    const STANDARD: [&str; 10] = [
        "layer", "start", "end", "style", "name", "marginl", "marginr", "marginv", "effect", "text",
    ];
    let mut parsed = ParsedCues::default();
    let mut in_events = false;
    let mut format: Vec<String> = STANDARD.iter().map(|field| field.to_string()).collect();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_events = line.eq_ignore_ascii_case("[events]");
            continue;
        }
        if !in_events {
            continue;
        }
        if let Some(fields) = line.strip_prefix("Format:") {
            format = fields
                .split(',')
                .map(|field| field.trim().to_ascii_lowercase())
                .collect();
            continue;
        }
        let Some(event) = line.strip_prefix("Dialogue:") else {
            continue;
        };
        let values: Vec<&str> = event.splitn(format.len().max(1), ',').collect();
        let field = |name: &str| {
            format
                .iter()
                .position(|field| field == name)
                .and_then(|index| values.get(index))
                .map(|value| value.trim())
        };
        let (Some(start_ms), Some(end_ms)) = (
            field("start").and_then(parse_timestamp),
            field("end").and_then(parse_timestamp),
        ) else {
            parsed.skipped_blocks += 1;
            continue;
        };
        let caption = clean_cue_text(field("text").unwrap_or_default());
        if caption.is_empty() {
            continue;
        }
        parsed.cues.push(SubtitleCue {
            start_ms,
            end_ms: end_ms.max(start_ms),
            text: caption,
        });
    }
    parsed.cues.sort_by_key(|cue| (cue.start_ms, cue.end_ms));
    parsed
}

/// The dialogue text of an ASS event line as FFmpeg's decoders emit it
/// (`ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text`).
fn ass_dialogue_text(line: &str) -> String {
    let line = line.strip_prefix("Dialogue:").unwrap_or(line);
    let text = line.splitn(9, ',').nth(8).unwrap_or(line);
    clean_cue_text(text)
}

/// Sidecar subtitle files next to a video: `<stem>.srt|vtt|ass|ssa` and
/// `<stem>.<lang>.srt|vtt|ass|ssa`, sorted.
pub fn sidecar_paths(video: &Path) -> Vec<PathBuf> {
    let (Some(directory), Some(stem)) =
        (video.parent(), video.file_stem().and_then(|s| s.to_str()))
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                return false;
            };
            let lower = name.to_ascii_lowercase();
            if ![".srt", ".vtt", ".ass", ".ssa"]
                .iter()
                .any(|extension| lower.ends_with(extension))
            {
                return false;
            }
            let name_stem = &name[..name.len() - 4];
            name_stem == stem
                || name_stem
                    .strip_prefix(stem)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|language| !language.is_empty() && !language.contains('.'))
        })
        .collect();
    paths.sort();
    paths
}

/// Cues from the sidecar files of a local video. Unreadable sidecars are logged and skipped.
pub fn sidecar_cues(video: &Path) -> Vec<SubtitleCue> {
    let mut cues = Vec::new();
    for path in sidecar_paths(video) {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (text, encoding) = decode_subtitle_bytes(&bytes);
                if encoding != "UTF-8" {
                    tracing::debug!(sidecar = %path.display(), encoding, "subtitle sidecar decoded");
                }
                let parsed = parse_subtitle_text(&text);
                if parsed.skipped_blocks > 0 {
                    tracing::warn!(
                        sidecar = %path.display(),
                        skipped = parsed.skipped_blocks,
                        "skipped malformed subtitle blocks"
                    );
                }
                cues.extend(parsed.cues);
            }
            Err(error) => {
                tracing::warn!(sidecar = %path.display(), %error, "cannot read subtitle sidecar")
            }
        }
    }
    cues
}

/// Decode the text subtitle streams of an input. Times are ms relative to `origin_ms`
/// (the start of the main video stream, in the container's absolute time). Bitmap subtitles
/// (DVD, PGS) are skipped: they would need OCR.
pub(crate) fn embedded_cues(
    source: &InputSource,
    origin_ms: i64,
    open: &OpenSettings,
) -> Result<Vec<SubtitleCue>, MediaError> {
    let mut opened = open_input_with(source, open)?;
    let mut decoders = Vec::new();
    for stream in opened.context.streams() {
        if stream.parameters().medium() != MediaType::Subtitle {
            continue;
        }
        let decoder = ffmpeg::codec::Context::from_parameters(stream.parameters())
            .and_then(|context| context.decoder().subtitle());
        match decoder {
            Ok(decoder) => decoders.push((stream.index(), stream.time_base(), decoder)),
            Err(error) => tracing::warn!(
                input = %opened.name,
                stream = stream.index(),
                %error,
                "no decoder for subtitle stream; skipped"
            ),
        }
    }
    if decoders.is_empty() {
        return Ok(Vec::new());
    }
    let mut cues = Vec::new();
    let mut bitmap_rects = 0usize;
    let mut packet = ffmpeg::Packet::empty();
    loop {
        match packet.read(&mut opened.context) {
            Ok(()) => opened.touch(),
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => continue,
            Err(error) => {
                return Err(MediaError::Io {
                    input: opened.name.clone(),
                    reason: format!("reading subtitles: {error}"),
                });
            }
        }
        let Some((_, time_base, decoder)) = decoders
            .iter_mut()
            .find(|(index, _, _)| *index == packet.stream())
        else {
            continue;
        };
        let Some(pts) = packet.pts() else { continue };
        let mut subtitle = ffmpeg::Subtitle::new();
        let Ok(true) = decoder.decode(&packet, &mut subtitle) else {
            continue;
        };
        let start_ms = to_ms(pts, *time_base) - origin_ms + i64::from(subtitle.start());
        let end_ms = if packet.duration() > 0 {
            to_ms(pts + packet.duration(), *time_base) - origin_ms
        } else if subtitle.end() > subtitle.start() {
            start_ms + i64::from(subtitle.end() - subtitle.start())
        } else {
            start_ms + 2000
        };
        let mut texts = Vec::new();
        for rect in subtitle.rects() {
            match rect {
                ffmpeg::subtitle::Rect::Text(text) => texts.push(clean_cue_text(text.get())),
                ffmpeg::subtitle::Rect::Ass(ass) => texts.push(ass_dialogue_text(ass.get())),
                ffmpeg::subtitle::Rect::Bitmap(_) => bitmap_rects += 1,
                ffmpeg::subtitle::Rect::None(_) => {}
            }
        }
        let text = texts.join(" ").trim().to_string();
        if text.is_empty() {
            continue;
        }
        cues.push(SubtitleCue {
            start_ms: start_ms.max(0) as u64,
            end_ms: end_ms.max(start_ms).max(0) as u64,
            text,
        });
    }
    if bitmap_rects > 0 {
        tracing::warn!(input = %opened.name, bitmap_rects, "bitmap subtitles need OCR; skipped");
    }
    Ok(cues)
}

/// Sort cues and drop exact duplicates (the same cue in a stream and in a sidecar).
pub fn normalize_cues(mut cues: Vec<SubtitleCue>) -> Vec<SubtitleCue> {
    cues.sort_by(|left, right| {
        (left.start_ms, left.end_ms, &left.text).cmp(&(right.start_ms, right.end_ms, &right.text))
    });
    cues.dedup();
    cues
}

/// The cues that belong to a segment: those that *start* inside it, so that a cue spanning a
/// boundary is indexed once. The first segment also takes cues that start before it, the last
/// one those that start after it.
pub fn cues_for_segment(
    cues: &[SubtitleCue],
    range: TimeRange,
    is_first: bool,
    is_last: bool,
) -> Vec<SubtitleCue> {
    cues.iter()
        .filter(|cue| {
            let after_start = cue.start_ms >= range.start_ms || is_first;
            let before_end = cue.start_ms < range.end_ms || is_last;
            after_start && before_end
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_srt_with_markup_and_malformed_blocks() {
        let srt = "\u{feff}1\r\n00:00:01,000 --> 00:00:04,500\r\n<i>A chef</i> slices\r\na tomato\r\n\r\n\
                   2\n00:00:05,000 --> garbage\nbroken\n\n\
                   3\n00:01:02.250 --> 00:01:03,000 X1:40\n{\\an8}Snow &amp; ice\n\n\
                   just text without timing\n";
        let parsed = parse_subtitle_text(srt);
        assert_eq!(parsed.skipped_blocks, 2);
        assert_eq!(
            parsed.cues,
            vec![
                SubtitleCue {
                    start_ms: 1000,
                    end_ms: 4500,
                    text: "A chef slices a tomato".into()
                },
                SubtitleCue {
                    start_ms: 62_250,
                    end_ms: 63_000,
                    text: "Snow & ice".into()
                },
            ]
        );
    }

    #[test]
    fn parses_webvtt_with_ids_settings_and_notes() {
        let vtt = "WEBVTT - title\n\nNOTE a comment\nspanning lines\n\nSTYLE\n::cue { color: red }\n\n\
                   intro\n00:01.000 --> 00:02.500 align:start\n<v Roger>Hello <c.loud>there</c>\n\n\
                   01:00:00.000 --> 01:00:01.000\nLate line\n";
        let parsed = parse_subtitle_text(vtt);
        assert_eq!(parsed.skipped_blocks, 0);
        assert_eq!(parsed.cues.len(), 2);
        assert_eq!(
            parsed.cues[0],
            SubtitleCue {
                start_ms: 1000,
                end_ms: 2500,
                text: "Hello there".into()
            }
        );
        assert_eq!(parsed.cues[1].start_ms, 3_600_000);
    }

    #[test]
    fn rejects_out_of_range_clock_fields() {
        assert_eq!(parse_timestamp("00:61:00,000"), None);
        assert_eq!(parse_timestamp("00:00:75.000"), None);
        assert_eq!(parse_timestamp("1:02:03.4"), Some(3_723_400));
    }

    #[test]
    fn ass_lines_lose_fields_and_overrides() {
        assert_eq!(
            ass_dialogue_text("0,0,Default,,0,0,0,,{\\i1}Snow, falls{\\i0}\\Nover hills"),
            "Snow, falls over hills"
        );
    }

    #[test]
    fn each_cue_goes_to_exactly_one_segment() {
        let cues: Vec<SubtitleCue> = [
            (0, 500),
            (19_000, 21_000),
            (20_000, 22_000),
            (45_000, 47_000),
        ]
        .into_iter()
        .map(|(start_ms, end_ms)| SubtitleCue {
            start_ms,
            end_ms,
            text: format!("{start_ms}"),
        })
        .collect();
        let segments = [TimeRange::new(400, 20_000), TimeRange::new(20_000, 40_000)];
        let first = cues_for_segment(&cues, segments[0], true, false);
        let last = cues_for_segment(&cues, segments[1], false, true);
        let first_starts: Vec<u64> = first.iter().map(|cue| cue.start_ms).collect();
        let last_starts: Vec<u64> = last.iter().map(|cue| cue.start_ms).collect();
        assert_eq!(first_starts, vec![0, 19_000]);
        assert_eq!(last_starts, vec![20_000, 45_000]);
    }

    #[test]
    fn finds_sidecars_by_stem() -> std::io::Result<()> {
        let directory = std::env::temp_dir().join(format!("vidx-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&directory)?;
        for name in [
            "movie.mp4",
            "movie.srt",
            "movie.en.vtt",
            "movie.fr.ass",
            "movie.ssa",
            "movie.extra.en.srt",
            "movies.srt",
            "other.srt",
        ] {
            std::fs::write(directory.join(name), b"")?;
        }
        let found: Vec<String> = sidecar_paths(&directory.join("movie.mp4"))
            .iter()
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect();
        std::fs::remove_dir_all(&directory)?;
        assert_eq!(
            found,
            vec!["movie.en.vtt", "movie.fr.ass", "movie.srt", "movie.ssa"]
        );
        Ok(())
    }

    const FRENCH_SRT: &str = "1\r\n00:00:01,000 --> 00:00:03,500\r\nUn café très chaud à Noël.\r\n\r\n\
        2\r\n00:00:04,000 --> 00:00:06,000\r\nLà-bas, l'été dure où le garçon s'élève.\r\n";

    #[test]
    fn legacy_and_utf16_sidecars_decode_to_the_same_cues() {
        let expected = parse_subtitle_text(FRENCH_SRT);
        assert_eq!(expected.cues.len(), 2);
        assert!(expected.cues[0].text.contains("café"));

        // CP1252 (what Windows tools write for French): no BOM, not UTF-8.
        let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(FRENCH_SRT);
        assert!(std::str::from_utf8(&cp1252).is_err());
        let (text, encoding) = decode_subtitle_bytes(&cp1252);
        assert_eq!(encoding, "windows-1252");
        assert_eq!(parse_subtitle_text(&text), expected);

        // UTF-16 with a byte-order mark, either byte order, and without one.
        let utf16 = |big_endian: bool, bom: bool| {
            let mut bytes = Vec::new();
            let units = bom
                .then_some(0xfeff_u16)
                .into_iter()
                .chain(FRENCH_SRT.encode_utf16());
            for unit in units {
                bytes.extend(if big_endian {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                });
            }
            bytes
        };
        for (big_endian, bom, name) in [
            (false, true, "UTF-16LE"),
            (true, true, "UTF-16BE"),
            (false, false, "UTF-16LE"),
            (true, false, "UTF-16BE"),
        ] {
            let (text, encoding) = decode_subtitle_bytes(&utf16(big_endian, bom));
            assert_eq!(encoding, name, "big endian {big_endian}, bom {bom}");
            assert_eq!(parse_subtitle_text(&text), expected, "{name}, bom {bom}");
        }

        // UTF-8 with and without its BOM.
        let mut with_bom = b"\xef\xbb\xbf".to_vec();
        with_bom.extend_from_slice(FRENCH_SRT.as_bytes());
        for bytes in [FRENCH_SRT.as_bytes().to_vec(), with_bom] {
            let (text, encoding) = decode_subtitle_bytes(&bytes);
            assert_eq!(encoding, "UTF-8");
            assert_eq!(parse_subtitle_text(&text), expected);
        }
    }

    #[test]
    fn ass_scripts_give_their_dialogue_by_the_format_line() {
        let script = "[Script Info]\nTitle: test\nScriptType: v4.00+\n\n\
            [V4+ Styles]\nFormat: Name, Fontname\nStyle: Default,Arial\n\n\
            [Events]\n\
            Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n\
            Dialogue: 0,0:00:02.50,0:00:05.00,Default,,0,0,0,,{\\i1}Snow, falls{\\i0}\\Nover the hills\n\
            Comment: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,not shown\n\
            Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,\n\
            Dialogue: 0,bad,0:00:09.00,Default,,0,0,0,,unreadable start\n\
            Dialogue: 0,1:02:03.04,1:02:04.00,Default,,0,0,0,,later\n";
        let parsed = parse_subtitle_text(script);
        assert_eq!(parsed.skipped_blocks, 1);
        assert_eq!(
            parsed.cues,
            vec![
                SubtitleCue {
                    start_ms: 2_500,
                    end_ms: 5_000,
                    text: "Snow, falls over the hills".into(),
                },
                SubtitleCue {
                    start_ms: 3_723_040,
                    end_ms: 3_724_000,
                    text: "later".into(),
                },
            ]
        );
        // SSA (v4) orders its fields differently: the Format line says how.
        let ssa = "[Script Info]\n\n[Events]\n\
            Format: Marked, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n\
            Dialogue: Marked=0,0:00:01.00,0:00:02.00,Default,,0000,0000,0000,,Bonjour, le monde\n";
        assert_eq!(
            parse_subtitle_text(ssa).cues,
            vec![SubtitleCue {
                start_ms: 1_000,
                end_ms: 2_000,
                text: "Bonjour, le monde".into(),
            }]
        );
    }

    #[test]
    fn sidecars_in_cp1252_and_ass_are_read_next_to_the_video() -> std::io::Result<()> {
        let directory = std::env::temp_dir().join(format!("vidx-encoding-{}", std::process::id()));
        std::fs::create_dir_all(&directory)?;
        std::fs::write(directory.join("clip.mp4"), b"")?;
        let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(FRENCH_SRT);
        std::fs::write(directory.join("clip.fr.srt"), &cp1252)?;
        std::fs::write(
            directory.join("clip.en.ass"),
            "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n\
             Dialogue: 0,0:00:08.00,0:00:09.00,Default,,0,0,0,,A cat sleeps\n",
        )?;
        let cues = sidecar_cues(&directory.join("clip.mp4"));
        std::fs::remove_dir_all(&directory)?;
        let texts: Vec<&str> = cues.iter().map(|cue| cue.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "A cat sleeps",
                "Un café très chaud à Noël.",
                "Là-bas, l'été dure où le garçon s'élève."
            ]
        );
        Ok(())
    }
}
