//! The `vidx` binary keeps FFmpeg behind the URL guard even with the common
//! `no_proxy=localhost,127.0.0.1` in its environment (FFmpeg's HTTP client would otherwise
//! connect to those hosts directly, unchecked): `vidx index` of a URL on 127.0.0.2 (opened by
//! `media.allowed_networks`) that redirects to a trap listener on 127.0.0.1 never reaches the
//! trap, and says the input was refused.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

const VIDX: &str = env!("CARGO_BIN_EXE_vidx");

#[test]
fn no_proxy_does_not_let_a_redirect_past_the_url_guard() -> Result<()> {
    let trap = TcpListener::bind("127.0.0.1:0")?;
    trap.set_nonblocking(true)?;
    let trap_port = trap.local_addr()?.port();
    // An origin on 127.0.0.2 whose every answer is a redirect to the trap.
    let origin = TcpListener::bind("127.0.0.2:0").context("bind 127.0.0.2")?;
    let origin_port = origin.local_addr()?.port();
    std::thread::spawn(move || {
        for mut stream in origin.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{trap_port}/clip.ts\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let data = tempfile::tempdir()?;
    let output = Command::new(VIDX)
        .arg("index")
        .arg(format!("http://127.0.0.2:{origin_port}/clip.ts"))
        .arg("--data-dir")
        .arg(data.path())
        .env("no_proxy", "localhost,127.0.0.1")
        .env_remove("NO_PROXY")
        .env("VIDX__MEDIA__ALLOWED_NETWORKS", "[\"127.0.0.2/32\"]")
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        trap.accept().is_err(),
        "the redirect reached 127.0.0.1 past the guard:\n{stderr}"
    );
    ensure!(
        !output.status.success() && stderr.contains("127.0.0.1"),
        "the refused redirect is not reported (exit {:?}):\n{stderr}",
        output.status.code()
    );
    Ok(())
}
