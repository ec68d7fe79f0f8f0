//! Parses arbitrary bytes as GGUF and, when they parse, touches every
//! accessor a loader would use, and builds the tokenizer its metadata
//! describes. Any panic, overflow or out-of-memory is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use marlin_io::gguf::{GgufFile, GgufKey};
use marlin_io::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::from_bytes(data) else {
        return;
    };
    for (key, value) in g.metadata() {
        let _ = g.get_u32(key.as_str());
        let _ = g.get_f32(key.as_str());
        let _ = g.get_str(key.as_str());
        let _ = value.to_string();
        if let Some(a) = value.as_array() {
            let _ = a.to_f32_vec();
            let _ = a.to_i64_vec();
        }
    }
    let _ = g.get_u32(GgufKey::ContextLength);
    let _ = g.get_array(GgufKey::TokenizerTokens);
    // The tokenizer keys, read and validated as `marlin run` does.
    let _ = Tokenizer::from_gguf(&g);
    for t in g.tensors() {
        let _ = t.type_name();
        let _ = t.rows_cols();
        if let Ok(bytes) = g.tensor_bytes(&t.name) {
            assert_eq!(Some(bytes.len()), t.byte_size);
        }
        let _ = g.ggml_tensor(&t.name);
        let _ = g.tensor_f32(&t.name);
    }
});
