//! The connection guard of URL inputs: a small HTTP proxy on loopback that FFmpeg sends every
//! HTTP(S) connection of one input through (its `http_proxy` option). The check at submit
//! time sees only the URL as submitted; FFmpeg resolves the host again when it connects,
//! follows redirects and opens the variants, segments and keys an HLS playlist names. The
//! guard resolves each of those hosts once, checks every address against the [`UrlPolicy`]
//! and connects only to an address it checked: a redirect or a playlist entry pointing at a
//! private address, or a name that re-resolves to one (DNS rebinding), reaches nothing.
//!
//! Plain HTTP requests arrive in absolute form (`GET http://host/path`) and go upstream with
//! `Connection: close`, one request per connection (so that no reused connection carries a
//! request to another host); HTTPS arrives as `CONNECT host:443` and is tunnelled as bytes
//! (FFmpeg's TLS runs end to end, through the tunnel).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::source::UrlPolicy;

/// Longest request head accepted from FFmpeg.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long the guard waits to reach an upstream host, and for FFmpeg's request head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running guard; it stops when dropped.
pub(crate) struct ConnectGuard {
    address: SocketAddr,
    refusals: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ConnectGuard {
    /// Listen on an ephemeral loopback port and serve connections on threads of their own.
    pub(crate) fn start(policy: UrlPolicy) -> std::io::Result<Self> {
        static NO_PROXY_WARNED: std::sync::Once = std::sync::Once::new();
        if std::env::var_os("no_proxy").is_some_and(|hosts| !hosts.is_empty()) {
            NO_PROXY_WARNED.call_once(|| {
                tracing::warn!(
                    "no_proxy is set: FFmpeg connects to the hosts it lists without the URL \
                     guard (redirects and playlist entries to them are not checked); the vidx \
                     binary moves it to NO_PROXY at start, a program embedding vidx-media \
                     must too"
                );
            });
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_refusals, thread_stop) = (refusals.clone(), stop.clone());
        let policy = Arc::new(policy);
        std::thread::Builder::new()
            .name("vidx-url-guard".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (policy, refusals) = (policy.clone(), thread_refusals.clone());
                            let _ = std::thread::Builder::new()
                                .name("vidx-url-guard-conn".into())
                                .spawn(move || {
                                    if let Err(error) = serve(client, &policy, &refusals) {
                                        tracing::debug!(%error, "URL guard connection ended");
                                    }
                                });
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "URL guard stopped accepting");
                            break;
                        }
                    }
                }
            })?;
        Ok(Self {
            address,
            refusals,
            stop,
        })
    }

    /// The proxy URL for FFmpeg's `http_proxy` option.
    pub(crate) fn proxy_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Why the guard refused connections so far (the first one names the rule).
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .map(|refusals| refusals.clone())
            .unwrap_or_default()
    }
}

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection from FFmpeg: read its request head, check where it goes, connect there
/// (or answer 403), then relay bytes both ways until either side closes.
fn serve(
    mut client: TcpStream,
    policy: &UrlPolicy,
    refusals: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return respond(&mut client, "431 Request Header Fields Too Large");
        }
        let mut chunk = [0u8; 4096];
        let read = client.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let rest = buffer[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return respond(&mut client, "400 Bad Request");
    };
    let tunnel = method.eq_ignore_ascii_case("CONNECT");
    // What FFmpeg asked to reach, as a URL the policy can read.
    let url = if tunnel {
        format!("https://{target}/")
    } else if target.starts_with("http://") {
        target.to_string()
    } else {
        return respond(&mut client, "400 Bad Request");
    };
    let addresses = match policy.checked_addresses(&url) {
        Ok(addresses) => addresses,
        Err(reason) => {
            tracing::warn!(%reason, "URL guard refused a connection");
            if let Ok(mut refusals) = refusals.lock() {
                refusals.push(reason);
            }
            return respond(&mut client, "403 Forbidden");
        }
    };
    let Some(mut upstream) = addresses
        .iter()
        .find_map(|address| TcpStream::connect_timeout(address, CONNECT_TIMEOUT).ok())
    else {
        return respond(&mut client, "502 Bad Gateway");
    };
    client.set_read_timeout(None)?;
    if tunnel {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    } else {
        // Origin form upstream, no proxy headers, one request per connection.
        let after_authority = &target["http://".len()..];
        let path = match after_authority.find('/') {
            Some(index) => &after_authority[index..],
            None => "/",
        };
        let mut forwarded = format!("{method} {path} {version}\r\n");
        for line in lines.filter(|line| !line.is_empty()) {
            let name = line.split(':').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("keep-alive")
                || name.to_ascii_lowercase().starts_with("proxy-")
            {
                continue;
            }
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
        forwarded.push_str("Connection: close\r\n\r\n");
        upstream.write_all(forwarded.as_bytes())?;
    }
    upstream.write_all(&rest)?;
    relay(client, upstream)
}

/// Copy bytes both ways until each side has closed its half.
fn relay(client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    let (mut client_read, mut upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let outbound = std::thread::Builder::new()
        .name("vidx-url-guard-out".into())
        .spawn(move || {
            let _ = std::io::copy(&mut client_read, &mut upstream_write);
            let _ = upstream_write.shutdown(Shutdown::Write);
        })?;
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = std::io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = outbound.join();
    Ok(())
}

fn respond(client: &mut TcpStream, status: &str) -> std::io::Result<()> {
    client.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
