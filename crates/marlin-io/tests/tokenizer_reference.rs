//! Token ids, decoded text and rendered chat templates against Hugging Face transformers
//! loading the same GGUF files (fixtures made by scripts/fixtures/make_tokenizer_fixtures.py).
//!
//! Needs the model files in `$MARLIN_MODELS` or `<repo>/models`; skips with a message otherwise.

use std::path::{Path, PathBuf};
use std::time::Instant;

use marlin_io::gguf::GgufFile;
use marlin_io::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};
use serde_json::Value;

fn models_dir() -> PathBuf {
    std::env::var_os("MARLIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// The tokenizer of the fixture's model, or `None` (with a message) if the file is absent.
fn load(fixture: &Value) -> Option<Tokenizer> {
    let file = fixture["model_file"].as_str().expect("model_file");
    let path = models_dir().join(file);
    if !path.exists() {
        eprintln!("SKIP: {} not found (set MARLIN_MODELS)", path.display());
        return None;
    }
    let gguf = GgufFile::open(&path).expect("GGUF opens");
    let start = Instant::now();
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer builds");
    eprintln!(
        "{file}: tokenizer built in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Some(tokenizer)
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

fn check_cases(tokenizer: &Tokenizer, fixture: &Value) {
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tokenizer.encode(text, false).expect("encode");
        assert_eq!(got, want, "ids of {text:?}");
        let want_special = ids(&case["ids_with_special"]);
        let got_special = tokenizer.encode(text, true).expect("encode");
        assert_eq!(
            got_special, want_special,
            "ids with special tokens of {text:?}"
        );

        let decoded = tokenizer.decode(&got).expect("decode");
        assert_eq!(
            decoded,
            case["decoded"].as_str().expect("decoded"),
            "decode of {text:?}"
        );
        let decoded_special = tokenizer.decode(&got_special).expect("decode");
        assert_eq!(
            decoded_special,
            case["decoded_with_special"].as_str().expect("decoded"),
            "decode with special tokens of {text:?}"
        );
        // Round trip. SentencePiece's space marker `▁` written in the text is the one thing
        // that cannot come back: it is a space once encoded.
        if decoded != text {
            assert!(
                tokenizer.token_to_id("\u{2581}").is_some(),
                "round trip of {text:?}"
            );
            assert_eq!(
                decoded,
                text.replace('\u{2581}', " "),
                "round trip of {text:?}"
            );
        }

        // Streaming one id at a time gives the same text.
        let mut stream = tokenizer.stream_decoder();
        let mut streamed = String::new();
        for &id in &got {
            streamed.push_str(&stream.push(id).expect("stream"));
        }
        streamed.push_str(&stream.flush().expect("flush"));
        assert_eq!(streamed, decoded, "streamed decode of {text:?}");
    }
}

/// Encoding speed on the fixture texts, printed (not asserted: machines differ).
fn report_speed(tokenizer: &Tokenizer, fixture: &Value) {
    let text: String = fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|case| case["text"].as_str().expect("text"))
        .collect::<Vec<_>>()
        .concat()
        .repeat(40);
    let start = Instant::now();
    let n = tokenizer.encode(&text, false).expect("encode").len();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "encode: {} bytes -> {n} tokens in {:.1} ms ({:.0} tokens/s)",
        text.len(),
        seconds * 1e3,
        n as f64 / seconds
    );
}

fn messages_of(chat: &Value) -> Vec<ChatMessage> {
    chat["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

/// Templates the GGUF does not ship, rendered by transformers: same text, BOS written by the
/// template and not added a second time, `raise_exception` messages passed through.
fn check_extra_templates(tokenizer: &Tokenizer, fixture: &Value) {
    let Some(templates) = fixture["extra_templates"].as_array() else {
        return;
    };
    let token_text = |id: Option<u32>| id.and_then(|id| tokenizer.token_str(id)).unwrap_or("");
    for entry in templates {
        let source = entry["source"].as_str().expect("source");
        let eos = token_text(tokenizer.eos_ids().first().copied());
        let template = ChatTemplate::new(source, token_text(tokenizer.bos_id()), eos)
            .expect("template parses");
        for chat in entry["chats"].as_array().expect("chats") {
            let add_generation_prompt = chat["add_generation_prompt"].as_bool().expect("flag");
            let rendered = template
                .render(&messages_of(chat), add_generation_prompt)
                .expect("renders");
            assert_eq!(rendered, chat["rendered"].as_str().expect("rendered"));
            let prompt = tokenizer.encode_chat_prompt(&rendered).expect("encode");
            let bos = tokenizer.bos_id().expect("bos");
            assert_eq!(prompt.first(), Some(&bos));
            assert_eq!(prompt.iter().filter(|&&id| id == bos).count(), 1, "one BOS");
        }
        for bad in entry["errors"].as_array().expect("errors") {
            let err = template
                .render(&messages_of(bad), false)
                .expect_err("template rejects the conversation");
            assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err}");
            let message = bad["error"].as_str().expect("error");
            assert!(err.to_string().contains(message), "{err} lacks {message:?}");
        }
    }
}

fn check_chats(tokenizer: &Tokenizer, fixture: &Value) {
    let chats = fixture["chats"].as_array().expect("chats");
    if chats.is_empty() {
        assert!(tokenizer.chat_template_source().is_none());
        return;
    }
    let template = tokenizer.chat_template().expect("template parses");
    for chat in chats {
        let messages = messages_of(chat);
        let add_generation_prompt = chat["add_generation_prompt"].as_bool().expect("flag");
        let rendered = template
            .render(&messages, add_generation_prompt)
            .expect("renders");
        assert_eq!(rendered, chat["rendered"].as_str().expect("rendered"));
        // The prompt's ids are those of the text, with BOS only if the model asks for it.
        let prompt = tokenizer.encode_chat_prompt(&rendered).expect("encode");
        let plain = tokenizer.encode(&rendered, false).expect("encode");
        let bos_count = prompt
            .iter()
            .filter(|&&id| Some(id) == tokenizer.bos_id())
            .count();
        assert!(prompt.ends_with(&plain));
        assert!(
            bos_count
                <= plain
                    .iter()
                    .filter(|&&id| Some(id) == tokenizer.bos_id())
                    .count()
                    + 1
        );
    }
}

#[test]
fn smollm2_matches_transformers() {
    let fixture = fixture("smollm2");
    let Some(tokenizer) = load(&fixture) else {
        return;
    };
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert!(!tokenizer.add_bos());
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("<|im_end|>");
    let endoftext = tokenizer
        .token_to_id("<|endoftext|>")
        .expect("<|endoftext|>");
    assert!(tokenizer.eos_ids().contains(&im_end));
    assert!(tokenizer.eos_ids().contains(&endoftext));
    assert_eq!(tokenizer.token_str(im_end), Some("<|im_end|>"));
    check_cases(&tokenizer, &fixture);
    check_chats(&tokenizer, &fixture);
    report_speed(&tokenizer, &fixture);
}

#[test]
fn gemma3_matches_transformers() {
    let fixture = fixture("gemma3");
    let Some(tokenizer) = load(&fixture) else {
        return;
    };
    assert_eq!(tokenizer.vocab_size(), 262144);
    assert_eq!(tokenizer.bos_id(), Some(2));
    assert!(tokenizer.add_bos());
    let end_of_turn = tokenizer
        .token_to_id("<end_of_turn>")
        .expect("<end_of_turn>");
    assert!(tokenizer.eos_ids().contains(&1));
    assert!(tokenizer.eos_ids().contains(&end_of_turn));
    check_cases(&tokenizer, &fixture);
    check_chats(&tokenizer, &fixture);
    check_extra_templates(&tokenizer, &fixture);
    report_speed(&tokenizer, &fixture);
}

/// The pipeline written as tokenizer.json and read back through `from_hf_dir` gives the same
/// ids, and the directory's chat template is picked up.
#[test]
fn smollm2_through_hf_dir_matches_transformers() {
    let fixture = fixture("smollm2");
    let Some(tokenizer) = load(&fixture) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("marlin-tok-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("tokenizer.json"),
        tokenizer.to_tokenizer_json().expect("serialises"),
    )
    .expect("write");
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": tokenizer.chat_template_source().expect("template"),
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    let from_dir = Tokenizer::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir).ok();
    let from_dir = from_dir.expect("loads");
    assert_eq!(from_dir.vocab_size(), tokenizer.vocab_size());
    assert_eq!(from_dir.bos_id(), Some(1));
    assert!(!from_dir.add_bos());
    check_cases(&from_dir, &fixture);
    check_chats(&from_dir, &fixture);

    // The lone tokenizer.json gives the same ids (it carries no BOS/EOS/template metadata).
    let dir = std::env::temp_dir().join(format!("marlin-tok-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, tokenizer.to_tokenizer_json().expect("serialises")).expect("write");
    let lone = Tokenizer::from_tokenizer_json(&json);
    std::fs::remove_dir_all(&dir).ok();
    let lone = lone.expect("loads");
    for case in fixture["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(lone.encode(text, false).expect("encode"), ids(&case["ids"]));
    }
    assert!(lone
        .eos_ids()
        .contains(&lone.token_to_id("<|im_end|>").expect("im_end")));
}
