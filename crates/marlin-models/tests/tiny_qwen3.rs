//! A tiny random-initialised Qwen3 saved by transformers as a Hugging Face
//! directory (f32 safetensors), against transformers' own logits
//! (scripts/fixtures/make_model_fixtures.py). Also exercises the cache:
//! batched prefill vs token-by-token decode, overflow and bad input.

mod common;

use common::{argmax, fixtures_dir};
use marlin_models::{load_model, ActivationHook, KvType, LoadOptions, LogitsWanted, ModelError};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    ids: Vec<u32>,
    /// (m, vocab)
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(fixtures_dir().join("tiny-qwen3.ref.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// With an f32 KV cache: the logits are compared with transformers' f32 to 2e-4, which the
/// default f16 cache's rounding exceeds (5e-3).
fn model() -> Box<dyn marlin_models::Model> {
    let opts = LoadOptions {
        kv_type: KvType::F32,
        ..LoadOptions::default()
    };
    load_model(&fixtures_dir().join("tiny-qwen3"), &opts).unwrap()
}

#[test]
fn logits_match_transformers() {
    let fx = fixture();
    let model = model();
    let cfg = model.config();
    assert_eq!(
        (
            cfg.arch.as_str(),
            cfg.n_layers,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim
        ),
        ("qwen3", 2, 4, 2, 16)
    );
    assert!(!cfg.tied_embeddings);
    let vocab = cfg.vocab_size;
    let mut cache = model.new_cache(64).unwrap();
    let got = model.forward_all(&fx.ids, &mut cache).unwrap();
    let mut max_delta = 0f32;
    for (row, want) in got.chunks_exact(vocab).zip(&fx.logits) {
        for (g, w) in row.iter().zip(want) {
            max_delta = max_delta.max((g - w).abs());
        }
    }
    eprintln!(
        "tiny-qwen3: max |Δlogit| {max_delta:e} over {} positions",
        fx.logits.len()
    );
    // f32 on both sides; the fixture stores 6 significant digits.
    assert!(max_delta < 2e-4, "max |Δlogit| {max_delta}");
}

#[test]
fn greedy_decode_matches_transformers() {
    let fx = fixture();
    let model = model();
    let mut cache = model.new_cache(fx.ids.len() + fx.greedy.len()).unwrap();
    let mut logits = model.forward(&fx.ids, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..fx.greedy.len() {
        let next = argmax(&logits) as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache).unwrap();
    }
    assert_eq!(out, fx.greedy);
    assert_eq!(cache.len(), fx.ids.len() + fx.greedy.len());
}

#[test]
fn prefill_in_chunks_equals_one_batch() {
    let fx = fixture();
    let model = model();
    let vocab = model.config().vocab_size;
    let mut whole = model.new_cache(32).unwrap();
    let all = model.forward_all(&fx.ids, &mut whole).unwrap();
    // Same tokens as 1 + 5 + 1 + rest, each chunk attending to the cache.
    let mut parts = model.new_cache(32).unwrap();
    let mut pieces = Vec::new();
    let mut start = 0;
    for len in [1, 5, 1, fx.ids.len() - 7] {
        pieces.extend(
            model
                .forward_all(&fx.ids[start..start + len], &mut parts)
                .unwrap(),
        );
        start += len;
    }
    assert_eq!(pieces.len(), all.len());
    for (a, b) in all.iter().zip(&pieces) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // Rewinding the cache and re-running the tail gives the same logits.
    parts.truncate(7);
    let tail = model.forward(&fx.ids[7..], &mut parts).unwrap();
    let want = &all[all.len() - vocab..];
    assert!(tail.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn rejects_overflow_and_bad_tokens() {
    let model = model();
    let mut cache = model.new_cache(4).unwrap();
    match model.forward(&[1, 2, 3, 4, 5], &mut cache) {
        Err(ModelError::ContextOverflow {
            used: 0,
            new: 5,
            capacity: 4,
        }) => {}
        other => panic!("expected ContextOverflow, got {:?}", other.map(|v| v.len())),
    }
    assert!(matches!(
        model.forward(&[300], &mut cache),
        Err(ModelError::TokenOutOfRange { .. })
    ));
    assert!(model.forward(&[], &mut cache).is_err());
    assert_eq!(cache.len(), 0, "failed calls leave the cache untouched");
    assert!(model.new_cache(0).is_err());
    let huge = LoadOptions {
        max_cache_bytes: 1 << 20,
        ..LoadOptions::default()
    };
    let m2 = load_model(&fixtures_dir().join("tiny-qwen3"), &huge).unwrap();
    assert!(
        m2.new_cache(1 << 20).is_err(),
        "cache above max_cache_bytes"
    );
}

struct Recorder(Vec<(String, Option<usize>, usize, usize)>);

impl ActivationHook for Recorder {
    fn activation(&mut self, name: &str, layer: Option<usize>, rows: usize, data: &[f32]) {
        self.0.push((name.to_string(), layer, rows, data.len()));
    }
}

#[test]
fn hook_sees_named_activations() {
    let model = model();
    let mut cache = model.new_cache(8).unwrap();
    let mut rec = Recorder(Vec::new());
    model
        .forward_with(&[1, 2, 3], &mut cache, LogitsWanted::Last, Some(&mut rec))
        .unwrap();
    let find = |n: &str, l: Option<usize>| rec.0.iter().find(|r| r.0 == n && r.1 == l).cloned();
    assert_eq!(
        find("inp_embd", None),
        Some(("inp_embd".into(), None, 3, 3 * 64))
    );
    assert_eq!(find("Qcur_normed", Some(1)).map(|r| r.3), Some(3 * 4 * 16));
    assert_eq!(find("l_out", Some(1)).map(|r| r.2), Some(3));
    assert_eq!(
        find("result_output", None).map(|r| (r.2, r.3)),
        Some((1, 300))
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = std::env::temp_dir().join(format!("marlin-models-arch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = fixtures_dir().join("tiny-qwen3");
    std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"qwen3\"", "\"falcon_mamba\""),
    )
    .unwrap();
    let err = load_model(&tmp, &LoadOptions::default())
        .err()
        .expect("must fail");
    let _ = std::fs::remove_dir_all(&tmp);
    let msg = err.to_string();
    assert!(
        msg.contains("falcon_mamba") && msg.contains("unsupported"),
        "{msg}"
    );
}
