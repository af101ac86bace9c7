//! Whether the dependencies a worker writes to are up, as the workers see them: one failing
//! write to the store makes the node NOT_SERVING (with the reason) until a write succeeds
//! again. The node's health service, metrics and logs read it.

use tokio::sync::watch;

/// A dependency outage going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// Which dependency and how, as a label ([`crate::PipelineError::outage_kind`]).
    pub kind: &'static str,
    /// The error, as the dependency reported it.
    pub reason: String,
}

/// Shared by every worker of a node.
#[derive(Debug)]
pub struct DependencyHealth {
    outage: watch::Sender<Option<Outage>>,
}

impl Default for DependencyHealth {
    fn default() -> Self {
        Self {
            outage: watch::Sender::new(None),
        }
    }
}

impl DependencyHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// A dependency failed with `reason` (a message without credentials: the errors of the
    /// ports never carry them). Logged once per outage and kind of failure.
    pub fn failing(&self, kind: &'static str, reason: &str) {
        self.outage.send_if_modified(|outage| {
            // The same failure again: nothing new to report. Another kind of failure (the
            // store came back refusing the key, say) replaces the reason.
            if outage.as_ref().is_some_and(|outage| outage.kind == kind) {
                return false;
            }
            tracing::error!(
                kind,
                reason,
                "dependency outage: not taking segments until it is back"
            );
            *outage = Some(Outage {
                kind,
                reason: reason.to_string(),
            });
            true
        });
    }

    /// A write went through: the outage, if any, is over.
    pub fn recovered(&self) {
        self.outage.send_if_modified(|outage| {
            let Some(Outage { kind, reason }) = outage.take() else {
                return false;
            };
            tracing::info!(
                kind,
                reason,
                "dependency outage over: taking segments again"
            );
            true
        });
    }

    /// The reason of the outage going on, if one is.
    pub fn outage(&self) -> Option<String> {
        self.outage
            .borrow()
            .as_ref()
            .map(|outage| outage.reason.clone())
    }

    /// Follows the outage state (`Some` while one goes on).
    pub fn subscribe(&self) -> watch::Receiver<Option<Outage>> {
        self.outage.subscribe()
    }
}
