//! The FFmpeg CLI, which makes the tests' videos (never downloaded).

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
