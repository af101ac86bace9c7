//! One model per file.

pub mod llama;
pub mod perception_encoder;
pub mod perception_lm;
pub mod sentence_bert;
