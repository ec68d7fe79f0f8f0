//! OpenAI response objects: whole completions, stream chunks, logprobs.

use crate::backend::TokenLogprob;
use crate::request::Endpoint;
use serde_json::{json, Value};

/// What one choice accumulated (non-streaming responses).
#[derive(Default, Debug)]
pub struct ChoiceAccum {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<&'static str>,
    pub completion_tokens: usize,
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn bytes_json(b: &[u8]) -> Value {
    Value::Array(b.iter().map(|&x| json!(x)).collect())
}

/// Chat-style logprobs (`{"content": [...]}`) of some tokens.
pub fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            json!({
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": bytes_json(&lp.bytes),
                "top_logprobs": lp.top.iter().map(|(t, b, l)| json!({"token": t, "logprob": l, "bytes": bytes_json(b)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

/// Legacy completions logprobs, with text offsets counted from `offset0`.
pub fn completion_logprobs(lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut offset = offset0;
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        offsets.push(offset);
        offset += lp.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| {
            let mut m = serde_json::Map::new();
            for (t, _, p) in &l.top {
                m.insert(t.clone(), json!(p));
            }
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

pub struct ResponseMeta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub endpoint: Endpoint,
    pub want_logprobs: bool,
}

/// The whole (non-streaming) response.
pub fn full_response(meta: &ResponseMeta, choices: &[ChoiceAccum], prompt_tokens: usize) -> Value {
    let completion_tokens: usize = choices.iter().map(|c| c.completion_tokens).sum();
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| match meta.endpoint {
            Endpoint::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": if meta.want_logprobs { chat_logprobs(&c.logprobs) } else { Value::Null },
                "finish_reason": c.finish_reason,
            }),
            Endpoint::Completions => json!({
                "index": i,
                "text": c.text,
                "logprobs": if meta.want_logprobs { completion_logprobs(&c.logprobs, 0) } else { Value::Null },
                "finish_reason": c.finish_reason,
            }),
        })
        .collect();
    json!({
        "id": meta.id,
        "object": match meta.endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completions => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    })
}

/// One streamed chunk for choice `index`: a text delta, the first
/// (role-only) chat delta, or the final one carrying `finish_reason`.
pub fn chunk(
    meta: &ResponseMeta,
    index: usize,
    role: bool,
    text: &str,
    logprob: Option<&TokenLogprob>,
    text_offset: usize,
    finish_reason: Option<&str>,
) -> Value {
    let lps: Vec<TokenLogprob> = logprob.cloned().into_iter().collect();
    let choice = match meta.endpoint {
        Endpoint::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if role || !text.is_empty() || finish_reason.is_none() {
                delta.insert("content".into(), json!(text));
            }
            json!({
                "index": index,
                "delta": Value::Object(delta),
                "logprobs": if meta.want_logprobs && logprob.is_some() { chat_logprobs(&lps) } else { Value::Null },
                "finish_reason": finish_reason,
            })
        }
        Endpoint::Completions => json!({
            "index": index,
            "text": text,
            "logprobs": if meta.want_logprobs && logprob.is_some() { completion_logprobs(&lps, text_offset) } else { Value::Null },
            "finish_reason": finish_reason,
        }),
    };
    json!({
        "id": meta.id,
        "object": match meta.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completions => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// The last chunk when `stream_options.include_usage` is set.
pub fn usage_chunk(meta: &ResponseMeta, prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "id": meta.id,
        "object": match meta.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completions => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    })
}
