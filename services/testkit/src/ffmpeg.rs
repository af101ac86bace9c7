//! The FFmpeg CLI, which makes the tests' videos (never downloaded) and plays their live
//! cameras.

use std::process::Command;

/// Run `ffmpeg` quietly with `arguments` (overwriting outputs); its error output on failure.
pub fn ffmpeg(arguments: &[&str]) -> std::io::Result<()> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(arguments)
        .output()
        .map_err(|error| {
            std::io::Error::new(error.kind(), format!("running the ffmpeg CLI: {error}"))
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A live camera: the FFmpeg CLI encoding a test pattern in real time (H.264, a keyframe a
/// second, MPEG-TS) to the first client of `tcp://127.0.0.1:PORT`. It ends when that client
/// goes; start another on the same port for the next connection. Killed when dropped.
pub struct Camera(std::process::Child);

impl Camera {
    pub fn start(port: u16) -> std::io::Result<Self> {
        Ok(Self(
            Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
                .args(["-f", "lavfi", "-i", "testsrc2=s=160x120:r=25"])
                .args([
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-tune",
                    "zerolatency",
                ])
                .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
                .args(["-pix_fmt", "yuv420p", "-f", "mpegts"])
                .arg(format!("tcp://127.0.0.1:{port}?listen=1"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ))
    }

    /// Send a real signal (`-STOP`, `-CONT`, …) to the FFmpeg process.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {signal}: {status}")))
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
