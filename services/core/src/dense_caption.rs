//! PLM's dense-caption output (`[start, end]: description` per event, start and end being
//! indices of the sampled frames) parsed tolerantly, and frame indices mapped to media time
//! through the frames' real timestamps.

use crate::time::TimeRange;

/// One event in frame indices, inclusive, ordered, within the frames shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameEvent {
    pub first_frame: usize,
    pub last_frame: usize,
    pub text: String,
}

/// The parsed events, how many non-empty lines could not be read, and how many events named
/// frames that were not shown (dropped: their time is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenseCaptions {
    pub events: Vec<FrameEvent>,
    pub bad_lines: usize,
    pub out_of_range: usize,
}

/// Parse model output. Each `[a, b]` (also `[a-b]`, `[a to b]`) opens an event whose text
/// runs to the next range or the end of the line; `:` and list markers around it are
/// dropped, as is PLM's trailing period, and a description written in brackets
/// (`[0, 12]: [a man walks]`) is taken from inside them. Reversed ranges are swapped; an
/// event with an index at or past `frames` is dropped and counted in `out_of_range` (never
/// moved onto the last frame); events without text are skipped. A non-empty line with no
/// event counts as bad.
pub fn parse_dense_captions(output: &str, frames: usize) -> DenseCaptions {
    let mut parsed = DenseCaptions::default();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut found = false;
        let mut rest = line;
        while let Some((range, after)) = next_range(rest) {
            let text_end = next_range_at(after).unwrap_or(after.len());
            let text = clean(&after[..text_end]);
            rest = &after[text_end..];
            let (mut first, mut second) = range;
            if first > second {
                std::mem::swap(&mut first, &mut second);
            }
            if frames == 0 || text.is_empty() {
                continue;
            }
            found = true;
            if second >= frames {
                parsed.out_of_range += 1;
                continue;
            }
            parsed.events.push(FrameEvent {
                first_frame: first,
                last_frame: second,
                text,
            });
        }
        if !found {
            parsed.bad_lines += 1;
        }
    }
    parsed
}

/// Where the next `[number SEP number]` of `text` opens.
fn next_range_at(text: &str) -> Option<usize> {
    let mut offset = 0;
    loop {
        let open = offset + text[offset..].find('[')?;
        let inside = &text[open + 1..];
        let close = inside.find(']')?;
        if range_of(&inside[..close]).is_some() {
            return Some(open);
        }
        offset = open + 1 + close + 1;
    }
}

/// The first `[number SEP number]` in `text` and what follows its `]`.
fn next_range(text: &str) -> Option<((usize, usize), &str)> {
    let mut search = text;
    loop {
        let open = search.find('[')?;
        let inside = &search[open + 1..];
        let close = inside.find(']')?;
        if let Some(range) = range_of(&inside[..close]) {
            return Some((range, &inside[close + 1..]));
        }
        search = &inside[close + 1..];
    }
}

fn range_of(inside: &str) -> Option<(usize, usize)> {
    let normalised = inside.replace(" to ", ",").replace('-', ",");
    let mut numbers = normalised.split(',').map(str::trim);
    let first = numbers.next()?.parse().ok()?;
    let second = numbers.next()?.parse().ok()?;
    if numbers.next().is_some() {
        return None;
    }
    Some((first, second))
}

fn clean(text: &str) -> String {
    let text = text
        .trim()
        .trim_start_matches([':', '-', '–', ' '])
        .trim()
        .trim_end_matches(['\n', ' ', ',', ';']);
    // `[description]`: the words inside the brackets.
    let text = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']').or_else(|| inner.strip_suffix("].")))
        .unwrap_or(text)
        .trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    text.trim().to_string()
}

/// Media time of an event: from the first frame's timestamp to the timestamp of the frame
/// after the last one (the segment's end for the last frame), inside `segment`.
pub fn event_time(event: &FrameEvent, frame_pts_ms: &[u64], segment: TimeRange) -> TimeRange {
    let at = |index: usize| frame_pts_ms.get(index).copied();
    let start = if event.first_frame == 0 {
        segment.start_ms
    } else {
        at(event.first_frame).unwrap_or(segment.start_ms)
    };
    let end = at(event.last_frame + 1).unwrap_or(segment.end_ms);
    let range = TimeRange::new(start, end);
    range.clamp_to(&segment).unwrap_or(segment)
}

/// Frame index into the sampled frames for a media time (the last frame at or before it).
pub fn frame_at(frame_pts_ms: &[u64], time_ms: u64) -> usize {
    frame_pts_ms
        .iter()
        .rposition(|pts| *pts <= time_ms)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plm_style_output() {
        let output = "[0, 12]: The man picks up a knife.\n[13, 20]: He slices the tomato vertically.\n[21, 31]: He puts the slices on a plate.";
        let parsed = parse_dense_captions(output, 32);
        assert_eq!(parsed.bad_lines, 0);
        assert_eq!(
            parsed.events,
            vec![
                FrameEvent {
                    first_frame: 0,
                    last_frame: 12,
                    text: "The man picks up a knife".into()
                },
                FrameEvent {
                    first_frame: 13,
                    last_frame: 20,
                    text: "He slices the tomato vertically".into()
                },
                FrameEvent {
                    first_frame: 21,
                    last_frame: 31,
                    text: "He puts the slices on a plate".into()
                },
            ]
        );
    }

    #[test]
    fn tolerates_variants_and_counts_bad_lines() {
        let output = "Here are the events:\n- [5-3] a dog runs\n1. [7 to 9]: cat sleeps.\n[40, 50]: out of range\n[2, 4]:\n[x, y]: nonsense\n\n[0,1] one [2,3] two";
        let parsed = parse_dense_captions(output, 32);
        let summary: Vec<(usize, usize, &str)> = parsed
            .events
            .iter()
            .map(|event| (event.first_frame, event.last_frame, event.text.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (3, 5, "a dog runs"),
                (7, 9, "cat sleeps"),
                (0, 1, "one"),
                (2, 3, "two"),
            ]
        );
        // "Here are the events:", "[2, 4]:" (no text) and "[x, y]: nonsense".
        assert_eq!(parsed.bad_lines, 3);
        // [40, 50] names frames that were not shown: dropped and counted, not clamped.
        assert_eq!(parsed.out_of_range, 1);
    }

    #[test]
    fn bracketed_descriptions_are_read_and_out_of_range_events_dropped() {
        let output = "[0, 12]: [The man picks up a knife.]\n[13, 20]: [He slices [thin] pieces]\n[30, 32]: [past the end]\n[31, 31] [the last frame]";
        let parsed = parse_dense_captions(output, 32);
        let summary: Vec<(usize, usize, &str)> = parsed
            .events
            .iter()
            .map(|event| (event.first_frame, event.last_frame, event.text.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 12, "The man picks up a knife"),
                (13, 20, "He slices [thin] pieces"),
                (31, 31, "the last frame"),
            ]
        );
        assert_eq!((parsed.bad_lines, parsed.out_of_range), (0, 1));
    }

    #[test]
    fn garbage_gives_no_events() {
        let parsed = parse_dense_captions("]]][[[ 3, 4\n[1,2,3]: x\n[", 32);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.bad_lines, 3);
        assert!(parse_dense_captions("[0, 1]: a", 0).events.is_empty());
    }

    #[test]
    fn frame_indices_map_through_timestamps() {
        // 4 frames sampled from a 20 s segment starting at 100 s.
        let pts = [102_500, 107_500, 112_500, 117_500];
        let segment = TimeRange::new(100_000, 120_000);
        let event = |first_frame, last_frame| FrameEvent {
            first_frame,
            last_frame,
            text: String::new(),
        };
        assert_eq!(
            event_time(&event(0, 0), &pts, segment),
            TimeRange::new(100_000, 107_500)
        );
        assert_eq!(
            event_time(&event(1, 2), &pts, segment),
            TimeRange::new(107_500, 117_500)
        );
        assert_eq!(
            event_time(&event(2, 3), &pts, segment),
            TimeRange::new(112_500, 120_000)
        );
        assert_eq!(frame_at(&pts, 110_000), 1);
        assert_eq!(frame_at(&pts, 0), 0);
    }
}
