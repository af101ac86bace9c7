//! One model per file.

pub mod llama;
pub mod pe_core;
pub mod perception_encoder;
pub mod perception_lm;
pub mod sentence_bert;
