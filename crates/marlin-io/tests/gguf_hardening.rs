//! Malformed-GGUF regression tests. Each crafted file targets one class of
//! bug known from GGUF parser advisories (llama.cpp, gguf-py and others):
//! size-sum overflow, counts used as allocation sizes, offsets past the end,
//! unchecked element types, huge alignment. Every one must give an error,
//! never a panic or an unbounded allocation.

use marlin_io::gguf::{limits, GgufArray, GgufBuilder, GgufFile, GgufKey, GgufValue};
use marlin_io::IoError;

// ---- raw byte crafting -------------------------------------------------

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_kv_u32(b: &mut Vec<u8>, key: &str, v: u32) {
    put_str(b, key);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_tensor_info(b: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
    put_str(b, name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
}

/// Pads to 32 and appends `n` data bytes.
fn with_data(mut b: Vec<u8>, n: usize) -> Vec<u8> {
    b.resize(b.len().div_ceil(32) * 32 + n, 0x11);
    b
}

fn malformed(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(g) => panic!("malformed file accepted: {g:?}"),
        Err(e @ IoError::MalformedGguf { .. }) => e.to_string(),
        Err(e) => panic!("wrong error kind: {e}"),
    }
}

fn assert_reason(bytes: Vec<u8>, needle: &str) {
    let msg = malformed(bytes);
    assert!(
        msg.contains(needle),
        "error `{msg}` does not mention `{needle}`"
    );
}

/// A small valid file with every value type, nested arrays and three
/// tensors of different types.
fn valid_file() -> Vec<u8> {
    let f32_data: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    GgufBuilder::new()
        .kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.context_length", GgufValue::I32(2048))
        .kv("llama.embedding_length", GgufValue::U64(8))
        .kv("llama.block_count", GgufValue::U16(1))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        )
        .kv("llama.rope.freq_base", GgufValue::F64(10000.0))
        .kv("u8", GgufValue::U8(7))
        .kv("i8", GgufValue::I8(-7))
        .kv("i16", GgufValue::I16(-300))
        .kv("u32", GgufValue::U32(70000))
        .kv("i64", GgufValue::I64(-5))
        .kv("flag", GgufValue::Bool(true))
        .kv(
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(vec!["<s>".into(), "é".into(), "".into()])),
        )
        .kv(
            "scores",
            GgufValue::Array(GgufArray::F32(vec![0.5, -1.0, 2.0])),
        )
        .kv(
            "bools",
            GgufValue::Array(GgufArray::Bool(vec![true, false])),
        )
        .kv(
            "nested",
            GgufValue::Array(GgufArray::Array(vec![
                GgufArray::I32(vec![1, 2]),
                GgufArray::U64(vec![]),
            ])),
        )
        .tensor("norm.weight", &[8], 0, f32_data)
        .tensor("q8.weight", &[32, 2], 8, vec![0x22; 2 * 34])
        .tensor("half", &[3], 1, vec![0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0])
        .to_bytes()
}

// ---- valid files ---------------------------------------------------------

#[test]
fn valid_file_round_trips_every_value_type() {
    let g = GgufFile::from_bytes(valid_file()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.metadata().len(), 16);
    assert_eq!(g.metadata()[1].0, "llama.context_length");
    // Integer getters accept the widths writers use.
    assert_eq!(g.get_u32(GgufKey::ContextLength).unwrap(), 2048);
    assert_eq!(g.get_u32(GgufKey::EmbeddingLength).unwrap(), 8);
    assert_eq!(g.get_u64(GgufKey::BlockCount).unwrap(), 1);
    assert_eq!(g.get_u32("u8").unwrap(), 7);
    assert_eq!(g.get_i64("i8").unwrap(), -7);
    assert_eq!(g.get_i64("i16").unwrap(), -300);
    assert_eq!(g.get_u32("u32").unwrap(), 70000);
    assert_eq!(
        g.get_f32(GgufKey::AttentionLayerNormRmsEpsilon).unwrap(),
        1e-5
    );
    assert_eq!(g.get_f32(GgufKey::RopeFreqBase).unwrap(), 10000.0);
    assert!(g.get_bool("flag").unwrap());
    let tokens = g.get_array(GgufKey::TokenizerTokens).unwrap();
    assert_eq!(tokens.as_strings().unwrap(), ["<s>", "é", ""]);
    assert_eq!(
        g.get_array("scores").unwrap().to_f32_vec().unwrap(),
        [0.5, -1.0, 2.0]
    );
    assert_eq!(
        g.get("nested").unwrap().to_string(),
        "[array; 2] [[i32; 2] [1, 2], [u64; 0] []]"
    );
    // Wrong sign, wrong type, missing key.
    assert!(matches!(g.get_u32("i64"), Err(IoError::KeyType { .. })));
    assert!(matches!(g.get_str("u32"), Err(IoError::KeyType { .. })));
    assert!(
        matches!(g.get_u32(GgufKey::AttentionHeadCount), Err(IoError::MissingKey(k)) if k == "llama.attention.head_count")
    );
    assert_eq!(g.get_u32_opt(GgufKey::AttentionHeadCount).unwrap(), None);

    assert_eq!(g.tensors().len(), 3);
    assert_eq!(
        g.tensor_f32("norm.weight").unwrap(),
        [0., 1., 2., 3., 4., 5., 6., 7.]
    );
    assert_eq!(g.tensor_f32("half").unwrap(), [1.0, 2.0, -2.0]);
    let q = g.ggml_tensor("q8.weight").unwrap();
    assert_eq!((q.rows, q.cols, q.data.len()), (2, 32, 68));
    assert!(q.data.iter().all(|&b| b == 0x22));
    for t in g.tensors() {
        let r = g.tensor_range(&t.name).unwrap();
        assert_eq!(r.start % 32, 0, "{} misaligned", t.name);
    }
    assert!(matches!(
        g.tensor_bytes("nope"),
        Err(IoError::MissingTensor(_))
    ));
}

#[test]
fn version_2_is_accepted() {
    let mut b = valid_file();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::from_bytes(b).unwrap().version(), 2);
}

#[test]
fn every_truncated_prefix_is_an_error() {
    let full = valid_file();
    for len in 0..full.len() {
        match GgufFile::from_bytes(full[..len].to_vec()) {
            Ok(_) => panic!("prefix of {len}/{} bytes accepted", full.len()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Deterministic single-byte corruption at every position, with values
    // that hit length fields hard (0xff) and type fields (0x0d, 0x80).
    let full = valid_file();
    for pos in 0..full.len() {
        for v in [0x00, 0x0d, 0x80, 0xff] {
            let mut b = full.clone();
            b[pos] = v;
            if let Ok(g) = GgufFile::from_bytes(b) {
                for t in g.tensors() {
                    let _ = g.tensor_bytes(&t.name);
                    let _ = g.ggml_tensor(&t.name);
                }
            }
        }
    }
}

#[test]
fn open_names_the_file_and_missing_file_is_an_io_error() {
    let dir = std::env::temp_dir().join(format!("marlin_gguf_open_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00").unwrap();
    let msg = GgufFile::open(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("bad.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(GgufFile::open(&empty).is_err());
    let good = dir.join("good.gguf");
    std::fs::write(&good, valid_file()).unwrap();
    assert_eq!(GgufFile::open(&good).unwrap().tensors().len(), 3);
    assert!(matches!(
        GgufFile::open(dir.join("missing.gguf")),
        Err(IoError::Io { .. })
    ));
    let msg = GgufFile::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("not a regular file"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- header ---------------------------------------------------------------

#[test]
fn bad_magic_and_versions() {
    let mut b = valid_file();
    b[0] = b'X';
    assert_reason(b, "not a GGUF");
    assert_reason(header(1, 0, 0), "version 1");
    assert_reason(header(3u32.swap_bytes(), 0, 0), "big-endian");
    assert_reason(header(4, 0, 0), "version 4");
}

// ---- advisory classes: counts used as allocation sizes ---------------------

#[test]
fn advisory_kv_count_as_allocation_size() {
    assert_reason(header(3, 0, u64::MAX), "KV count");
    // Under the limit but more than the bytes could hold.
    assert_reason(header(3, 0, 1000), "truncated");
}

#[test]
fn advisory_tensor_count_as_allocation_size() {
    assert_reason(header(3, u64::MAX, 0), "tensor count");
    assert_reason(header(3, limits::MAX_TENSOR_COUNT, 0), "tensor count");
}

#[test]
fn advisory_string_length_as_allocation_size() {
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // key length
    b.extend_from_slice(&[0; 16]);
    assert_reason(b, "exceeds limit");
    let mut b = header(3, 0, 1);
    put_str(&mut b, "k");
    b.extend_from_slice(&8u32.to_le_bytes()); // string value
    b.extend_from_slice(&(limits::MAX_STRING_LEN - 1).to_le_bytes());
    assert_reason(b, "truncated");
}

#[test]
fn advisory_array_length_as_allocation_size() {
    for elem_type in [0u32, 8, 9, 10] {
        let mut b = header(3, 0, 1);
        put_str(&mut b, "arr");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem_type.to_le_bytes());
        b.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert_reason(b, "array length");
        let mut b = header(3, 0, 1);
        put_str(&mut b, "arr");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem_type.to_le_bytes());
        b.extend_from_slice(&1_000_000u64.to_le_bytes());
        assert_reason(b, "truncated");
    }
}

// ---- advisory class: unchecked (element) types -----------------------------

#[test]
fn advisory_unchecked_array_element_type() {
    for elem_type in [13u32, 99, u32::MAX] {
        let mut b = header(3, 0, 1);
        put_str(&mut b, "arr");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem_type.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert_reason(b, "unknown array element type");
    }
}

#[test]
fn advisory_unchecked_value_type() {
    let mut b = header(3, 0, 1);
    put_str(&mut b, "k");
    b.extend_from_slice(&13u32.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    assert_reason(b, "unknown value type 13");
}

#[test]
fn nested_arrays_deeper_than_limit() {
    let mut b = header(3, 0, 1);
    put_str(&mut b, "deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..limits::MAX_ARRAY_DEPTH + 1 {
        b.extend_from_slice(&9u32.to_le_bytes()); // element type: array
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    assert_reason(b, "nested deeper");
}

#[test]
fn bool_byte_must_be_0_or_1() {
    let mut b = header(3, 0, 1);
    put_str(&mut b, "flag");
    b.extend_from_slice(&7u32.to_le_bytes());
    b.push(2);
    assert_reason(b, "bool");
}

#[test]
fn invalid_utf8_key_and_empty_key() {
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&[0xc3, 0x28]);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    assert_reason(b, "UTF-8");
    let mut b = header(3, 0, 1);
    put_kv_u32(&mut b, "", 1);
    assert_reason(b, "empty metadata key");
}

// ---- duplicates --------------------------------------------------------------

#[test]
fn duplicate_keys_rejected() {
    let mut b = header(3, 0, 2);
    put_kv_u32(&mut b, "llama.block_count", 1);
    put_kv_u32(&mut b, "llama.block_count", 2);
    assert_reason(b, "duplicate metadata key `llama.block_count`");
}

#[test]
fn duplicate_tensor_names_rejected() {
    let mut b = header(3, 2, 0);
    put_tensor_info(&mut b, "w", &[4], 0, 0);
    put_tensor_info(&mut b, "w", &[4], 0, 32);
    assert_reason(with_data(b, 64), "duplicate tensor `w`");
}

// ---- advisory class: integer overflow in tensor size sums ------------------

#[test]
fn advisory_tensor_dims_element_count_overflow() {
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[1 << 32, 1 << 32, 1 << 32], 0, 0);
    assert_reason(with_data(b, 64), "overflows");
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[u64::MAX, 2], 0, 0);
    assert_reason(with_data(b, 64), "overflows");
    // A zero dim makes the element count 0, but the row count of the 2D
    // view (product of dims[1..]) must still fit: found by the fuzzer.
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[0, 1 << 40, 1 << 40], 0, 0);
    assert_reason(with_data(b, 64), "overflows");
}

#[test]
fn advisory_tensor_byte_size_overflow() {
    // Element count fits i64 but count * 4 bytes does not fit u64... nor
    // the file: either check must fire before any slice is formed.
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[1 << 31, 1 << 31], 0, 0);
    let msg = malformed(with_data(b, 64));
    assert!(
        msg.contains("overflows") || msg.contains("past the end"),
        "{msg}"
    );
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[1 << 62, 1], 0, 0);
    assert_reason(with_data(b, 64), "overflows");
}

#[test]
fn advisory_tensor_offset_plus_size_overflow() {
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[8], 0, u64::MAX - 31);
    assert_reason(with_data(b, 64), "w");
}

#[test]
fn advisory_tensor_offset_past_eof() {
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[8], 0, 1 << 20);
    assert_reason(with_data(b, 32), "past the end");
    // Starts inside the file, ends outside.
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[16], 0, 0);
    assert_reason(with_data(b, 63), "past the end");
}

#[test]
fn tensor_dims_and_block_shape_checked() {
    for n_dims in [0usize, 5] {
        let mut b = header(3, 1, 0);
        put_tensor_info(&mut b, "w", &vec![1; n_dims], 0, 0);
        assert_reason(with_data(b, 32), "dimensions");
    }
    // q4_0 rows must hold whole 32-element blocks.
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "w", &[33, 1], 2, 0);
    assert_reason(with_data(b, 64), "multiple of 32");
}

#[test]
fn overlapping_tensors_rejected() {
    let mut b = header(3, 2, 0);
    put_tensor_info(&mut b, "a", &[16], 0, 0);
    put_tensor_info(&mut b, "b", &[16], 0, 32);
    assert_reason(with_data(b, 96), "overlap");
}

#[test]
fn misaligned_tensor_offset_rejected() {
    let mut b = header(3, 1, 0);
    put_tensor_info(&mut b, "a", &[4], 0, 4);
    assert_reason(with_data(b, 64), "alignment");
}

// ---- advisory class: alignment ------------------------------------------------

#[test]
fn advisory_huge_or_invalid_alignment() {
    for bad in [0u32, 3, 48, 1 << 17, 1 << 31, u32::MAX] {
        let mut b = header(3, 0, 1);
        put_kv_u32(&mut b, "general.alignment", bad);
        assert_reason(b, "general.alignment");
    }
    // u64::MAX stored as u64: padding arithmetic would overflow.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "general.alignment");
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_reason(b, "general.alignment");
    // A string alignment.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "general.alignment");
    b.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut b, "32");
    assert_reason(b, "general.alignment");
}

#[test]
fn custom_alignment_is_honoured() {
    let bytes = GgufBuilder::new()
        .kv("general.alignment", GgufValue::U32(64))
        .tensor("a", &[3], 0, vec![0; 12])
        .tensor("b", &[2], 0, vec![1; 8])
        .to_bytes();
    let g = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_info("b").unwrap().offset, 64);
    assert_eq!(g.tensor_bytes("b").unwrap(), [1; 8]);
}

// ---- tensor types marlin cannot compute with --------------------------------

#[test]
fn unknown_tensor_types_are_listed_but_not_read() {
    let bytes = GgufBuilder::new()
        .tensor("iq", &[256], 17, vec![0; 74]) // iq2_xs: known size, no kernels
        .tensor("alien", &[7], 999, vec![])
        .to_bytes();
    let g = GgufFile::from_bytes(bytes).unwrap();
    let iq = g.tensor_info("iq").unwrap();
    assert_eq!(
        (iq.type_name().as_str(), iq.byte_size),
        ("iq2_xs", Some(74))
    );
    assert_eq!(g.tensor_bytes("iq").unwrap().len(), 74);
    assert!(matches!(
        g.ggml_tensor("iq"),
        Err(IoError::UnsupportedTensorType { type_id: 17, .. })
    ));
    let alien = g.tensor_info("alien").unwrap();
    assert_eq!(
        (alien.type_name().as_str(), alien.byte_size),
        ("unknown(999)", None)
    );
    let msg = g.tensor_bytes("alien").unwrap_err().to_string();
    assert!(msg.contains("alien") && msg.contains("999"), "{msg}");
}
