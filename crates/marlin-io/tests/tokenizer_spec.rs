//! Tokenizers built from small hand-written specs: behaviour (byte fallback, special tokens,
//! BOS handling, streaming) and hostile input (errors, never panics). Runs without model files.

use marlin_io::tokenizer::{
    token_type, ChatMessage, ChatTemplate, Tokenizer, TokenizerError, TokenizerSpec,
};

const SPACE: char = '\u{2581}';

/// A SentencePiece vocabulary: `<unk> <s> </s> <|im_start|> <|im_end|>`, 256 byte tokens, then
/// pieces for "hello world" ranked by score.
fn sentencepiece_spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(token_type::BYTE);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁h", "▁w", "▁he", "▁hell", "▁hello",
        "or", "ld", "▁wor", "▁world",
    ];
    for piece in pieces {
        tokens.push(piece.to_string());
        types.push(token_type::NORMAL);
    }
    // Longer pieces score higher, so they are merged first.
    let scores = tokens
        .iter()
        .map(|t| t.chars().count() as f32 - 10.0)
        .collect();
    TokenizerSpec {
        model: "llama".to_string(),
        pre: Some("default".to_string()),
        architecture: Some("llama".to_string()),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        chat_template: Some(
            "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
                .to_string(),
        ),
        ..TokenizerSpec::default()
    }
}

/// A byte-level BPE vocabulary for "hello world" with explicit merges.
fn byte_level_spec() -> TokenizerSpec {
    let tokens: Vec<String> = [
        "<|endoftext|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "hell",
        "hello",
        "Ġw",
        "or",
        "Ġwor",
        "Ġworld",
        "ld",
    ]
    .map(String::from)
    .to_vec();
    let mut types = vec![token_type::NORMAL; tokens.len()];
    types[0] = token_type::CONTROL;
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ]
    .map(String::from)
    .to_vec();
    TokenizerSpec {
        model: "gpt2".to_string(),
        pre: Some("gpt-2".to_string()),
        tokens,
        token_types: Some(types),
        merges: Some(merges),
        bos_id: Some(0),
        eos_id: Some(0),
        ..TokenizerSpec::default()
    }
}

fn id(tokenizer: &Tokenizer, token: &str) -> u32 {
    tokenizer.token_to_id(token).expect("token in vocabulary")
}

#[test]
fn byte_level_bpe_merges_and_round_trips() {
    let tokenizer = Tokenizer::from_spec(byte_level_spec()).expect("builds");
    let ids = tokenizer.encode("hello world", false).expect("encode");
    assert_eq!(ids, vec![id(&tokenizer, "hello"), id(&tokenizer, "Ġworld")]);
    assert_eq!(tokenizer.decode(&ids).expect("decode"), "hello world");
    // gpt2 vocabularies add no BOS unless the file says so.
    assert!(!tokenizer.add_bos());
    assert_eq!(
        tokenizer.encode("hello", true).expect("encode"),
        vec![id(&tokenizer, "hello")]
    );
    // The control token is recognised whole in text.
    let ids = tokenizer
        .encode("hello<|endoftext|>", false)
        .expect("encode");
    assert_eq!(ids, vec![id(&tokenizer, "hello"), 0]);
    assert_eq!(tokenizer.eos_ids(), &[0]);
}

#[test]
fn sentencepiece_prefix_space_byte_fallback_and_bos() {
    let tokenizer = Tokenizer::from_spec(sentencepiece_spec()).expect("builds");
    let ids = tokenizer.encode("hello world", true).expect("encode");
    assert_eq!(
        ids,
        vec![1, id(&tokenizer, "▁hello"), id(&tokenizer, "▁world")]
    );
    assert_eq!(tokenizer.decode(&ids[1..]).expect("decode"), "hello world");
    assert_eq!(tokenizer.decode(&ids).expect("decode"), "<s> hello world");

    // "é" is not a piece: it falls back to its UTF-8 bytes.
    let ids = tokenizer.encode("hé", false).expect("encode");
    let c3 = id(&tokenizer, "<0xC3>");
    let a9 = id(&tokenizer, "<0xA9>");
    assert_eq!(ids, vec![id(&tokenizer, "▁h"), c3, a9]);
    assert_eq!(tokenizer.decode(&ids).expect("decode"), "hé");
    assert_eq!(tokenizer.token_str(c3), Some("<0xC3>"));

    // Special tokens in text are single ids; <|im_end|> ends generation.
    let ids = tokenizer
        .encode("<|im_start|>hello<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids.first(), Some(&3));
    assert_eq!(ids.last(), Some(&4));
    assert!(tokenizer.is_eos(4) && tokenizer.is_eos(2));
}

#[test]
fn stream_decoder_waits_for_complete_characters() {
    let tokenizer = Tokenizer::from_spec(sentencepiece_spec()).expect("builds");
    let ids = tokenizer.encode("hello wörld 日", false).expect("encode");
    let whole = tokenizer.decode(&ids).expect("decode");
    let mut stream = tokenizer.stream_decoder();
    let mut pieces = Vec::new();
    for &token in &ids {
        pieces.push(stream.push(token).expect("push"));
    }
    pieces.push(stream.flush().expect("flush"));
    assert_eq!(pieces.concat(), whole);
    assert_eq!(whole, "hello wörld 日");
    // No piece ever holds a replacement character: bytes were held until complete.
    assert!(pieces
        .iter()
        .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)));
    // The three bytes of 日 produce one piece, with nothing emitted for the first two.
    let n = pieces.len();
    assert_eq!(&pieces[n - 4..n - 1], &["", "", "日"]);

    // A truncated character is flushed lossily instead of being lost.
    let mut stream = tokenizer.stream_decoder();
    assert_eq!(stream.push(id(&tokenizer, "<0xE6>")).expect("push"), "");
    assert_eq!(stream.flush().expect("flush"), "\u{FFFD}");
}

#[test]
fn chat_template_renders_with_python_methods_and_single_bos() {
    let tokenizer = Tokenizer::from_spec(sentencepiece_spec()).expect("builds");
    let template = tokenizer.chat_template().expect("parses");
    let messages = [
        ChatMessage::user("  hello  "),
        ChatMessage::assistant("world"),
    ];
    let rendered = template.render(&messages, false).expect("renders");
    assert_eq!(
        rendered,
        "<s><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nworld<|im_end|>\n"
    );
    // The template wrote BOS: encoding the prompt must not add a second one.
    let ids = tokenizer.encode_chat_prompt(&rendered).expect("encode");
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 1);
    assert_eq!(ids[0], 1);
    // A template without BOS gets one from the tokenizer (add_bos defaults to true here).
    let ids = tokenizer.encode_chat_prompt("hello").expect("encode");
    assert_eq!(ids, vec![1, id(&tokenizer, "▁hello")]);

    let python = ChatTemplate::new(
        "{% for m in messages %}{% if m.content.startswith('x') %}{{ m.content.upper() }}{% else %}{{ m.content.strip().replace('a', 'b') }}{% endif %}|{% endfor %}{% if add_generation_prompt %}>{{ eos_token }}{% endif %}",
        "<s>",
        "</s>",
    )
    .expect("parses");
    let out = python
        .render(&[ChatMessage::user("xyz"), ChatMessage::user(" aa ")], true)
        .expect("renders");
    assert_eq!(out, "XYZ|bb|></s>");
}

#[test]
fn chat_template_errors_name_the_problem() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "")
        .expect_err("unclosed for");
    assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err}");
    // The message says what is wrong and where.
    let message = err.to_string();
    assert!(
        message.contains("unexpected end of input") && message.contains("chat_template:1"),
        "{message}"
    );

    let template = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message') }}{% endif %}ok",
        "",
        "",
    )
    .expect("parses");
    let err = template
        .render(&[ChatMessage::user("hi")], false)
        .expect_err("raises");
    assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err}");
    assert!(
        err.to_string().contains("must start with a system message"),
        "{err}"
    );

    // A template that loops far too long is stopped, not run for ever.
    let template = ChatTemplate::new(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .expect("parses");
    let err = template.render(&[], false).expect_err("out of fuel");
    assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err}");

    let no_template = TokenizerSpec {
        chat_template: None,
        ..sentencepiece_spec()
    };
    let tokenizer = Tokenizer::from_spec(no_template).expect("builds");
    assert!(matches!(
        tokenizer.chat_template(),
        Err(TokenizerError::NoChatTemplate)
    ));
}

#[test]
fn hostile_specs_are_errors() {
    let empty = TokenizerSpec {
        tokens: Vec::new(),
        scores: None,
        token_types: None,
        ..sentencepiece_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(empty),
        Err(TokenizerError::EmptyVocab)
    ));

    let unknown_model = TokenizerSpec {
        model: "bert".to_string(),
        ..byte_level_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(unknown_model),
        Err(TokenizerError::UnsupportedModel(_))
    ));

    let short_scores = TokenizerSpec {
        scores: Some(vec![0.0; 3]),
        ..sentencepiece_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(short_scores),
        Err(TokenizerError::LengthMismatch { what: "scores", .. })
    ));

    let short_types = TokenizerSpec {
        token_types: Some(vec![1]),
        ..byte_level_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(short_types),
        Err(TokenizerError::LengthMismatch { .. })
    ));

    let bad_bos = TokenizerSpec {
        bos_id: Some(1_000_000),
        ..byte_level_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(bad_bos),
        Err(TokenizerError::TokenIdOutOfRange { what: "BOS", .. })
    ));

    let no_scores = TokenizerSpec {
        scores: None,
        ..sentencepiece_spec()
    };
    assert!(matches!(
        Tokenizer::from_spec(no_scores),
        Err(TokenizerError::MissingScores)
    ));
}

#[test]
fn merges_naming_unknown_tokens_are_errors() {
    let cases: [(&str, &str); 5] = [
        ("q e", "left token is not in the vocabulary"),
        ("h q", "right token is not in the vocabulary"),
        // Both sides exist but their concatenation does not (and is longer than any token).
        ("hello hello", "merged token is not in the vocabulary"),
        ("he", "expected two tokens separated by one space"),
        ("h e l", "expected two tokens separated by one space"),
    ];
    for (merge, reason) in cases {
        let mut spec = byte_level_spec();
        spec.merges
            .get_or_insert_with(Vec::new)
            .push(merge.to_string());
        match Tokenizer::from_spec(spec) {
            Err(TokenizerError::BadMerge { reason: got, .. }) => assert_eq!(got, reason, "{merge}"),
            other => panic!("merge {merge:?}: expected BadMerge, got {other:?}"),
        }
    }
}

#[test]
fn huge_ids_in_decode_are_errors() {
    let tokenizer = Tokenizer::from_spec(sentencepiece_spec()).expect("builds");
    let n = tokenizer.vocab_size() as u32;
    for bad in [n, n + 1, u32::MAX] {
        assert!(matches!(
            tokenizer.decode(&[5, bad]),
            Err(TokenizerError::TokenIdOutOfRange { .. })
        ));
        assert!(tokenizer.decode_skip_special(&[bad]).is_err());
        assert!(tokenizer.stream_decoder().push(bad).is_err());
    }
    assert_eq!(tokenizer.token_str(u32::MAX), None);
    assert!(!tokenizer.is_special(u32::MAX));
    assert_eq!(tokenizer.decode(&[]).expect("empty"), "");
}

/// xorshift64*: a small deterministic generator, enough to vary inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_text_round_trips_and_random_ids_never_panic() {
    let tokenizer = Tokenizer::from_spec(sentencepiece_spec()).expect("builds");
    let alphabet: Vec<char> = "helowrd  \t\n日本🦀é\u{0}<|>▁".chars().collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300 {
        let len = (rng.next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        let ids = tokenizer.encode(&text, false).expect("encode");
        // The decoder turns `▁` back into a space; everything else comes back as it was.
        let expected = text.replace(SPACE, " ");
        assert_eq!(
            tokenizer.decode(&ids).expect("decode"),
            expected,
            "{text:?}"
        );

        let random_ids: Vec<u32> = (0..len)
            .map(|_| (rng.next() % (tokenizer.vocab_size() as u64 + 3)) as u32)
            .collect();
        let _ = tokenizer.decode(&random_ids);
        let mut stream = tokenizer.stream_decoder();
        for &token in &random_ids {
            let _ = stream.push(token);
        }
        let _ = stream.flush();
    }
}

#[test]
fn hf_dir_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("marlin-tok-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = Tokenizer::from_hf_dir(&dir);
    assert!(matches!(
        missing,
        Err(TokenizerError::MissingTokenizerJson(_))
    ));
    std::fs::write(dir.join("tokenizer.json"), "{ not json").expect("write");
    let bad = Tokenizer::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir).ok();
    let err = bad.expect_err("bad JSON");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

/// Vocabularies missing byte tokens and UNK (so text can hold characters nothing spells):
/// encoding and decoding return, never panic.
#[test]
fn incomplete_vocabularies_never_panic() {
    let mut spm = sentencepiece_spec();
    let keep: Vec<bool> = spm.tokens.iter().map(|t| !t.starts_with("<0x")).collect();
    let filter = |v: &[String]| -> Vec<String> {
        v.iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| t.clone())
            .collect()
    };
    let tokens = filter(&spm.tokens);
    let n = tokens.len();
    spm.tokens = tokens;
    spm.scores = Some(vec![-1.0; n]);
    spm.token_types = None;
    spm.unk_id = None;
    let tokenizers = [
        Tokenizer::from_spec(spm).expect("builds"),
        Tokenizer::from_spec(byte_level_spec()).expect("builds"),
    ];
    let mut rng = Rng(7);
    let alphabet: Vec<char> = "hello wörld\u{0}\u{FFFD}日🦀<|endoftext|>\n"
        .chars()
        .collect();
    for tokenizer in &tokenizers {
        for _ in 0..200 {
            let len = (rng.next() % 16) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(ids) = tokenizer.encode(&text, true) {
                assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
                tokenizer.decode(&ids).expect("ids from encode decode");
            }
        }
    }
}
