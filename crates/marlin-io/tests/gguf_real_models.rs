//! Parses the two demo models when they are present (`scripts/fetch_models.py`
//! puts them in `models/`, or `$MARLIN_MODELS`); skipped otherwise.

use std::path::PathBuf;

use marlin_io::gguf::{GgufFile, GgufKey};
use marlin_quant::GgmlType;

fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MARLIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

#[test]
fn smollm2_metadata_and_tensors() {
    let Some(path) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32(GgufKey::BlockCount).unwrap(), 30);
    assert_eq!(g.get_u32(GgufKey::EmbeddingLength).unwrap(), 576);
    assert_eq!(g.get_u32(GgufKey::AttentionHeadCount).unwrap(), 9);
    assert_eq!(g.get_u32(GgufKey::AttentionHeadCountKv).unwrap(), 3);
    assert_eq!(g.get_str(GgufKey::TokenizerModel).unwrap(), "gpt2");
    let tokens = g.get_array(GgufKey::TokenizerTokens).unwrap();
    assert_eq!(tokens.len(), 49152);
    assert!(g.get_f32(GgufKey::AttentionLayerNormRmsEpsilon).unwrap() > 0.0);
    // 30 layers x 9 tensors + token_embd + output_norm.
    assert_eq!(g.tensors().len(), 272);
    let q = g.ggml_tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.rows, q.cols), (576, 576));
    let norm = g.tensor_f32("output_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|x| x.is_finite()));
    // The last tensor ends within the file.
    let end = g
        .tensors()
        .iter()
        .map(|t| g.tensor_range(&t.name).unwrap().end)
        .max()
        .unwrap();
    assert!(end <= g.file_size());
}

#[test]
fn gemma3_metadata_and_tensors() {
    let Some(path) = model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.get_u32(GgufKey::BlockCount).unwrap(), 18);
    assert_eq!(g.get_u32(GgufKey::EmbeddingLength).unwrap(), 640);
    assert_eq!(g.get_str(GgufKey::TokenizerModel).unwrap(), "llama");
    assert!(g.get_u32(GgufKey::AttentionSlidingWindow).unwrap() > 0);
    let scores = g.get_array(GgufKey::TokenizerScores).unwrap();
    assert_eq!(
        scores.len(),
        g.get_array(GgufKey::TokenizerTokens).unwrap().len()
    );
    let mut types: Vec<GgmlType> = g.tensors().iter().filter_map(|t| t.ggml_type()).collect();
    types.sort_by_key(|t| t.id());
    types.dedup();
    for want in [GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
        assert!(types.contains(&want), "{want:?} missing from {types:?}");
    }
    for t in g.tensors() {
        g.tensor_bytes(&t.name).unwrap();
    }
}
