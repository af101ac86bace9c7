//! `config/default.toml` is the one source of the defaults: every key in it is documented
//! there (a comment right above it) and read by the code somewhere outside this crate (a
//! key nothing reads is a setting that silently does nothing).

use std::path::{Path, PathBuf};

use vidx_config::DEFAULT_TOML;

/// Every `section.key` of the defaults, tables of free-form options included as one key.
fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            // A section: its keys. `[server.blob_options]` and `[kafka.properties]` are
            // free-form maps: the map itself is the key.
            toml::Value::Table(inner) if prefix.is_empty() => keys(inner, &path, out),
            _ => out.push(path),
        }
    }
}

fn rust_sources(directory: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_default_key_is_documented_and_read() {
    let table: toml::Table = toml::from_str(DEFAULT_TOML).expect("the defaults parse");
    let mut all = Vec::new();
    keys(&table, "", &mut all);
    assert!(all.len() > 40, "only {} keys found", all.len());

    // Documented: the line that sets the key (or opens its table) follows a comment.
    let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
    let mut undocumented = Vec::new();
    let mut section = String::new();
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = header.to_string();
            if header.contains('.') && !lines[..number].last().is_some_and(|l| l.starts_with('#')) {
                undocumented.push(header.to_string());
            }
            continue;
        }
        let Some((key, _)) = trimmed.split_once('=') else {
            continue;
        };
        if trimmed.starts_with('#') {
            continue;
        }
        let previous = number.checked_sub(1).map(|index| lines[index].trim());
        if !previous.is_some_and(|previous| previous.starts_with('#')) {
            undocumented.push(format!("{section}.{}", key.trim()));
        }
    }
    assert!(
        undocumented.is_empty(),
        "keys without a comment above them in config/default.toml: {undocumented:?}"
    );

    // Read: a field access `.key` in the code of some crate other than the config crate.
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for crate_dir in std::fs::read_dir(&services)
        .expect("services/")
        .filter_map(Result::ok)
    {
        if crate_dir.file_name() == "config" {
            continue;
        }
        rust_sources(&crate_dir.path().join("src"), &mut files);
    }
    let code: String = files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let unread: Vec<&String> = all
        .iter()
        .filter(|path| {
            let field = path.rsplit('.').next().unwrap_or(path);
            let access = format!(".{field}");
            !code.match_indices(&access).any(|(at, _)| {
                code[at + access.len()..]
                    .chars()
                    .next()
                    .is_none_or(|next| !(next.is_alphanumeric() || next == '_'))
            })
        })
        .collect();
    assert!(
        unread.is_empty(),
        "keys of config/default.toml no code outside vidx-config reads: {unread:?}"
    );
}
