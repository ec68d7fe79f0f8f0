//! A Hugging Face model directory (config.json, then model.safetensors,
//! separated by `common::SECTION_SEPARATOR`) taken through every importer
//! that reads it: the foreign quantization formats named by
//! `quantization_config` (GPTQ v1/v2, AWQ, compressed-tensors), marlin's own
//! checkpoint tensors, schemes and rotations, and finally the model loader
//! (hyper-parameters from config.json, weights by shape) with one forward
//! step. Every tensor an importer accepts must dequantize.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use marlin_io::checkpoint::{read_quant_tensor, read_rotation, QuantizationConfig};
use marlin_io::hf::HfModelDir;
use marlin_io::interop::ForeignFormat;
use marlin_models::{load_model, LoadOptions};

/// Largest matrix dequantized per tensor: what the input can describe
/// (max_len) is far below it, so it only guards against a bug that accepts
/// a shape the data does not back.
const MAX_DEQUANT_ELEMENTS: usize = 1 << 22;

fuzz_target!(|data: &[u8]| {
    let parts = common::sections(data, 2);
    let dir = common::scratch_dir("checkpoint_import");
    common::put_file(&dir, "config.json", Some(parts[0]));
    common::put_file(&dir, "model.safetensors", Some(parts[1]));
    let Ok(hf) = HfModelDir::open(&dir) else {
        return;
    };
    let names: Vec<String> = hf.tensor_names().into_iter().map(str::to_string).collect();
    if let Ok(Some(format)) = ForeignFormat::of_dir(&hf) {
        for name in &names {
            let Some(base) = name
                .strip_suffix(".qweight")
                .or_else(|| name.strip_suffix(".weight_packed"))
            else {
                continue;
            };
            if let Ok(Some(t)) = format.read_linear(&hf, base) {
                check_dequantizes(&t);
            }
        }
    }
    let _ = QuantizationConfig::of(&hf);
    for name in &names {
        let Some(base) = name.strip_suffix(".qcodes") else {
            continue;
        };
        if let Ok(Some(t)) = read_quant_tensor(&hf, base) {
            check_dequantizes(&t);
        }
        let _ = read_rotation(&hf, base);
    }
    drop(hf);
    let opts = LoadOptions {
        max_cache_bytes: 64 << 20,
        ..LoadOptions::default()
    };
    let Ok(model) = load_model(&dir, &opts) else {
        return;
    };
    let vocab = model.config().vocab_size;
    if vocab == 0 {
        return;
    }
    let Ok(mut cache) = model.new_cache(4) else {
        return;
    };
    let tokens = [0, (vocab - 1) as u32];
    if let Ok(logits) = model.forward(&tokens, &mut cache) {
        assert_eq!(logits.len(), vocab);
    }
});

fn check_dequantizes(t: &marlin_quant::QuantTensor) {
    if t.rows.saturating_mul(t.cols) <= MAX_DEQUANT_ELEMENTS {
        t.dequantize()
            .expect("an imported tensor passed validation but does not dequantize");
    }
}
