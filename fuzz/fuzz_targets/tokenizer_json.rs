//! A Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json,
//! generation_config.json, in that order, separated by
//! `common::SECTION_SEPARATOR`) loaded as `marlin run` loads it, then used:
//! encode, decode, stream-decode and render the chat template it names.
//! An empty config section means the file is absent.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use marlin_io::tokenizer::{ChatMessage, Tokenizer};

const SAMPLE_TEXT: &str = "Hello  world! 123 <|im_start|>user\n\u{e9}\u{1f600}\t<s>";

fuzz_target!(init: common::let_tokenizers_panics_unwind(), |data: &[u8]| {
    let parts = common::sections(data, 3);
    let dir = common::scratch_dir("tokenizer_json");
    common::put_file(&dir, "tokenizer.json", Some(parts[0]));
    common::put_file(&dir, "tokenizer_config.json", non_empty(parts[1]));
    common::put_file(&dir, "generation_config.json", non_empty(parts[2]));
    let Ok(tokenizer) = Tokenizer::from_hf_dir(&dir) else {
        return;
    };
    exercise(&tokenizer);
});

fn non_empty(bytes: &[u8]) -> Option<&[u8]> {
    (!bytes.is_empty()).then_some(bytes)
}

fn exercise(tokenizer: &Tokenizer) {
    let vocab = tokenizer.vocab_size();
    for add_special in [false, true] {
        if let Ok(ids) = tokenizer.encode(SAMPLE_TEXT, add_special) {
            let _ = tokenizer.decode(&ids);
            let _ = tokenizer.decode_skip_special(&ids);
        }
    }
    let probe: Vec<u32> = [
        0,
        1,
        2,
        vocab / 2,
        vocab.saturating_sub(1),
        vocab,
        u32::MAX as usize,
    ]
    .iter()
    .map(|&id| u32::try_from(id).unwrap_or(u32::MAX))
    .collect();
    let _ = tokenizer.decode(&probe);
    let mut stream = tokenizer.stream_decoder();
    for &id in &probe {
        let _ = stream.push(id);
    }
    let _ = stream.flush();
    for &id in &probe {
        let _ = tokenizer.token_str(id);
        let _ = tokenizer.is_special(id);
    }
    if let Ok(template) = tokenizer.chat_template() {
        let messages = [ChatMessage::system("be brief"), ChatMessage::user("hi")];
        if let Ok(text) = template.render(&messages, true) {
            let _ = tokenizer.encode_chat_prompt(&text);
        }
    }
}
