//! Alerts (`[[server.alerts]]`): standing queries a query node follows itself, each match
//! POSTed as JSON to a webhook. A post that fails (no connection, no answer within 10 s, 408,
//! 429, 5xx) is retried with backoff (0.5 s doubling to 60 s) until it lands, and matches are
//! posted in order, one at a time: a webhook that is down delays the alert, it loses nothing.
//! A post refused with another 4xx is logged and skipped. After each match the alert's
//! cursor is written to `<dir>/<name>.cursor`, so a restarted node resumes after the last
//! delivered match. The webhook's host is resolved and checked like a source URL's (the
//! private-address guard, `media.allowed_networks`), and only the checked addresses are
//! connected to; redirects are not followed. The bearer token never reaches a log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vidx_core::ports::IndexStore;
use vidx_media::UrlPolicy;

use crate::Engine;
use crate::subscribe::{Matched, Subscription};

/// One alert, as configured.
#[derive(Clone)]
pub struct Alert {
    pub name: String,
    pub tenant: String,
    pub query: String,
    pub stream_id: Option<String>,
    pub threshold: f32,
    pub url: String,
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for Alert {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Alert")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("query", &self.query)
            .field("stream_id", &self.stream_id)
            .field("threshold", &self.threshold)
            .field("url", &vidx_media::redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// The first and the longest wait between two attempts of one post.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves a webhook's host through the URL rules: only addresses they allow.
struct CheckedResolver(UrlPolicy);

impl ureq::Resolver for CheckedResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        let checked = self
            .0
            .checked_addresses(&format!("http://{netloc}/"))
            .map_err(|reason| std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))?;
        if !checked.is_empty() {
            return Ok(checked);
        }
        // The guard is off (`allow_private_hosts`): resolve as usual.
        use std::net::ToSocketAddrs;
        Ok(netloc.to_socket_addrs()?.collect())
    }
}

/// Where an alert keeps its cursor.
fn cursor_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.cursor"))
}

/// Follow every alert until `shutdown`.
pub fn spawn<S: IndexStore + Send + Sync + 'static>(
    alerts: Vec<Alert>,
    engine: Arc<OnceLock<Engine<S>>>,
    policy: &UrlPolicy,
    dir: PathBuf,
    shutdown: watch::Receiver<bool>,
) {
    if alerts.is_empty() {
        return;
    }
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %error, "alert cursors cannot be kept: alerts restart from now");
    }
    let policy = UrlPolicy {
        allowed_schemes: vec!["http".into(), "https".into()],
        ..policy.clone()
    };
    let agent = ureq::AgentBuilder::new()
        .resolver(CheckedResolver(policy))
        .redirects(0)
        .timeout(POST_TIMEOUT)
        .build();
    for alert in alerts {
        let cursor_path = cursor_file(&dir, &alert.name);
        let saved = std::fs::read_to_string(&cursor_path).unwrap_or_default();
        let now = crate::subscribe::now_ms();
        let after = crate::subscribe::parse_cursor(saved.trim(), now).unwrap_or_else(|reason| {
            tracing::warn!(
                alert = alert.name,
                reason,
                "alert cursor unreadable: from now"
            );
            (now, String::new())
        });
        let subscription = Subscription {
            tenant: alert.tenant.clone(),
            query: alert.query.clone(),
            stream_id: alert.stream_id.clone(),
            threshold: if alert.threshold == 0.0 {
                crate::subscribe::DEFAULT_THRESHOLD
            } else {
                alert.threshold
            },
            after,
        };
        tracing::info!(alert = alert.name, tenant = alert.tenant, url = %vidx_media::redact_url(&alert.url), "alert followed");
        let (sender, receiver) = mpsc::channel(16);
        let mut stop = shutdown.clone();
        let follow = crate::subscribe::follow(engine.clone(), subscription, sender);
        tokio::spawn(async move {
            tokio::select! {
                () = follow => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
        tokio::spawn(deliver(
            alert,
            receiver,
            agent.clone(),
            cursor_path,
            shutdown.clone(),
        ));
    }
}

/// What one attempt of a post came to.
enum Outcome {
    Delivered,
    /// Worth another attempt (the reason).
    Retry(String),
    /// The webhook refused this post for good (the reason).
    Refused(String),
}

fn post(agent: &ureq::Agent, alert: &Alert, body: &serde_json::Value) -> Outcome {
    let mut request = agent
        .post(&alert.url)
        .set("content-type", "application/json")
        .set("user-agent", concat!("vidx/", env!("CARGO_PKG_VERSION")));
    if let Some(token) = &alert.bearer_token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    match request.send_string(&body.to_string()) {
        Ok(_) => Outcome::Delivered,
        Err(ureq::Error::Status(code, _)) if code == 408 || code == 429 || code >= 500 => {
            Outcome::Retry(format!("HTTP {code}"))
        }
        Err(ureq::Error::Status(code, _)) => Outcome::Refused(format!("HTTP {code}")),
        // The transport error's text names the host, never the token.
        Err(ureq::Error::Transport(error)) => Outcome::Retry(error.kind().to_string()),
    }
}

async fn deliver(
    alert: Alert,
    mut matches: mpsc::Receiver<Result<Matched, String>>,
    agent: ureq::Agent,
    cursor_path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let alert = Arc::new(alert);
    while let Some(matched) = matches.recv().await {
        let matched = match matched {
            Ok(matched) => matched,
            Err(reason) => {
                tracing::warn!(alert = alert.name, reason, "alert search failing; retried");
                continue;
            }
        };
        let body = Arc::new(serde_json::json!({
            "alert": alert.name,
            "query": alert.query,
            "hit": matched.hit,
            "indexed_at_ms": matched.indexed_at_ms,
            "cursor": matched.cursor,
        }));
        let mut wait = FIRST_RETRY;
        let mut attempt = 1u32;
        loop {
            let (agent, posted, body) = (agent.clone(), alert.clone(), body.clone());
            let outcome = tokio::task::spawn_blocking(move || post(&agent, &posted, &body))
                .await
                .unwrap_or_else(|error| Outcome::Retry(error.to_string()));
            match outcome {
                Outcome::Delivered => break,
                Outcome::Refused(reason) => {
                    tracing::warn!(
                        alert = alert.name,
                        cursor = matched.cursor,
                        reason,
                        "the webhook refused a match: skipped"
                    );
                    break;
                }
                Outcome::Retry(reason) => {
                    tracing::warn!(
                        alert = alert.name,
                        attempt,
                        reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "webhook post failed"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    wait = (wait * 2).min(MAX_RETRY);
                    attempt += 1;
                }
            }
        }
        if let Err(error) = std::fs::write(&cursor_path, &matched.cursor) {
            tracing::warn!(alert = alert.name, error = %error, "alert cursor not kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::Resolver;

    #[test]
    fn webhook_hosts_are_checked_after_resolution() {
        let guarded = CheckedResolver(UrlPolicy::default());
        for netloc in [
            "127.0.0.1:80",
            "127.1:80",
            "2130706433:80",
            "localhost.:80",
            "[::1]:80",
        ] {
            let refused = guarded.resolve(netloc).expect_err(netloc);
            assert_eq!(
                refused.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{netloc}"
            );
        }
        let lan = CheckedResolver(UrlPolicy {
            allowed_networks: vec!["127.0.0.0/8".parse().expect("a network")],
            ..UrlPolicy::default()
        });
        let allowed = lan.resolve("127.1:8080").expect("an allowed network");
        assert_eq!(allowed, vec!["127.0.0.1:8080".parse().expect("an address")]);
    }
}
