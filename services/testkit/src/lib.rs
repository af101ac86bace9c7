//! Test support for vidx's suites, used only as a dev-dependency (nothing here ships in the
//! `vidx` binary): Kafka-protocol brokers on loopback (`tansu`, and librdkafka's mock cluster
//! for the crash tests), the Qdrant server, the FFmpeg CLI (test videos, live cameras), and a
//! frame sampler that must never be called.

mod ffmpeg;
pub mod http;
pub mod local_broker;
pub mod mock_broker;
mod no_frames;
pub mod qdrant;

pub use ffmpeg::{Camera, ffmpeg};
pub use local_broker::{LocalBroker, with_local_broker};
pub use mock_broker::MockBroker;
pub use no_frames::NoFrames;
pub use qdrant::{QdrantServer, server_url};
