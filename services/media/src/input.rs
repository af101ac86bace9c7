//! Opening inputs with FFmpeg: protocol allow-lists, a stall watchdog, and the mapping of
//! FFmpeg errors onto [`MediaError`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::context::Input;
use vidx_core::MediaError;

use crate::guard::ConnectGuard;
use crate::source::{InputSource, UrlPolicy};

/// How long an open or a read may make no progress before it is aborted.
pub(crate) const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a single network read may block, for files and one-shot URLs.
const DEFAULT_RW_TIMEOUT: Duration = Duration::from_secs(15);

/// Network protocols a one-shot URL (a remote file, a VOD playlist) may use.
const URL_PROTOCOLS: &str = "http,https,tls,tcp,crypto";

/// Network protocols a live URL may use: MPEG-TS over TCP/UDP, RTSP (RTP over UDP or TCP),
/// RTMP and HLS. Never `file`, so a crafted playlist cannot read local files.
pub(crate) const LIVE_PROTOCOLS: &str =
    "http,https,tls,tcp,udp,rtp,rtsp,rtsps,rtmp,rtmps,rtmpt,srtp,crypto";

/// How an input is opened: the stall watchdog, the read timeout and the allowed protocols.
#[derive(Debug, Clone)]
pub(crate) struct OpenSettings {
    /// No progress for this long aborts the open or the read in progress (FFmpeg then
    /// returns `Error::Exit`).
    pub stall_timeout: Duration,
    /// FFmpeg's `rw_timeout`: one network read blocking this long fails.
    pub rw_timeout: Duration,
    /// Protocol allow-list for URLs (files always get `file` only).
    pub url_protocols: &'static str,
    /// Set from outside to abort a blocking open or read promptly.
    pub stop: Option<Arc<AtomicBool>>,
    /// The rules every HTTP(S) connection of a URL input is checked against as it is made
    /// (redirects and playlist entries included): a [`ConnectGuard`] per input. `None`: no
    /// guard (files, and URLs whose private-address check is off).
    pub url_guard: Option<UrlPolicy>,
}

impl Default for OpenSettings {
    fn default() -> Self {
        Self {
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            rw_timeout: DEFAULT_RW_TIMEOUT,
            url_protocols: URL_PROTOCOLS,
            stop: None,
            url_guard: None,
        }
    }
}

/// FFmpeg's `AVPROBE_SCORE_RETRY`: a format detected at or below this score is a guess.
const LOW_PROBE_SCORE: i32 = 25;

/// An opened input plus the watchdog that aborts it when it stalls.
pub(crate) struct OpenedInput {
    pub context: Input,
    watchdog: Watchdog,
    pub name: String,
    /// Kept running as long as the input reads (HLS opens segments while it reads).
    _guard: Option<ConnectGuard>,
}

impl OpenedInput {
    /// Tell the watchdog that the input made progress.
    pub fn touch(&self) {
        self.watchdog.touch();
    }

    /// A handle that tells the watchdog about progress, apart from the context.
    pub fn toucher(&self) -> impl Fn() + use<> {
        let watchdog = self.watchdog.clone();
        move || watchdog.touch()
    }
}

#[derive(Clone)]
struct Watchdog {
    started: Instant,
    last_progress_ms: Arc<AtomicU64>,
}

impl Watchdog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_progress_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.store(elapsed_ms, Ordering::Relaxed);
    }

    fn stalled(&self, timeout: Duration) -> bool {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        elapsed_ms.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed))
            > timeout.as_millis() as u64
    }
}

/// Open `source` for demuxing. Local files may only use the `file` protocol (so a crafted
/// playlist cannot reach the network); URLs only the network protocols.
pub(crate) fn open_input(source: &InputSource) -> Result<OpenedInput, MediaError> {
    open_input_with(source, &OpenSettings::default())
}

/// [`open_input`] with explicit timeouts, protocols and stop flag.
pub(crate) fn open_input_with(
    source: &InputSource,
    settings: &OpenSettings,
) -> Result<OpenedInput, MediaError> {
    crate::init();
    let name = source.display_name();
    let (location, protocols) = match source {
        InputSource::File(path) => {
            let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => MediaError::NotFound {
                    input: name.clone(),
                },
                _ => MediaError::Io {
                    input: name.clone(),
                    reason: error.to_string(),
                },
            })?;
            if metadata.len() == 0 {
                return Err(MediaError::Empty { input: name });
            }
            (path.display().to_string(), "file")
        }
        InputSource::Url(url) => {
            let is_http = url.split_once("://").is_some_and(|(scheme, _)| {
                matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
            });
            let location = match &settings.url_guard {
                // Checked again now, and connected to by the address checked.
                Some(policy) if !is_http => crate::source::pin_to_checked_address(url, policy)
                    .map_err(|reason| MediaError::Rejected {
                        input: name.clone(),
                        reason,
                    })?,
                _ => url.clone(),
            };
            (location, settings.url_protocols)
        }
    };
    let mut options = ffmpeg::Dictionary::new();
    let guard = match (source, &settings.url_guard) {
        (InputSource::Url(_), Some(policy)) => Some(ConnectGuard::start(policy.clone()).map_err(
            |error| MediaError::Io {
                input: name.clone(),
                reason: format!("cannot start the URL guard: {error}"),
            },
        )?),
        _ => None,
    };
    match &guard {
        Some(guard) => {
            // Every HTTP(S) connection goes through the guard; HTTPS as a CONNECT tunnel
            // (FFmpeg's `httpproxy` protocol).
            options.set("protocol_whitelist", &format!("{protocols},httpproxy"));
            options.set("http_proxy", &guard.proxy_url());
        }
        None => options.set("protocol_whitelist", protocols),
    }
    // Presentation timestamps for packets that lack them (AVI with B-frames, MPEG program
    // streams and VOB carry them on some packets only): FFmpeg fills them from the stream's
    // decoding order, as its own CLI does when it remuxes such files.
    options.set("fflags", "+genpts");
    // Microseconds: a network read that blocks this long fails instead of hanging.
    options.set(
        "rw_timeout",
        &settings.rw_timeout.as_micros().max(1).to_string(),
    );
    let watchdog = Watchdog::new();
    let interrupt_watchdog = watchdog.clone();
    let stall_timeout = settings.stall_timeout;
    let stop = settings.stop.clone();
    let context = ffmpeg::format::input_with_interrupt_and_dictionary(
        &location,
        move || {
            stop.as_ref()
                .is_some_and(|stop| stop.load(Ordering::Relaxed))
                || interrupt_watchdog.stalled(stall_timeout)
        },
        options,
    )
    .map_err(|error| {
        // A connection the guard refused explains the failure better than FFmpeg's 403.
        match guard
            .as_ref()
            .and_then(|guard| guard.refusals().into_iter().next())
        {
            Some(reason) => MediaError::Rejected {
                input: name.clone(),
                reason,
            },
            None => map_open_error(&name, error, stall_timeout),
        }
    })?;
    // FFmpeg guesses a raw format (h263, mp3, ...) for almost any bytes, at a low score; it
    // warns at AVPROBE_SCORE_RETRY (25) and below. Such a guess is not a video file.
    let probe_score = context.probe_score();
    if probe_score <= LOW_PROBE_SCORE {
        return Err(MediaError::InvalidData {
            input: name,
            reason: format!(
                "not a recognised media format (FFmpeg's best guess, {}, has confidence {probe_score}/100)",
                context.format().name()
            ),
        });
    }
    watchdog.touch();
    Ok(OpenedInput {
        context,
        watchdog,
        name,
        _guard: guard,
    })
}

pub(crate) fn map_open_error(
    input: &str,
    error: ffmpeg::Error,
    stall_timeout: Duration,
) -> MediaError {
    match error {
        ffmpeg::Error::InvalidData => MediaError::InvalidData {
            input: input.to_string(),
            reason: "FFmpeg cannot parse it as media (corrupt, truncated before its index, or not a video)".into(),
        },
        ffmpeg::Error::DecoderNotFound | ffmpeg::Error::DemuxerNotFound => {
            MediaError::Unsupported {
                input: input.to_string(),
                reason: error.to_string(),
            }
        }
        ffmpeg::Error::Exit => MediaError::Io {
            input: input.to_string(),
            reason: format!(
                "no progress for {} ms, aborted",
                stall_timeout.as_millis()
            ),
        },
        ffmpeg::Error::Other { errno } if errno == libc_enoent() => MediaError::NotFound {
            input: input.to_string(),
        },
        other => MediaError::Io {
            input: input.to_string(),
            reason: other.to_string(),
        },
    }
}

fn libc_enoent() -> i32 {
    2
}

/// `value` in `time_base` units → milliseconds, without overflow.
pub(crate) fn to_ms(value: i64, time_base: ffmpeg::Rational) -> i64 {
    let numerator = i128::from(time_base.numerator());
    let denominator = i128::from(time_base.denominator()).max(1);
    (i128::from(value) * numerator * 1000 / denominator) as i64
}
