//! One model per file.

pub mod perception_encoder;
pub mod sentence_bert;
