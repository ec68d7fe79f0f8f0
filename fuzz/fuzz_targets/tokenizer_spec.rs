//! A tokenizer description as GGUF metadata stores it (`tokenizer.ggml.*`),
//! drawn from the input: model, pre-tokenizer, architecture, vocabulary,
//! scores, token types, merges, special ids and flags, often inconsistent
//! with each other. Building must end in an error or a tokenizer whose ids
//! stay inside the vocabulary; encode, decode and stream-decode are used on
//! text also drawn from the input.
#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use marlin_io::tokenizer::{Tokenizer, TokenizerSpec};

const MODELS: [&str; 3] = ["gpt2", "llama", "bert"];
const PRES: [&str; 7] = [
    "default",
    "smollm",
    "llama-bpe",
    "qwen2",
    "tekken",
    "gpt-4o",
    "qwen35",
];
const ARCHITECTURES: [&str; 3] = ["llama", "gemma3", "qwen3"];
/// Token pieces that make vocabularies where merges, byte fallback and
/// special tokens actually meet.
const PIECES: [&str; 14] = [
    "a",
    "b",
    "ab",
    "\u{120}",
    "\u{2581}",
    " ",
    "  ",
    "<0x41>",
    "<0xE6>",
    "<s>",
    "</s>",
    "<|im_end|>",
    "\u{e9}",
    "1",
];

fn piece_string(u: &mut Unstructured<'_>) -> Result<String> {
    let n = u.int_in_range(0..=4)?;
    let mut s = String::new();
    for _ in 0..n {
        if u.ratio(1, 8)? {
            s.push(u.arbitrary::<char>()?);
        } else {
            s.push_str(u.choose(&PIECES)?);
        }
    }
    Ok(s)
}

fn maybe_id(u: &mut Unstructured<'_>, n: usize) -> Result<Option<u32>> {
    Ok(match u.int_in_range(0..=7)? {
        0..=3 => None,
        4..=6 => Some(u.int_in_range(0..=(n as u32).saturating_add(1))?),
        _ => Some(u.arbitrary()?),
    })
}

fn spec(u: &mut Unstructured<'_>) -> Result<TokenizerSpec> {
    let n = u.int_in_range(0..=200usize)?;
    let tokens: Vec<String> = (0..n).map(|_| piece_string(u)).collect::<Result<_>>()?;
    // Usually one per token, sometimes a wrong count.
    let per_token_len = |u: &mut Unstructured<'_>| -> Result<usize> {
        Ok(if u.ratio(7, 8)? {
            n
        } else {
            u.int_in_range(0..=n + 2)?
        })
    };
    let scores = if u.arbitrary()? {
        let len = per_token_len(u)?;
        Some(
            (0..len)
                .map(|_| u.arbitrary::<f32>())
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let token_types = if u.arbitrary()? {
        let len = per_token_len(u)?;
        Some(
            (0..len)
                .map(|_| {
                    if u.ratio(7, 8)? {
                        u.int_in_range(1..=6)
                    } else {
                        u.arbitrary::<i32>()
                    }
                })
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let merges = if u.arbitrary()? && n > 0 {
        let count = u.int_in_range(0..=100)?;
        let merge = |u: &mut Unstructured<'_>| -> Result<String> {
            Ok(if u.ratio(7, 8)? {
                let left = &tokens[u.choose_index(n)?];
                let right = &tokens[u.choose_index(n)?];
                format!("{left} {right}")
            } else {
                u.arbitrary::<String>()?
            })
        };
        Some((0..count).map(|_| merge(u)).collect::<Result<Vec<_>>>()?)
    } else {
        None
    };
    let pick = |u: &mut Unstructured<'_>, names: &[&str]| -> Result<Option<String>> {
        Ok(match u.int_in_range(0..=5)? {
            0 => None,
            1 => Some(u.arbitrary::<String>()?),
            _ => Some(u.choose(names)?.to_string()),
        })
    };
    Ok(TokenizerSpec {
        model: pick(u, &MODELS)?.unwrap_or_default(),
        pre: pick(u, &PRES)?,
        architecture: pick(u, &ARCHITECTURES)?,
        tokens,
        scores,
        token_types,
        merges,
        bos_id: maybe_id(u, n)?,
        eos_id: maybe_id(u, n)?,
        unk_id: maybe_id(u, n)?,
        pad_id: maybe_id(u, n)?,
        eot_id: maybe_id(u, n)?,
        eom_id: maybe_id(u, n)?,
        add_bos: u.arbitrary()?,
        add_eos: u.arbitrary()?,
        add_space_prefix: u.arbitrary()?,
        chat_template: None,
    })
}

fuzz_target!(init: common::let_tokenizers_panics_unwind(), |data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(spec) = spec(&mut u) else {
        return;
    };
    let text: String = u.arbitrary().unwrap_or_default();
    let ids: Vec<u32> = u.arbitrary().unwrap_or_default();
    let Ok(tokenizer) = Tokenizer::from_spec(spec) else {
        return;
    };
    let vocab = tokenizer.vocab_size();
    for add_special in [false, true] {
        if let Ok(encoded) = tokenizer.encode(&text, add_special) {
            assert!(
                encoded.iter().all(|&id| (id as usize) < vocab),
                "encode gave an id outside the vocabulary of {vocab}"
            );
            let _ = tokenizer.decode(&encoded);
        }
    }
    let _ = tokenizer.encode_chat_prompt(&text);
    let _ = tokenizer.decode(&ids);
    let _ = tokenizer.decode_skip_special(&ids);
    let mut stream = tokenizer.stream_decoder();
    for &id in ids.iter().take(64) {
        let _ = stream.push(id);
    }
    let _ = stream.flush();
    for &id in tokenizer.eos_ids() {
        assert!((id as usize) < vocab);
    }
});
