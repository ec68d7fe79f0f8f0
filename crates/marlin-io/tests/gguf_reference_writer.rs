//! Reads a GGUF written by llama.cpp's own Python writer (gguf-py), made by
//! scripts/fixtures/make_gguf_seed.py (it is also the fuzzer's seed).

use std::path::Path;

use marlin_io::gguf::{GgufArray, GgufFile, GgufKey, GgufValue};
use marlin_quant::GgmlType;

fn open() -> GgufFile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gguf_parse/tiny.gguf");
    GgufFile::open(p).unwrap()
}

#[test]
fn metadata_of_every_type() {
    let g = open();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.metadata().len(), 16);
    assert_eq!(g.get_u32(GgufKey::ContextLength).unwrap(), 64);
    assert_eq!(g.get_u32(GgufKey::BlockCount).unwrap(), 1); // stored as i32
    assert_eq!(g.get_u32(GgufKey::EmbeddingLength).unwrap(), 32); // stored as u64
    assert_eq!(
        g.get_f32(GgufKey::AttentionLayerNormRmsEpsilon).unwrap(),
        1e-5
    );
    assert_eq!(g.get("f64.key"), Some(&GgufValue::F64(0.25)));
    assert_eq!(g.get("u8.key"), Some(&GgufValue::U8(200)));
    assert_eq!(g.get("i8.key"), Some(&GgufValue::I8(-100)));
    assert_eq!(g.get("u16.key"), Some(&GgufValue::U16(60000)));
    assert_eq!(g.get("i16.key"), Some(&GgufValue::I16(-30000)));
    assert_eq!(g.get_i64("i64.key").unwrap(), -(1 << 40));
    assert!(g.get_bool("bool.key").unwrap());
    assert_eq!(g.get_str(GgufKey::TokenizerModel).unwrap(), "gpt2");
    let tokens = g.get_array(GgufKey::TokenizerTokens).unwrap();
    assert_eq!(tokens.as_strings().unwrap(), ["a", "b", "ab", "é"]);
    let scores = g.get_array(GgufKey::TokenizerScores).unwrap();
    assert_eq!(scores.as_f32s().unwrap(), [0.0, -1.0, -2.0, -3.5]);
    assert_eq!(
        g.get_array("nested.key").unwrap(),
        &GgufArray::Array(vec![GgufArray::I32(vec![1, 2]), GgufArray::I32(vec![3])])
    );
}

#[test]
fn tensors_match_the_writer() {
    let g = open();
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32.weight", "f16.weight", "q8.weight"]);
    let f32w = g.tensor_info("f32.weight").unwrap();
    assert_eq!(f32w.dims, [32, 2]);
    assert_eq!(f32w.rows_cols(), (2, 32));
    let want: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
    assert_eq!(g.tensor_f32("f32.weight").unwrap(), want);
    assert_eq!(g.tensor_f32("f16.weight").unwrap(), [1.0, -2.0, 0.5]);
    let q8 = g.ggml_tensor("q8.weight").unwrap();
    assert_eq!((q8.ty, q8.rows, q8.cols), (GgmlType::Q8_0, 3, 32));
    let want: Vec<u8> = (0..102).collect();
    assert_eq!(q8.data, want);
    // gguf-py's offsets, as its GGUFReader reports them.
    let abs: Vec<usize> = ["f32.weight", "f16.weight", "q8.weight"]
        .iter()
        .map(|n| g.tensor_range(n).unwrap().start)
        .collect();
    assert_eq!(abs, [800, 1056, 1088]);
}
