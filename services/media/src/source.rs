//! What can be indexed: files, directories (recursively, by video extension) and URLs whose
//! scheme and host pass the allow-list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use vidx_core::MediaError;

/// File extensions treated as video when a directory is scanned.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "m2ts", "mts", "mpg", "mpeg", "flv", "wmv",
    "3gp", "ogv",
];

/// One input to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    File(PathBuf),
    Url(String),
}

impl InputSource {
    /// The name used in logs, spans, errors, progress, points (`source_uri`) and hits, and
    /// as the default stream id: the canonical path of a file, the URL without credentials
    /// ([`redact_url`]).
    pub fn display_name(&self) -> String {
        match self {
            InputSource::File(path) => path.display().to_string(),
            InputSource::Url(url) => redact_url(url),
        }
    }
}

/// Which remote URLs may be opened.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// Allowed schemes, lower case (default `http`, `https`).
    pub allowed_schemes: Vec<String>,
    /// Allow loopback, private, link-local and metadata addresses (off by default).
    pub allow_private_hosts: bool,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self {
            allowed_schemes: vec!["http".into(), "https".into()],
            allow_private_hosts: false,
        }
    }
}

impl UrlPolicy {
    /// Check a URL against the rules without connecting anywhere.
    pub fn check(&self, url: &str) -> Result<(), MediaError> {
        let input = redact_url(url);
        let reject = |reason: String| MediaError::Rejected {
            input: input.clone(),
            reason,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(reject("not a URL with a scheme".into()));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !self.allowed_schemes.contains(&scheme) {
            return Err(reject(format!(
                "scheme `{scheme}` is not allowed (allowed: {})",
                self.allowed_schemes.join(", ")
            )));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = if let Some(bracketed) = host_port.strip_prefix('[') {
            bracketed.split(']').next().unwrap_or_default()
        } else {
            host_port.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(reject("URL has no host".into()));
        }
        if !self.allow_private_hosts && is_private_host(host) {
            return Err(reject(format!(
                "host `{host}` is a loopback, private, link-local or metadata address"
            )));
        }
        Ok(())
    }
}

fn is_private_host(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") || lower == "metadata.google.internal"
    {
        return true;
    }
    match lower.parse::<IpAddr>() {
        Ok(IpAddr::V4(address)) => is_private_v4(address),
        Ok(IpAddr::V6(address)) => is_private_v6(address),
        Err(_) => false,
    }
}

fn is_private_v4(address: Ipv4Addr) -> bool {
    address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_broadcast()
        || address.octets()[0] == 0
        // Carrier-grade NAT 100.64.0.0/10.
        || (address.octets()[0] == 100 && (address.octets()[1] & 0xc0) == 64)
}

fn is_private_v6(address: Ipv6Addr) -> bool {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return is_private_v4(mapped);
    }
    let first_segment = address.segments()[0];
    address.is_loopback()
        || address.is_unspecified()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (first_segment & 0xfe00) == 0xfc00
        || (first_segment & 0xffc0) == 0xfe80
}

/// Query parameters whose values are credentials (lower case; `x-amz-*` and `x-goog-*` are
/// matched by prefix): bearer and API tokens, signed-URL signatures and policies (S3, GCS,
/// CloudFront, Azure SAS, Akamai), passwords.
const SECRET_PARAMETERS: &[&str] = &[
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "api-key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "pass",
    "sig",
    "signature",
    "credential",
    "session",
    "sessionid",
    "jwt",
    "policy",
    "key-pair-id",
    "hdnts",
    "hdnea",
    "googleaccessid",
];

/// Whether the query parameter `name` carries a credential.
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.contains(&name.as_str())
        || name.starts_with("x-amz-")
        || name.starts_with("x-goog-")
        || name.ends_with("_token")
        || name.ends_with("-token")
}

/// A URL fit to show, log, store and return: credentials in the authority become `***@`
/// (`rtsp://admin:pw@cam/…` → `rtsp://***@cam/…`) and the values of credential query
/// parameters `***` (`?token=abc&t=5` → `?token=***&t=5`; `X-Amz-*` and friends). Anything
/// that is not a URL comes back as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    let tail = match before_fragment.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => before_fragment.to_string(),
    };
    match fragment {
        Some(fragment) => format!("{scheme}://{authority}{tail}#{fragment}"),
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// Whether the path has a known video extension.
pub fn is_video_path(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            VIDEO_EXTENSIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(extension))
        })
}

/// Classify one command-line argument: a URL (checked against the policy) or a local path.
pub fn parse_input(argument: &str, policy: &UrlPolicy) -> Result<InputSource, MediaError> {
    if argument.contains("://") || has_ffmpeg_protocol_prefix(argument) {
        if has_ffmpeg_protocol_prefix(argument) && !argument.contains("://") {
            return Err(MediaError::Rejected {
                input: argument.to_string(),
                reason: "ffmpeg protocol prefixes (concat:, data:, pipe:, ...) are not allowed"
                    .into(),
            });
        }
        policy.check(argument)?;
        return Ok(InputSource::Url(argument.to_string()));
    }
    Ok(InputSource::File(PathBuf::from(argument)))
}

fn has_ffmpeg_protocol_prefix(argument: &str) -> bool {
    let Some((prefix, _)) = argument.split_once(':') else {
        return false;
    };
    // A one-letter prefix is a Windows drive, not a protocol.
    prefix.len() > 1
        && prefix
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '+')
        && !Path::new(argument).exists()
}

/// Expand the arguments: directories are walked recursively for video files (sorted, hidden
/// entries skipped); files and URLs pass through. Arguments that cannot be used are returned
/// as errors beside the inputs that can.
pub fn discover_inputs(
    arguments: &[String],
    policy: &UrlPolicy,
) -> (Vec<InputSource>, Vec<MediaError>) {
    let mut inputs = Vec::new();
    let mut errors = Vec::new();
    for argument in arguments {
        match parse_input(argument, policy) {
            Ok(InputSource::File(path)) => {
                if path.is_dir() {
                    walk_directory(&path, &mut inputs, &mut errors);
                } else if path.exists() {
                    inputs.push(InputSource::File(canonical(&path)));
                } else {
                    errors.push(MediaError::NotFound {
                        input: path.display().to_string(),
                    });
                }
            }
            Ok(url) => inputs.push(url),
            Err(error) => errors.push(error),
        }
    }
    (inputs, errors)
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn walk_directory(directory: &Path, inputs: &mut Vec<InputSource>, errors: &mut Vec<MediaError>) {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) => {
            errors.push(MediaError::Io {
                input: directory.display().to_string(),
                reason: format!("cannot read directory: {error}"),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            !path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk_directory(&path, inputs, errors);
        } else if is_video_path(&path) {
            inputs.push(InputSource::File(canonical(&path)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_disallowed_schemes_and_prefixes() {
        let policy = UrlPolicy::default();
        for url in [
            "file:///etc/passwd",
            "concat:a.mp4|b.mp4",
            "data:video/mp4;base64,AAAA",
            "rtmp://example.com/live",
            "ftp://example.com/a.mp4",
        ] {
            let error = parse_input(url, &policy).expect_err(url);
            assert!(
                matches!(error, MediaError::Rejected { .. }),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn rejects_private_and_metadata_hosts() {
        let policy = UrlPolicy::default();
        for url in [
            "http://127.0.0.1/a.mp4",
            "http://localhost:8080/a.mp4",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/a.mp4",
            "http://[::ffff:127.0.0.1]/a.mp4",
            "http://10.1.2.3/a.mp4",
            "https://user:pw@192.168.0.4/a.mp4",
        ] {
            let error = policy.check(url).expect_err(url);
            assert!(error.to_string().contains("host"), "{url}: {error}");
            assert!(
                !error.to_string().contains("pw"),
                "credentials leaked: {error}"
            );
        }
        assert!(policy.check("https://example.com/video.mp4").is_ok());
        let open = UrlPolicy {
            allow_private_hosts: true,
            ..UrlPolicy::default()
        };
        assert!(open.check("http://127.0.0.1:9000/a.mp4").is_ok());
    }

    #[test]
    fn redacts_credentials_in_the_query_string() {
        assert_eq!(
            redact_url(
                "https://cdn.example.com/v.m3u8?t=5&token=abc&X-Amz-Signature=s1&X-Amz-Date=d\
                 &Key-Pair-Id=k&sig=z&session_token=q&empty#frag?key=x"
            ),
            "https://cdn.example.com/v.m3u8?t=5&token=***&X-Amz-Signature=***&X-Amz-Date=***\
             &Key-Pair-Id=***&sig=***&session_token=***&empty#frag?key=x"
        );
        assert_eq!(
            redact_url("rtsp://u:p@cam:554/live?channel=1&password=pw"),
            "rtsp://***@cam:554/live?channel=1&password=***"
        );
        assert_eq!(redact_url("/videos/a?token=b.mp4"), "/videos/a?token=b.mp4");
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("rtsp://admin:secret@cam.local:554/stream?x=1"),
            "rtsp://***@cam.local:554/stream?x=1"
        );
        assert_eq!(
            redact_url("https://example.com/a@b"),
            "https://example.com/a@b"
        );
    }

    #[test]
    fn video_extensions() {
        assert!(is_video_path(Path::new("/x/a.MP4")));
        assert!(!is_video_path(Path::new("/x/a.srt")));
        assert!(!is_video_path(Path::new("/x/mp4")));
    }
}
