//! Parity of the candle all-MiniLM-L6-v2 with sentence-transformers on the real weights.
//! Reference vectors: `scripts/make_minilm_reference.py` → `tests/fixtures/minilm_reference.json`.

use candle_core::Device;
use vidx_core::ports::TextEmbedder;
use vidx_model::SentenceEmbedder;
use vidx_model::hub::HubOptions;
use vidx_model::models::sentence_bert::MINILM_MODEL_ID;

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(left) * norm(right))
}

#[test]
fn minilm_matches_sentence_transformers() -> anyhow::Result<()> {
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json"))?;
    assert!(reference.sentences.len() >= 20);
    let options = HubOptions {
        offline: true,
        ..HubOptions::default()
    };
    let embedder = SentenceEmbedder::from_hub(MINILM_MODEL_ID, options, Device::Cpu)?;
    assert_eq!(embedder.dimension(), 384);

    // Batched (with padding) and one at a time must both match.
    let batched = embedder.embed(&reference.sentences)?;
    let mut worst = f32::MAX;
    for (index, (ours, theirs)) in batched.iter().zip(&reference.vectors).enumerate() {
        let similarity = cosine(ours, theirs);
        worst = worst.min(similarity);
        assert!(
            similarity >= 0.9999,
            "sentence {index} {:?}: cosine {similarity}",
            reference.sentences[index]
        );
        let single = embedder.embed(std::slice::from_ref(&reference.sentences[index]))?;
        assert!(
            cosine(&single[0], theirs) >= 0.9999,
            "sentence {index} alone"
        );
    }
    println!("worst cosine over {} sentences: {worst:.7}", batched.len());
    Ok(())
}
