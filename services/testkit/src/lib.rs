//! Test support for vidx's suites, used only as a dev-dependency (nothing here ships in the
//! `vidx` binary): a Kafka-protocol broker on loopback.

pub mod local_broker;

pub use local_broker::LocalBroker;
