//! Test support for vidx's suites, used only as a dev-dependency (nothing here ships in the
//! `vidx` binary): a Kafka-protocol broker on loopback, and a frame sampler that must never
//! be called.

pub mod local_broker;
mod no_frames;

pub use local_broker::LocalBroker;
pub use no_frames::NoFrames;
