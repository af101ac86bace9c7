//! One model per file.

pub mod sentence_bert;
