//! librdkafka's mock Kafka cluster, hosted by the test process on a loopback port that other
//! processes (real `vidx run` nodes) connect to. Unlike the `tansu` broker
//! ([`crate::LocalBroker`]), its group coordinator evicts a member whose session timed out,
//! so a SIGKILLed worker's partitions move to the survivors: the crash tests run on it. Its
//! admin API cannot create topics; they are created here, before the nodes start (vidx's
//! `ensure_topics` then finds them and asks nothing of the admin API). It keeps at most 5 MB
//! (or 100 000 messages) per partition and drops the oldest beyond that, as retention would:
//! keep a test's messages under it (small segments, or blobs).

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

/// A running mock cluster; stopped when dropped.
#[derive(Debug)]
pub struct MockBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockBroker {
    /// Start a one-broker cluster with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> Result<Self, String> {
        let topics: Vec<(String, i32)> = topics
            .iter()
            .map(|(name, partitions)| (name.to_string(), *partitions))
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // The cluster handle is not Send: one thread owns it from start to stop.
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("mock cluster: {error}")));
                        return;
                    }
                };
                for (name, partitions) in &topics {
                    if let Err(error) = cluster.create_topic(name, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("mock topic {name}: {error}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until stopped or the owner is gone.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|error| format!("mock cluster thread: {error}"))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "the mock cluster thread ended before it was ready".to_string())??;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `host:port` of the cluster's broker, for `kafka.brokers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The configured Kafka defaults pointed at this cluster, with `topic` and its
    /// dead-letter and jobs topics `{topic}.dlq` and `{topic}.jobs` (create all three with
    /// [`start`](Self::start)), a group of the same name and a short session timeout.
    pub fn settings(&self, topic: &str, partitions: i32) -> vidx_bus::KafkaSettings {
        Self::settings_at(&self.bootstrap, topic, partitions)
    }

    /// [`settings`](Self::settings) for the cluster at `bootstrap` (`brokers` of those
    /// settings): what a child process that did not start the cluster connects with.
    pub fn settings_at(bootstrap: &str, topic: &str, partitions: i32) -> vidx_bus::KafkaSettings {
        vidx_bus::KafkaSettings {
            brokers: bootstrap.to_string(),
            topic: topic.to_string(),
            dead_letter_topic: format!("{topic}.dlq"),
            jobs_topic: format!("{topic}.jobs"),
            group_id: format!("{topic}-workers"),
            partitions,
            session_timeout: std::time::Duration::from_secs(6),
            delivery_timeout: std::time::Duration::from_secs(20),
            ..crate::local_broker::kafka_defaults()
        }
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
