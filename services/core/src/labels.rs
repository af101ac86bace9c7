//! Stream labels: `key=value` pairs set when a stream is submitted (`site=north`,
//! `group=lobby`), stored on every point of the stream and filterable in searches. Stored as
//! one keyword list (`labels: ["group=lobby", "site=north"]`), so that one payload index
//! serves every key.

/// At most this many labels per stream.
pub const MAX_LABELS: usize = 16;
/// Longest key and value, in characters.
pub const MAX_KEY_CHARS: usize = 64;
pub const MAX_VALUE_CHARS: usize = 128;

/// Check one `key=value` label and give it back in its stored form. Keys are lowercase
/// ASCII letters, digits, `_`, `-` and `.`, starting with a letter or digit; values are any
/// text without control characters.
pub fn parse(label: &str) -> Result<String, String> {
    let Some((key, value)) = label.split_once('=') else {
        return Err(format!("`{label}` is not key=value"));
    };
    let (key, value) = (key.trim(), value.trim());
    let key_ok = !key.is_empty()
        && key.chars().count() <= MAX_KEY_CHARS
        && key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !key_ok {
        return Err(format!(
            "label key `{key}`: 1 to {MAX_KEY_CHARS} lowercase letters, digits, `_`, `-` or `.`"
        ));
    }
    if value.is_empty() || value.chars().count() > MAX_VALUE_CHARS {
        return Err(format!(
            "label `{key}`: the value must have 1 to {MAX_VALUE_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("label `{key}`: control characters in the value"));
    }
    Ok(format!("{key}={value}"))
}

/// Check a stream's labels: each valid, at most [`MAX_LABELS`], one value per key. Sorted.
pub fn parse_all<'a>(labels: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut parsed = Vec::new();
    for label in labels {
        parsed.push(parse(label)?);
    }
    parsed.sort();
    parsed.dedup();
    if parsed.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    for pair in parsed.windows(2) {
        let key = |label: &str| label.split('=').next().unwrap_or_default().to_string();
        if key(&pair[0]) == key(&pair[1]) {
            return Err(format!("label `{}` is given twice", key(&pair[0])));
        }
    }
    Ok(parsed)
}

/// A map of labels (`{"site": "north"}`, the gRPC and JSON form) as checked labels.
pub fn from_map<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<String>, String> {
    let joined: Vec<String> = map
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    parse_all(joined.iter().map(String::as_str))
}

/// Stored labels back as a map.
pub fn to_map(labels: &[String]) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|label| label.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_sorted_and_one_value_per_key() {
        assert_eq!(
            parse_all(["site=North Gate", "group=lobby", "site=North Gate"]),
            Ok(vec![
                "group=lobby".to_string(),
                "site=North Gate".to_string()
            ])
        );
        assert!(parse("site").is_err());
        assert!(parse("Site=x").is_err());
        assert!(parse("site=").is_err());
        assert!(parse("si te=x").is_err());
        assert!(parse("site=a\u{7}b").is_err());
        assert!(parse_all(["site=a", "site=b"]).is_err());
        let many: Vec<String> = (0..=MAX_LABELS)
            .map(|index| format!("k{index}=v"))
            .collect();
        assert!(parse_all(many.iter().map(String::as_str)).is_err());
        let map = to_map(&["a=1=2".to_string()]);
        assert_eq!(map.get("a").map(String::as_str), Some("1=2"));
    }
}
