//! `marlin quantize --method mr-gptq` end to end on a tiny model: the
//! checkpoint's linears are stored in a Hadamard-rotated basis, the CPU
//! loader rotates their inputs, and the loaded model's logits equal those
//! of a dense model built from the dequantized and un-rotated weights.
//!
//! The tiny model is the random-initialised Qwen3 fixture of marlin-models
//! (hidden 64, 4 heads of 16, 2 KV heads, FFN 128, vocabulary 300), given a
//! word-level tokenizer here so that calibration text can be tokenized.

use marlin_io::checkpoint::{read_quant_tensor, read_rotation, SafetensorsWriter};
use marlin_io::hf::HfModelDir;
use marlin_models::{load_model, LoadOptions};
use marlin_quantize::pipeline::presets::Format;
use marlin_quantize::pipeline::{quantize_model, Method, QuantizeJob};
use marlin_quantize::Rotation;
use std::path::{Path, PathBuf};

const VOCAB: usize = 300;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../marlin-models/tests/fixtures/tiny-qwen3")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marlin-mrgptq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The fixture plus a word-level tokenizer (`w0` .. `w299`).
fn tiny_model_with_tokenizer(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir().join(f), dir.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..VOCAB).map(|i| (format!("w{i}"), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// Deterministic pseudo-random words over the vocabulary.
fn calibration_text(words: usize) -> String {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..words)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("w{}", state % VOCAB as u64)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A dense f32 checkpoint whose linears are the quantized checkpoint's
/// weights dequantized and taken back to the original basis with
/// `marlin_quantize::Rotation` (an implementation independent of the
/// loader's); `unrotate: false` leaves them in the rotated basis, which is
/// what a loader that ignored the rotation would compute with.
fn dense_reference(quantized: &Path, out: &Path, unrotate: bool) -> usize {
    let dir = HfModelDir::open(quantized).unwrap();
    let mut w = SafetensorsWriter::new();
    let mut rotated = 0;
    for name in dir.tensor_names() {
        if let Some(base) = name.strip_suffix(".qcodes") {
            let t = read_quant_tensor(&dir, base).unwrap().unwrap();
            let deq = t.dequantize().unwrap();
            let (cols, data) = match read_rotation(&dir, base).unwrap() {
                Some(r) if unrotate => {
                    rotated += 1;
                    let rot = Rotation::new(r.k, r.block_size).unwrap();
                    (r.k, rot.unrotate_rows(&deq, t.rows).unwrap())
                }
                Some(r) => {
                    rotated += 1;
                    assert_eq!(r.k, r.padded_k, "the comparison needs unpadded K");
                    (t.cols, deq)
                }
                None => (t.cols, deq),
            };
            w.add_f32(&format!("{base}.weight"), &[t.rows, cols], &data)
                .unwrap();
        } else if !name.contains(".scales") && !name.contains(".zeros") {
            let v = dir.tensor(name).unwrap();
            w.add_f32(name, v.shape, &v.to_f32().unwrap()).unwrap();
        }
    }
    std::fs::create_dir_all(out).unwrap();
    w.write(&out.join("model.safetensors")).unwrap();
    let mut config = dir.config().clone();
    config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    rotated
}

fn logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let model = load_model(dir, &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache(ids.len()).unwrap();
    model.forward_all(ids, &mut cache).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mr_gptq_checkpoint_matches_its_unrotated_dequantization() {
    let input = temp_dir("in");
    tiny_model_with_tokenizer(&input);
    let calib = input.join("calib.txt");
    std::fs::write(&calib, calibration_text(2000)).unwrap();
    let out = temp_dir("out");
    let mut job = QuantizeJob::new(input.clone(), out.clone(), Format::Mxfp4, Method::MrGptq);
    job.calib_files = vec![calib];
    job.calib_samples = 8;
    job.calib_seq_len = 64;
    let report = quantize_model(&job, &mut |_| {}).unwrap();
    assert_eq!(report.quantized_linears, 14);

    // Every quantized linear of the tiny model is rotated online: K = 64 or
    // 128 gives blocks of 64 / 128, larger than head_dim 16, so o's
    // rotation cannot fold into V.
    let qc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let rot = &qc["quantization_config"]["rotation"];
    assert_eq!(rot["type"], "block_hadamard");
    let down = &rot["tensors"]["model.layers.1.mlp.down_proj"];
    assert_eq!(
        (down["block_size"].as_u64(), down["k"].as_u64()),
        (Some(128), Some(128))
    );
    assert_eq!(down["applied"], "online");

    let reference = temp_dir("ref");
    assert_eq!(dense_reference(&out, &reference, true), 14);
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % VOCAB as u32).collect();
    let got = logits(&out, &ids);
    let want = logits(&reference, &ids);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let delta = max_abs_diff(&got, &want);

    // A loader that ignored the rotation: the same weights, left rotated.
    let ignored = temp_dir("ignored");
    dense_reference(&out, &ignored, false);
    let wrong = max_abs_diff(&logits(&ignored, &ids), &want);
    eprintln!(
        "mr-gptq tiny qwen3: max |Δlogit| {delta:e} vs the un-rotated dequantization \
         (logits up to {scale:.3}); ignoring the rotation: {wrong:.3}"
    );

    // The floor of this comparison without any rotation: the quantized
    // kernels quantize activations to int8 blocks (Q8_0-like), the dense
    // reference does not. An RTN MXFP4 checkpoint against its own
    // dequantization measures that floor on the same model and tokens.
    let plain = temp_dir("plain");
    let plain_job = QuantizeJob::new(input.clone(), plain.clone(), Format::Mxfp4, Method::Rtn);
    quantize_model(&plain_job, &mut |_| {}).unwrap();
    let plain_ref = temp_dir("plain-ref");
    assert_eq!(dense_reference(&plain, &plain_ref, true), 0);
    let floor = max_abs_diff(&logits(&plain, &ids), &logits(&plain_ref, &ids));
    eprintln!("no rotation (RTN MXFP4 vs its dequantization): max |Δlogit| {floor:e}");
    assert!(
        delta < 3.0 * floor + 1e-4 * scale,
        "max |Δlogit| {delta} (floor {floor})"
    );
    assert!(
        wrong > 20.0 * delta.max(floor),
        "ignoring the rotation: {wrong}"
    );

    for d in [input, out, reference, ignored, plain, plain_ref] {
        let _ = std::fs::remove_dir_all(d);
    }
}
