//! What can be indexed: files, directories (recursively, by video extension) and URLs whose
//! scheme and host pass the allow-list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    /// Private networks URLs may reach although the guard is on (cameras on a LAN).
    pub allowed_networks: Vec<Network>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self {
            allowed_schemes: vec!["http".into(), "https".into()],
            allow_private_hosts: false,
            allowed_networks: Vec::new(),
        }
    }
}

/// An address range in CIDR notation (`10.20.0.0/16`, `fd00::/8`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}`: not an IP address or CIDR range"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }
}

impl Network {
    /// Whether `address` lies in the range (an IPv4-mapped IPv6 address as its IPv4 one).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical_ip(address);
        let masked = |value: u128, bits: u32| {
            let prefix = u32::from(self.prefix);
            if prefix == 0 {
                0
            } else {
                value >> (bits - prefix)
            }
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                masked(u32::from(network).into(), 32) == masked(u32::from(address).into(), 32)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                masked(u128::from(network), 128) == masked(u128::from(address), 128)
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is.
fn canonical_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A host written as an IPv4 address in any form the system resolver accepts (`inet_aton`):
/// one to four parts, each decimal, octal (`0` first) or hexadecimal (`0x`), the last filling
/// the bytes left — `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`, `0`. `None` for names.
fn parse_ipv4_any_form(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let value = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|value| *value > 255) {
        return None;
    }
    let room = 8 * (5 - values.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut address: u64 = 0;
    for (index, value) in leading.iter().enumerate() {
        address |= value << (24 - 8 * index as u32);
    }
    Some(Ipv4Addr::from((address | last) as u32))
}

/// The port a URL without one connects to (only used to resolve its host).
fn default_port(scheme: &str) -> u16 {
    match scheme {
        "http" => 80,
        "https" => 443,
        "rtsp" => 554,
        "rtsps" => 322,
        "rtmp" => 1935,
        "rtmps" => 443,
        _ => 0,
    }
}

/// For the protocols FFmpeg connects by itself (RTSP, RTMP, SRT, TCP, UDP and their TLS
/// forms; HTTP(S) goes through the guard's proxy instead): check every address `url`'s host
/// stands for now, and put the first in the URL in place of the name, so that FFmpeg
/// connects to the address checked (a name that resolves elsewhere the second time — DNS
/// rebinding — cannot move the connection). Credentials, port, path and query stay.
pub(crate) fn pin_to_checked_address(url: &str, policy: &UrlPolicy) -> Result<String, String> {
    let addresses = policy.checked_addresses(url)?;
    let (Some(address), Some((scheme, rest))) = (addresses.first(), url.split_once("://")) else {
        return Ok(url.to_string());
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .and_then(|(_, after)| after.strip_prefix(':')),
        None => host_port.split_once(':').map(|(_, port)| port),
    }
    .filter(|port| !port.is_empty());
    let host = match address.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    Ok(format!(
        "{scheme}://{}{host}{}{tail}",
        userinfo
            .map(|userinfo| format!("{userinfo}@"))
            .unwrap_or_default(),
        port.map(|port| format!(":{port}")).unwrap_or_default()
    ))
}

impl UrlPolicy {
    /// Check a URL against the rules: its scheme, and every address its host stands for —
    /// an IP address in any spelling the resolver accepts, or a name resolved here (every
    /// address it resolves to must pass). Loopback, private, link-local, unspecified and
    /// metadata addresses are refused unless `allow_private_hosts` is set or
    /// `allowed_networks` holds them.
    pub fn check(&self, url: &str) -> Result<(), MediaError> {
        self.checked_addresses(url)
            .map(|_| ())
            .map_err(|reason| MediaError::Rejected {
                input: redact_url(url),
                reason,
            })
    }

    /// [`check`](Self::check), returning the checked socket addresses of the URL's host (its
    /// port, or the scheme's) — the only ones a connection may go to — or why it is refused.
    /// Empty with `allow_private_hosts` (nothing is resolved then).
    pub fn checked_addresses(&self, url: &str) -> Result<Vec<SocketAddr>, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("not a URL with a scheme".into());
        };
        let scheme = scheme.to_ascii_lowercase();
        if !self.allowed_schemes.contains(&scheme) {
            return Err(format!(
                "scheme `{scheme}` is not allowed (allowed: {})",
                self.allowed_schemes.join(", ")
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            (host, after.strip_prefix(':'))
        } else {
            match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        // `localhost.` is `localhost`: a trailing dot only marks a name as fully qualified.
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err("URL has no host".into());
        }
        if self.allow_private_hosts {
            return Ok(Vec::new());
        }
        if host == "localhost" || host.ends_with(".localhost") || host == "metadata.google.internal"
        {
            return Err(format!(
                "host `{host}` is a loopback, private, link-local or metadata address"
            ));
        }
        let port = match port.filter(|port| !port.is_empty()) {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("port `{port}` is not a number"))?,
            None => default_port(&scheme),
        };
        let addresses: Vec<SocketAddr> = if let Ok(address) = host.parse::<Ipv6Addr>() {
            vec![SocketAddr::new(IpAddr::V6(address), port)]
        } else if let Some(address) = parse_ipv4_any_form(&host) {
            vec![SocketAddr::new(IpAddr::V4(address), port)]
        } else {
            use std::net::ToSocketAddrs;
            (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|error| format!("host `{host}` does not resolve: {error}"))?
                .collect()
        };
        for address in &addresses {
            let ip = canonical_ip(address.ip());
            let private = match ip {
                IpAddr::V4(v4) => is_private_v4(v4),
                IpAddr::V6(v6) => is_private_v6(v6),
            };
            if private
                && !self
                    .allowed_networks
                    .iter()
                    .any(|network| network.contains(ip))
            {
                return Err(format!(
                    "host `{host}` is {ip}, a loopback, private, link-local or metadata \
                     address (allow its network in media.allowed_networks)"
                ));
            }
        }
        Ok(addresses)
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
        // IPv4-compatible (`::a.b.c.d`, deprecated) and NAT64 (`64:ff9b::/96`) forms of a
        // private IPv4 address.
        || (address.segments()[..6] == [0; 6] && is_private_v4(ipv4_tail(address)))
        || (address.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            && is_private_v4(ipv4_tail(address)))
}

/// The last 32 bits of an IPv6 address as an IPv4 address.
fn ipv4_tail(address: Ipv6Addr) -> Ipv4Addr {
    let octets = address.octets();
    Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15])
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

/// What [`redact_url`] puts in place of a credential.
const REDACTED: &str = "***";

/// The source a stored point's `source_uri` names, to read it again (a hit's clip): a file
/// path, or a URL — unless [`redact_url`] took credentials out of it before it was stored.
pub fn stored_source(source_uri: &str) -> Result<InputSource, &'static str> {
    if !source_uri.contains("://") {
        return Ok(InputSource::File(source_uri.into()));
    }
    if source_uri.contains(REDACTED) {
        return Err("the source needs credentials, which are not stored with the index");
    }
    Ok(InputSource::Url(source_uri.to_string()))
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
        Some((_, host)) => format!("{REDACTED}@{host}"),
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
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}={REDACTED}"),
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
    fn urls_ffmpeg_connects_by_itself_are_pinned_to_the_checked_address() {
        let policy = UrlPolicy {
            allowed_schemes: vec!["rtsp".into(), "udp".into(), "srt".into()],
            allowed_networks: vec![
                "127.0.0.0/8".parse().expect("cidr"),
                "::1/128".parse().expect("cidr"),
            ],
            ..UrlPolicy::default()
        };
        for (url, pinned) in [
            (
                "rtsp://user:p%40ss@0x7f.1:8554/cam/1?token=x",
                "rtsp://user:p%40ss@127.0.0.1:8554/cam/1?token=x",
            ),
            ("rtsp://127.1/stream", "rtsp://127.0.0.1/stream"),
            (
                "srt://[::1]:9000?mode=caller",
                "srt://[::1]:9000?mode=caller",
            ),
            ("udp://@2130706433:1234", "udp://@127.0.0.1:1234"),
        ] {
            assert_eq!(
                pin_to_checked_address(url, &policy).as_deref(),
                Ok(pinned),
                "{url}"
            );
        }
        let closed = UrlPolicy {
            allowed_schemes: vec!["rtsp".into()],
            ..UrlPolicy::default()
        };
        let refused = pin_to_checked_address("rtsp://127.0.0.1:8554/cam", &closed);
        assert!(
            refused
                .as_ref()
                .is_err_and(|reason| reason.contains("127.0.0.1")),
            "{refused:?}"
        );
    }

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
        assert!(policy.check("https://93.184.215.14/video.mp4").is_ok());
        // A name that does not resolve is refused with the reason (no DNS here for it).
        let error = policy
            .check("https://no-such-host.invalid/video.mp4")
            .expect_err("unresolvable");
        assert!(error.to_string().contains("does not resolve"), "{error}");
        let open = UrlPolicy {
            allow_private_hosts: true,
            ..UrlPolicy::default()
        };
        assert!(open.check("http://127.0.0.1:9000/a.mp4").is_ok());
    }

    #[test]
    fn every_spelling_of_a_private_address_is_refused() {
        let policy = UrlPolicy {
            allowed_schemes: vec!["http".into(), "rtsp".into()],
            ..UrlPolicy::default()
        };
        for url in [
            "http://127.1:9464/",
            "http://2130706433:9464/",
            "http://0x7f.1:9464/",
            "http://0x7F000001/",
            "http://0177.0.0.1/",
            "http://0/",
            "http://0.0.0.0/",
            "http://127.0.0.1./",
            "http://localhost.:9464/",
            "http://LOCALHOST/",
            "http://a.localhost./",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[fe80::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://10.1/",
            "rtsp://u:p@192.168.1.2/stream",
        ] {
            let error = policy.check(url).expect_err(url).to_string();
            assert!(
                error.contains("loopback, private, link-local or metadata"),
                "{url}: {error}"
            );
        }
        // Names are resolved and every address they stand for is checked.
        let error = policy
            .check("http://ip6-localhost.:80/")
            .err()
            .map(|error| error.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|error| error.contains("::1") || error.contains("does not resolve")),
            "{error:?}"
        );
        assert_eq!(
            parse_ipv4_any_form("127.1"),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            parse_ipv4_any_form("1.2.0x0304"),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        for name in ["example.com", "1.2.3.4.5", "256.1", "08.1", "cam-1", ""] {
            assert_eq!(parse_ipv4_any_form(name), None, "{name}");
        }
        // Public addresses in any spelling pass.
        for url in [
            "http://8.8.8.8/",
            "http://134744072/",
            "http://[2001:4860::8888]/",
        ] {
            assert!(policy.check(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn allowed_networks_open_private_ranges_one_by_one() {
        let policy = UrlPolicy {
            allowed_schemes: vec!["rtsp".into()],
            allowed_networks: vec![
                "192.168.10.0/24".parse().expect("cidr"),
                "fd00::/8".parse().expect("cidr"),
                "10.0.0.7".parse().expect("one host"),
            ],
            ..UrlPolicy::default()
        };
        for url in [
            "rtsp://192.168.10.20/live",
            "rtsp://[::ffff:192.168.10.20]/live",
            "rtsp://[fd12::1]/live",
            "rtsp://10.0.0.7/live",
        ] {
            assert!(policy.check(url).is_ok(), "{url}");
        }
        for url in [
            "rtsp://192.168.11.20/live",
            "rtsp://10.0.0.8/live",
            "rtsp://127.0.0.1/live",
        ] {
            assert!(policy.check(url).is_err(), "{url}");
        }
        for bad in ["10.0.0.0/33", "cam/8", "fd00::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
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
