//! Regression tests for malformed inputs found by the fuzz targets
//! (fuzz/fuzz_targets, scripts/fuzz.sh) and by the audit that went with them.
//! Each input must give an error, quickly and without a large allocation; the
//! matching fuzz input, where there is one, is in fuzz/seeds/TARGET.

use std::path::{Path, PathBuf};

use marlin_io::hf::HfModelDir;
use marlin_io::interop::ForeignFormat;
use marlin_io::safetensors::SafetensorsFile;
use marlin_io::IoError;

/// A safetensors file from header entries (`"name": {...}` JSON fragments)
/// and a data section.
fn safetensors(entries: &[&str], data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    bytes
}

fn tensor(name: &str, dtype: &str, shape: &[u64], begin: usize, end: usize) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{begin},{end}]}}"#)
}

/// A Hugging Face directory (config.json + model.safetensors) in a fresh
/// temporary directory.
fn model_dir(test: &str, config: &str, weights: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "marlin-parser-hardening-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    dir
}

/// The error of importing linear `base` from `dir`.
fn import_error(dir: &Path, base: &str) -> String {
    let hf = HfModelDir::open(dir).unwrap();
    let format = ForeignFormat::of_dir(&hf)
        .unwrap()
        .expect("a foreign quantization format");
    let result = format.read_linear(&hf, base);
    std::fs::remove_dir_all(dir).unwrap();
    match result {
        Ok(t) => panic!("an empty matrix was imported: {t:?}"),
        Err(e) => e.to_string(),
    }
}

/// 2^40: a dimension that is absurd for a weight but whose product with a
/// zero dimension is an empty tensor, so no data has to back it.
const HUGE: u64 = 1 << 40;

#[test]
fn safetensors_zero_dim_does_not_hide_an_overflowing_shape() {
    // 0 elements, but 2^40 * 2^40 (the element count of the other dims, as
    // `n_elements` multiplies them) overflows.
    let bytes = safetensors(&[&tensor("t", "F32", &[HUGE, HUGE, 0], 0, 0)], &[]);
    match SafetensorsFile::from_bytes(bytes) {
        Err(e @ IoError::MalformedSafetensors(_)) => {
            assert!(e.to_string().contains("overflows"), "{e}")
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(f) => panic!("overflowing shape accepted: {:?}", f.tensors()),
    }
    // A zero dim beside ordinary ones is still a valid, empty tensor.
    let bytes = safetensors(&[&tensor("t", "F32", &[3, 0, 5], 0, 0)], &[]);
    let f = SafetensorsFile::from_bytes(bytes).unwrap();
    assert_eq!(f.tensor("t").unwrap().n_elements(), 0);
}

#[test]
fn gptq_empty_qweight_with_huge_k_is_rejected() {
    // qweight (K / 8, N) = (2^40, 0): K = 2^43 with no data; without g_idx the
    // importer used to build the trivial 2^43-entry g_idx before any check.
    let config = r#"{"quantization_config":{"quant_method":"gptq","bits":4,"group_size":-1}}"#;
    let weights = safetensors(
        &[
            &tensor("l.qweight", "I32", &[HUGE, 0], 0, 0),
            &tensor("l.qzeros", "I32", &[1, 0], 0, 0),
            &tensor("l.scales", "F16", &[1, 0], 0, 0),
        ],
        &[],
    );
    let dir = model_dir("gptq", config, &weights);
    let msg = import_error(&dir, "l");
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn awq_empty_qweight_with_huge_k_is_rejected() {
    // qweight (K, N / 8) = (2^40, 0) and N = 0 from the scales: the importer
    // used to loop over the 2^33 groups of that K.
    let config = r#"{"quantization_config":{"quant_method":"awq","bits":4,"group_size":128,"zero_point":true,"version":"gemm"}}"#;
    let weights = safetensors(
        &[
            &tensor("l.qweight", "I32", &[HUGE, 0], 0, 0),
            &tensor("l.qzeros", "I32", &[1, 0], 0, 0),
            &tensor("l.scales", "F16", &[1, 0], 0, 0),
        ],
        &[],
    );
    let dir = model_dir("awq", config, &weights);
    let msg = import_error(&dir, "l");
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn compressed_tensors_empty_rows_of_huge_n_are_rejected() {
    // weight_packed (N, 0) with N = 2^40 and weight_shape [2^40, 0]: one
    // per-tensor scale used to be expanded to 2^40 per-row scales.
    let config = r#"{"quantization_config":{"quant_method":"compressed-tensors","format":"pack-quantized","config_groups":{"group_0":{"weights":{"type":"int","num_bits":4}}}}}"#;
    let mut data = Vec::new();
    data.extend_from_slice(&(HUGE as i64).to_le_bytes());
    data.extend_from_slice(&0i64.to_le_bytes());
    data.extend_from_slice(&half_one());
    let weights = safetensors(
        &[
            &tensor("l.weight_packed", "I32", &[HUGE, 0], 0, 0),
            &tensor("l.weight_shape", "I64", &[2], 0, 16),
            &tensor("l.weight_scale", "F16", &[1], 16, 18),
        ],
        &data,
    );
    let dir = model_dir("ct", config, &weights);
    let msg = import_error(&dir, "l");
    assert!(msg.contains("empty"), "{msg}");
}

/// 1.0 as little-endian f16.
fn half_one() -> [u8; 2] {
    0x3c00u16.to_le_bytes()
}

/// Loads `json` as a lone tokenizer.json; the error message.
fn tokenizer_json_error(test: &str, json: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "marlin-parser-hardening-{test}-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, json).unwrap();
    let result = marlin_io::tokenizer::Tokenizer::from_tokenizer_json(&path);
    std::fs::remove_file(&path).unwrap();
    match result {
        Ok(t) => panic!("malformed tokenizer.json accepted: {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tokenizer_json_with_a_decoder_that_is_not_json_is_an_error() {
    // The tokenizers crate `expect`s the decoder to be well-formed JSON
    // (fuzz/seeds/tokenizer_json/crash-decoder-not-json).
    let msg = tokenizer_json_error("decoder", r#"{"version":"1.0","decoder":{"type" 1}}"#);
    assert!(msg.contains("expected `:`"), "{msg}");
}

#[test]
fn tokenizer_json_with_a_bad_precompiled_charsmap_is_an_error() {
    // Valid JSON, but the tokenizers crate `expect`s the Precompiled
    // normalizer's charsmap to parse.
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":{"type":"Precompiled","precompiled_charsmap":5},
        "pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#;
    let msg = tokenizer_json_error("precompiled", json);
    assert!(msg.contains("tokenizers library panicked"), "{msg}");
}

#[test]
fn hostile_chat_templates_end_in_an_error_within_bounds() {
    use marlin_io::tokenizer::{ChatMessage, ChatTemplate};
    use std::time::{Duration, Instant};
    let messages = [ChatMessage::user("hi")];
    // Each must stop on a bound minijinja enforces: instruction fuel (the
    // loop printing every step is the slowest per unit of fuel), recursion
    // depth, the size of a repeated string.
    for source in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "{{ 'ab' * 100000000 }}",
    ] {
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let start = Instant::now();
        let result = template.render(&messages, true);
        let elapsed = start.elapsed();
        assert!(result.is_err(), "{source}: rendered");
        // The fuel-bound loop took 1.5 s on the dev machine at load 19 (the
        // others milliseconds); the bound leaves room for a slow CI runner.
        assert!(elapsed < Duration::from_secs(20), "{source}: {elapsed:?}");
    }
}

#[test]
fn tokenizer_json_post_processor_naming_a_missing_special_token_is_an_error() {
    // TemplateProcessing's `single` names `<x>`, which its special_tokens map
    // lacks: the file loads, and the tokenizers crate then panics when it adds
    // special tokens (fuzz/seeds/tokenizer_json/crash-template-missing-special).
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"decoder":null,
        "post_processor":{"type":"TemplateProcessing",
            "single":[{"SpecialToken":{"id":"<x>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
            "pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],
            "special_tokens":{}},
        "model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#;
    let path = std::env::temp_dir().join(format!(
        "marlin-parser-hardening-template-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, json).unwrap();
    let loaded = marlin_io::tokenizer::Tokenizer::from_tokenizer_json(&path);
    std::fs::remove_file(&path).unwrap();
    // Rejected at load or at encode, never a panic.
    if let Ok(tokenizer) = loaded {
        assert_eq!(tokenizer.encode("b", false).unwrap(), [1]);
        let err = tokenizer.encode("b", true).unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
    }
}
