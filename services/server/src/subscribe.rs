//! Standing queries (`SearchService.Subscribe`, `GET /v1/subscribe` as server-sent events):
//! every moment stored after the subscription starts whose caption matches the query is
//! pushed to the subscriber.
//!
//! Workers stamp each point with the wall-clock time of its upsert (`indexed_at_ms`); a
//! subscription searches the caption channel among the points stored since its cursor every
//! [`POLL`], keeps those whose caption cosine reaches the threshold, and delivers them in
//! `(indexed_at_ms, id)` order. It looks [`LOOKBACK_MS`] behind its cursor (points that land
//! late, clocks of workers that differ a little), never delivering a point twice on one
//! connection. A reconnect with the last cursor resumes strictly after it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use vidx_core::SearchFilter;
use vidx_core::fusion::{Channel, SearchHit};
use vidx_core::ports::IndexStore;
use vidx_pipeline::{SearchMode, SearchRequest};

use crate::Engine;

/// The default threshold: the least caption cosine (all-MiniLM-L6-v2) of a match. Calibrated
/// on the end-to-end clips: paraphrases of a subtitle score 0.55–0.80 against it, unrelated
/// subtitles below 0.25.
pub const DEFAULT_THRESHOLD: f32 = 0.45;
/// How often a subscription looks for new moments.
pub const POLL: Duration = Duration::from_millis(250);
/// How far behind its cursor a subscription looks again.
pub const LOOKBACK_MS: u64 = 5_000;
/// Matches looked at per poll.
const PER_POLL: usize = 200;

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub tenant: String,
    pub query: String,
    pub stream_id: Option<String>,
    pub threshold: f32,
    /// Deliver only what comes after this `(indexed_at_ms, id)`.
    pub after: (u64, String),
}

/// One delivered match.
#[derive(Debug, Clone)]
pub struct Matched {
    pub hit: SearchHit,
    pub indexed_at_ms: u64,
    /// `indexed_at_ms:id`: resume after this match.
    pub cursor: String,
}

/// Parse a cursor (`indexed_at_ms:id`); empty: from `now_ms`.
pub fn parse_cursor(cursor: &str, now_ms: u64) -> Result<(u64, String), String> {
    if cursor.trim().is_empty() {
        return Ok((now_ms, String::new()));
    }
    let (ms, id) = cursor
        .split_once(':')
        .ok_or_else(|| format!("`{cursor}` is not a cursor (indexed_at_ms:id)"))?;
    let ms = ms
        .parse::<u64>()
        .map_err(|_| format!("`{cursor}` is not a cursor (indexed_at_ms:id)"))?;
    Ok((ms, id.to_string()))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The standing queries each tenant holds open on this node, within a limit per tenant
/// (`server.max_subscriptions_per_tenant`): each polls the index, so one tenant's flood of
/// subscriptions cannot load the node for everyone.
/// They all end when the node shuts down (their streams close, so a graceful shutdown does
/// not wait on them forever).
#[derive(Debug)]
pub struct Slots {
    limit: usize,
    held: std::sync::Mutex<HashMap<String, usize>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A held subscription slot, given back when dropped (the subscription ended).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    tenant: String,
}

impl Slots {
    pub fn new(limit: usize, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Default::default(),
            shutdown,
        })
    }

    /// A slot for `tenant`, or why not.
    pub fn take(self: &Arc<Self>, tenant: &str) -> Result<Slot, String> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| "subscription table lock poisoned".to_string())?;
        let count = held.entry(tenant.to_string()).or_default();
        if *count >= self.limit {
            return Err(format!(
                "tenant `{tenant}` holds {count} standing queries, the most allowed \
                 (server.max_subscriptions_per_tenant): close one first"
            ));
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Subscriptions `tenant` holds now.
    pub fn held(&self, tenant: &str) -> usize {
        self.held
            .lock()
            .map_or(0, |held| held.get(tenant).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.slots.held.lock()
            && let Some(count) = held.get_mut(&self.tenant)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// Start following `subscription` in a slot of its tenant: the matches, until the receiver
/// is dropped. `Err` with the reason when the tenant holds all its slots.
pub fn start<S: IndexStore>(
    engine: Arc<OnceLock<Engine<S>>>,
    slots: &Arc<Slots>,
    subscription: Subscription,
) -> Result<mpsc::Receiver<Result<Matched, String>>, String> {
    let slot = slots.take(&subscription.tenant)?;
    let (sender, receiver) = mpsc::channel(64);
    let mut shutdown = slots.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follow(engine, subscription, sender) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
        drop(slot);
    });
    Ok(receiver)
}

/// Follow `subscription` until the receiver of `matches` is dropped. Errors of a poll are sent
/// once and the poll retried (a store outage delays matches, it does not end the stream).
pub async fn follow<S: IndexStore>(
    engine: Arc<OnceLock<Engine<S>>>,
    subscription: Subscription,
    matches: mpsc::Sender<Result<Matched, String>>,
) {
    let mut after = subscription.after.clone();
    // Delivered on this connection, by id, with their time (pruned past the lookback).
    let mut delivered: HashMap<String, u64> = HashMap::new();
    let mut failing = false;
    while !matches.is_closed() {
        let Some(engine) = engine.get() else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let request = SearchRequest {
            text: subscription.query.clone(),
            filter: SearchFilter {
                tenant: subscription.tenant.clone(),
                streams: subscription.stream_id.clone().into_iter().collect(),
                indexed_since_ms: Some(after.0.saturating_sub(LOOKBACK_MS)),
                ..SearchFilter::default()
            },
            top_k: PER_POLL,
            mode: SearchMode::Caption,
            example: None,
        };
        match vidx_pipeline::search(engine.store.as_ref(), &engine.search, request).await {
            Err(error) => {
                if !failing && matches.send(Err(error.to_string())).await.is_err() {
                    return;
                }
                failing = true;
            }
            Ok(results) => {
                failing = false;
                let mut fresh: Vec<Matched> = results
                    .hits
                    .iter()
                    .filter(|hit| {
                        hit.channels
                            .get(&Channel::Caption)
                            .is_some_and(|score| score.score >= subscription.threshold)
                    })
                    .filter_map(|hit| {
                        let id = hit.id.to_string();
                        let at = hit.payload.indexed_at_ms;
                        let key = (at, id.clone());
                        (key > subscription.after && !delivered.contains_key(&id)).then(|| {
                            Matched {
                                hit: SearchHit::from(hit),
                                indexed_at_ms: at,
                                cursor: format!("{at}:{id}"),
                            }
                        })
                    })
                    .collect();
                fresh.sort_by(|a, b| {
                    (a.indexed_at_ms, &a.hit.id).cmp(&(b.indexed_at_ms, &b.hit.id))
                });
                for matched in fresh {
                    delivered.insert(matched.hit.id.clone(), matched.indexed_at_ms);
                    let key = (matched.indexed_at_ms, matched.hit.id.clone());
                    if key > after {
                        after = key;
                    }
                    if matches.send(Ok(matched)).await.is_err() {
                        return;
                    }
                }
                let horizon = after.0.saturating_sub(2 * LOOKBACK_MS);
                delivered.retain(|_, at| *at >= horizon);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_holds_at_most_its_slots_and_gets_them_back() {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let slots = Slots::new(2, shutdown);
        let first = slots.take("acme");
        let second = slots.take("acme");
        assert!(first.is_ok() && second.is_ok());
        let refused = slots.take("acme").expect_err("a third");
        assert!(
            refused.contains("max_subscriptions_per_tenant"),
            "{refused}"
        );
        assert!(
            slots.take("globex").is_ok(),
            "another tenant is not affected"
        );
        drop(first);
        assert_eq!(slots.held("acme"), 1);
        assert!(slots.take("acme").is_ok());
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor("", 42), Ok((42, String::new())));
        assert_eq!(
            parse_cursor("1764583200000:0b7c", 0),
            Ok((1_764_583_200_000, "0b7c".into()))
        );
        assert!(parse_cursor("yesterday", 0).is_err());
    }
}
