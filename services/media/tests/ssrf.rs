//! docs/reliability.md 25: the connections FFmpeg makes for a URL input are checked as they
//! are made, not only the URL as submitted. An HTTP server on 127.0.0.2 (opened to the input
//! by `allowed_networks`) serves a real MPEG-TS file, a redirect to a trap listener on
//! 127.0.0.1 and HLS playlists whose entries point at the trap; the trap must never be
//! reached, while the allowed file and playlist index. Without the guard the same redirect
//! reaches a second trap (so the test can tell).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vidx_media::{InputSource, SegmentOptions, UrlPolicy, segment_source};

/// A loopback listener that must (or must not) be connected to.
struct Trap(TcpListener);

impl Trap {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(Self(listener))
    }

    fn port(&self) -> Result<u16> {
        Ok(self.0.local_addr()?.port())
    }

    fn reached(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// Path → the whole HTTP response.
type Routes = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// Serve `routes` on 127.0.0.2 until the process ends.
fn serve(routes: Routes) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.2:0").context("bind 127.0.0.2")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let routes = routes.clone();
            std::thread::spawn(move || answer(stream, routes.as_ref()));
        }
    });
    Ok(port)
}

fn answer(mut stream: TcpStream, routes: &(dyn Fn(&str) -> Vec<u8> + Send + Sync)) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let _ = stream.write_all(&routes(&path));
}

fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn playlist(entry: &str) -> Vec<u8> {
    response(
        "200 OK",
        "Content-Type: application/vnd.apple.mpegurl\r\n",
        format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXTINF:6.0,\n{entry}\n#EXT-X-ENDLIST\n"
        )
        .as_bytes(),
    )
}

/// Segment `url` with `guard`: the number of segments, or the error text.
fn segments(url: &str, guard: Option<&UrlPolicy>, spool: &Path) -> Result<u64, String> {
    let options = SegmentOptions {
        url_guard: guard.cloned(),
        ..SegmentOptions::new(2_000, spool.to_path_buf())
    };
    segment_source(&InputSource::Url(url.to_string()), &options, |_| true)
        .map(|summary| summary.segments)
        .map_err(|error| error.to_string())
}

#[test]
fn redirects_and_playlist_entries_to_private_addresses_reach_nothing() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let clip = directory.path().join("clip.ts");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=160x120:r=25:d=6",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-keyint_min",
            "50",
            "-f",
            "mpegts",
            clip.to_str().context("path")?,
        ])
        .status()
        .context("running the ffmpeg CLI")?;
    ensure!(status.success(), "ffmpeg: {status}");
    let video = std::fs::read(&clip)?;
    let (trap, control) = (Trap::start()?, Trap::start()?);
    let (trap_port, control_port) = (trap.port()?, control.port()?);
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let server_port = port.clone();
    let routes: Routes = Arc::new(move |path: &str| {
        let own = server_port.get().copied().unwrap_or(0);
        match path {
            "/ok.ts" => response("200 OK", "Content-Type: video/mp2t\r\n", &video),
            "/redirect.ts" => response(
                "302 Found",
                &format!("Location: http://127.0.0.1:{trap_port}/v.ts\r\n"),
                b"",
            ),
            "/control.ts" => response(
                "302 Found",
                &format!("Location: http://127.0.0.1:{control_port}/v.ts\r\n"),
                b"",
            ),
            "/trap.m3u8" => playlist(&format!("http://127.0.0.1:{trap_port}/seg.ts")),
            "/spelled.m3u8" => playlist(&format!("http://2130706433:{trap_port}/seg.ts")),
            "/good.m3u8" => playlist(&format!("http://127.0.0.2:{own}/ok.ts")),
            _ => response("404 Not Found", "", b""),
        }
    });
    let own = serve(routes)?;
    let _ = port.set(own);
    let base = format!("http://127.0.0.2:{own}");
    let policy = UrlPolicy {
        allowed_schemes: vec!["http".into(), "https".into()],
        allowed_networks: vec!["127.0.0.2/32".parse().map_err(anyhow::Error::msg)?],
        allow_private_hosts: false,
    };
    let spool = |name: &str| directory.path().join(name);

    // Allowed: the file and a playlist of it, through the guard.
    let file = segments(&format!("{base}/ok.ts"), Some(&policy), &spool("ok"));
    ensure!(file == Ok(3), "the allowed file: {file:?}");
    let listed = segments(&format!("{base}/good.m3u8"), Some(&policy), &spool("good"));
    ensure!(
        listed.as_ref().is_ok_and(|count| *count >= 1),
        "the allowed playlist: {listed:?}"
    );

    // Refused: a redirect to loopback, and playlist entries pointing there (one spelled as
    // a bare number).
    let redirected = segments(&format!("{base}/redirect.ts"), Some(&policy), &spool("r"));
    let error = redirected
        .clone()
        .err()
        .with_context(|| format!("the redirect was followed: {redirected:?}"))?;
    ensure!(
        error.contains("127.0.0.1") && error.contains("loopback"),
        "the refusal names the address and the rule: {error}"
    );
    for name in ["trap.m3u8", "spelled.m3u8"] {
        let result = segments(&format!("{base}/{name}"), Some(&policy), &spool(name));
        ensure!(
            !matches!(result, Ok(count) if count > 0),
            "{name}: segments from a refused entry: {result:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    ensure!(!trap.reached(), "the trap was connected to");

    // The control: without the guard, FFmpeg follows the same kind of redirect.
    let _ = segments(&format!("{base}/control.ts"), None, &spool("control"));
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        control.reached(),
        "without the guard the redirect was not followed: the test cannot tell"
    );
    Ok(())
}

/// Protocols FFmpeg connects by itself (RTSP, TCP) are checked again when the input is
/// opened, not only at submit, in every spelling; the control without the guard connects.
#[test]
fn rtsp_and_tcp_inputs_are_checked_when_opened() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let trap = Trap::start()?;
    let port = trap.port()?;
    let policy = UrlPolicy {
        allowed_schemes: vec!["rtsp".into(), "tcp".into()],
        ..UrlPolicy::default()
    };
    for url in [
        format!("rtsp://127.0.0.1:{port}/cam"),
        format!("rtsp://2130706433:{port}/cam"),
        format!("tcp://0x7f.1:{port}"),
    ] {
        let result = segments(&url, Some(&policy), &directory.path().join("s"));
        let error = result.err().with_context(|| format!("{url} was opened"))?;
        ensure!(error.contains("loopback"), "{url}: {error}");
    }
    std::thread::sleep(Duration::from_millis(200));
    ensure!(!trap.reached(), "the trap was connected to");
    // The trap never answers: give up on it quickly.
    let options = SegmentOptions {
        stall_timeout: Duration::from_secs(2),
        ..SegmentOptions::new(2_000, directory.path().join("control"))
    };
    let _ = segment_source(
        &InputSource::Url(format!("rtsp://127.0.0.1:{port}/cam")),
        &options,
        |_| true,
    );
    ensure!(
        trap.reached(),
        "without the guard RTSP did not connect: the test cannot tell"
    );
    Ok(())
}
