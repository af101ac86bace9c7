//! The CLIP byte-pair-encoding tokenizer of PE-Core's text tower (OpenAI CLIP's and
//! open_clip's `SimpleTokenizer`): text cleaned and lowercased, split by CLIP's pattern, each
//! piece byte-encoded and merged by rank, wrapped in `<start_of_text>` … `<end_of_text>`,
//! truncated to the context length with the end token forced last, padded with 0.
//!
//! The merges file (`assets/bpe_simple_vocab_16e6.txt.gz`) is embedded: PE-Core checkpoints
//! carry no tokenizer. Text cleaning covers what open_clip's `ftfy.fix_text` + double
//! `html.unescape` change in practice (NFC, curly quotes, full-width forms, ligatures, HTML
//! entities); exotic mojibake repair is not reproduced.

use std::collections::HashMap;
use std::io::Read;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;
use vidx_core::ModelError;

const MERGES_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
/// Merges used by CLIP: the file's lines `1..=48894` (49152 − 256 − 2).
const MERGE_COUNT: usize = 49152 - 256 - 2;
const START_OF_TEXT: &str = "<start_of_text>";
const END_OF_TEXT: &str = "<end_of_text>";
const END_OF_WORD: &str = "</w>";

/// CLIP's BPE tokenizer.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    merge_ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    start_id: u32,
    end_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClipTokenizer")
            .field("vocab", &self.encoder.len())
            .finish()
    }
}

impl ClipTokenizer {
    /// The standard CLIP vocabulary (49,408 tokens).
    pub fn new() -> Result<Self, ModelError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(MERGES_GZ)
            .read_to_string(&mut text)
            .map_err(|error| tokenizer_error(format!("embedded CLIP merges: {error}")))?;
        Self::from_merges(&text)
    }

    /// Build from the text of a `bpe_simple_vocab_16e6.txt`-style merges file.
    pub fn from_merges(text: &str) -> Result<Self, ModelError> {
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(MERGE_COUNT)
            .map(|line| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(first), Some(second)) => Ok((first.to_string(), second.to_string())),
                    _ => Err(tokenizer_error(format!("bad merge line `{line}`"))),
                }
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != MERGE_COUNT {
            return Err(tokenizer_error(format!(
                "{} merges, expected {MERGE_COUNT}",
                merges.len()
            )));
        }
        let byte_encoder = bytes_to_unicode();
        let byte_order = byte_order();
        let mut vocab: Vec<String> = byte_order
            .iter()
            .map(|&byte| byte_encoder[byte as usize].to_string())
            .collect();
        let with_end: Vec<String> = vocab
            .iter()
            .map(|token| format!("{token}{END_OF_WORD}"))
            .collect();
        vocab.extend(with_end);
        vocab.extend(
            merges
                .iter()
                .map(|(first, second)| format!("{first}{second}")),
        );
        vocab.push(START_OF_TEXT.to_string());
        vocab.push(END_OF_TEXT.to_string());
        let encoder: HashMap<String, u32> = vocab
            .into_iter()
            .enumerate()
            .map(|(index, token)| (token, index as u32))
            .collect();
        let merge_ranks = merges
            .into_iter()
            .enumerate()
            .map(|(rank, pair)| (pair, rank))
            .collect();
        let pattern = Regex::new(&format!(
            r"(?i){START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
        ))
        .map_err(|error| tokenizer_error(format!("pattern: {error}")))?;
        let start_id = encoder[START_OF_TEXT];
        let end_id = encoder[END_OF_TEXT];
        Ok(Self {
            encoder,
            merge_ranks,
            byte_encoder,
            pattern,
            start_id,
            end_id,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// The BPE ids of `text`, without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = clean(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&cleaned) {
            let piece = piece.as_str();
            if piece == START_OF_TEXT || piece == END_OF_TEXT {
                ids.push(self.encoder[piece]);
                continue;
            }
            let symbols: Vec<String> = piece
                .bytes()
                .map(|byte| self.byte_encoder[byte as usize].to_string())
                .collect();
            for token in self.merge(symbols) {
                // Every merge result and every byte symbol is in the vocabulary by construction.
                if let Some(&id) = self.encoder.get(&token) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `[start] + ids + [end]`, truncated to `context_length` with the end token kept last,
    /// padded with 0.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context_length);
        ids.push(self.start_id);
        ids.extend(self.encode(text));
        ids.push(self.end_id);
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = self.end_id;
            }
        }
        ids.resize(context_length, 0);
        ids
    }

    /// Merge a word's byte symbols by rank; the last symbol carries the end-of-word mark.
    fn merge(&self, mut word: Vec<String>) -> Vec<String> {
        if let Some(last) = word.last_mut() {
            last.push_str(END_OF_WORD);
        }
        loop {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    self.merge_ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|rank| (*rank, pair[0].clone(), pair[1].clone()))
                })
                .min_by_key(|(rank, _, _)| *rank);
            let Some((_, first, second)) = best else {
                return word;
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut index = 0;
            while index < word.len() {
                if index + 1 < word.len() && word[index] == first && word[index + 1] == second {
                    merged.push(format!("{first}{second}"));
                    index += 2;
                } else {
                    merged.push(word[index].clone());
                    index += 1;
                }
            }
            word = merged;
            if word.len() == 1 {
                return word;
            }
        }
    }
}

fn tokenizer_error(reason: String) -> ModelError {
    ModelError::Load {
        model: "clip tokenizer".into(),
        reason,
    }
}

/// The byte values in GPT-2/CLIP order: printable ones first, then the rest.
fn byte_order() -> Vec<u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let rest: Vec<u8> = (0..=255u8)
        .filter(|byte| !printable.contains(byte))
        .collect();
    printable.extend(rest);
    printable
}

/// GPT-2/CLIP's reversible byte → printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&byte)
            || (0xA1..=0xAC).contains(&byte)
            || (0xAE..=0xFF).contains(&byte);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let code = 256 + shifted;
            shifted += 1;
            char::from_u32(code).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// open_clip's `lower` cleaning: fix the text, unescape HTML twice, collapse whitespace, trim,
/// lowercase.
fn clean(text: &str) -> String {
    let mut fixed = String::with_capacity(text.len());
    for character in text.nfc() {
        match character {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => fixed.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => fixed.push('"'),
            '\u{3000}' => fixed.push(' '),
            // Full-width ASCII forms → ASCII.
            '\u{FF01}'..='\u{FF5E}' => {
                fixed.extend(char::from_u32(character as u32 - 0xFEE0));
            }
            '\u{FB00}' => fixed.push_str("ff"),
            '\u{FB01}' => fixed.push_str("fi"),
            '\u{FB02}' => fixed.push_str("fl"),
            '\u{FB03}' => fixed.push_str("ffi"),
            '\u{FB04}' => fixed.push_str("ffl"),
            '\t' | '\n' | '\r' => fixed.push(character),
            control if control.is_control() => {}
            other => fixed.push(other),
        }
    }
    let unescaped = unescape_html(&unescape_html(&fixed));
    unescaped
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Python's `html.unescape` for named entities in common use and numeric references.
fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find('&') {
        out.push_str(&rest[..position]);
        rest = &rest[position..];
        let end = rest[1..]
            .find(|character: char| !(character.is_ascii_alphanumeric() || character == '#'))
            .map(|offset| offset + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{A0}'),
            numeric if numeric.starts_with("#x") || numeric.starts_with("#X") => {
                u32::from_str_radix(&numeric[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            numeric if numeric.starts_with('#') => {
                numeric[1..].parse::<u32>().ok().and_then(char::from_u32)
            }
            _ => None,
        };
        match decoded {
            Some(character) => {
                out.push(character);
                let consumed = if rest[end..].starts_with(';') {
                    end + 1
                } else {
                    end
                };
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_has_clip_s_size_and_special_ids() {
        let tokenizer = ClipTokenizer::new().expect("embedded merges");
        assert_eq!(tokenizer.vocab_size(), 49408);
        assert_eq!(tokenizer.start_id, 49406);
        assert_eq!(tokenizer.end_id(), 49407);
    }

    #[test]
    fn truncation_keeps_the_end_token_last() {
        let tokenizer = ClipTokenizer::new().expect("embedded merges");
        let ids = tokenizer.tokenize("one two three four five six seven eight", 5);
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[4], 49407);
        let padded = tokenizer.tokenize("dog", 6);
        assert_eq!(padded[3..], [0, 0, 0]);
        assert_eq!(padded[2], 49407);
    }

    #[test]
    fn html_entities_and_whitespace_are_cleaned() {
        assert_eq!(clean("  Tom &amp;amp;   Jerry&#39;s\n"), "tom & jerry's");
        assert_eq!(clean("a &unknown; b"), "a &unknown; b");
        assert_eq!(
            clean("\u{201C}Hi\u{201D} \u{FF21} \u{FB01}sh"),
            "\"hi\" a fish"
        );
    }
}
