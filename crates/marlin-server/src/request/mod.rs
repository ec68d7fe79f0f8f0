//! Parsing and validation of `/v1/chat/completions` and `/v1/completions`
//! bodies. The body is parsed as untyped JSON first and each field is then
//! checked by hand, so that a wrong type or an out-of-range value is a 400
//! naming the parameter (serde's derive would only say "invalid type at line
//! 1 column 57").

use crate::error::ApiError;
use serde_json::{Map, Value};

/// Most completions one request may ask for (`n`).
pub const MAX_N: usize = 16;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Most alternatives per position in `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// What to continue: chat messages (rendered with the model's template) or
/// a raw prompt (text or token ids).
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// Everything a generation request asks for, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    pub model: String,
    pub prompt: PromptInput,
    /// `None`: up to the context length.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = disabled.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    /// `Some(k)`: return the chosen token's logprob and the k best.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub json_object: bool,
}

/// Which endpoint a body was sent to (they differ in `messages` vs `prompt`
/// and in how `logprobs` is spelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Parses and validates a request body.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<GenerationParams, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "The request body is empty; expected a JSON object.",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    let f = Fields { obj: &obj };

    for unsupported in [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "suffix",
    ] {
        if f.present(unsupported) {
            return Err(ApiError::invalid_param(
                unsupported,
                format!("`{unsupported}` is not supported by this server."),
            ));
        }
    }
    if f.bool_or("echo", false)? {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` is not supported by this server.",
        ));
    }

    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must be a string.",
            ))
        }
        None => {
            return Err(ApiError::invalid_param(
                "model",
                "Missing required parameter: `model`.",
            ))
        }
    };

    let prompt = match endpoint {
        Endpoint::Chat => PromptInput::Chat(parse_messages(obj.get("messages"))?),
        Endpoint::Completions => parse_prompt(obj.get("prompt"))?,
    };

    let max_tokens = match (
        f.uint_opt("max_completion_tokens")?,
        f.uint_opt("max_tokens")?,
    ) {
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    if max_tokens == Some(0) {
        let param = if f.present("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be at least 1."),
        ));
    }

    let temperature = f.num_in("temperature", 1.0, 0.0, 2.0)?;
    let top_p = f.num_or("top_p", 1.0)?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}."),
        ));
    }
    // vLLM's convention: -1 (or 0) disables top-k.
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            _ => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    "`top_k` must be an integer >= 1, or -1 to disable.",
                ))
            }
        },
    };
    let min_p = f.num_in("min_p", 0.0, 0.0, 1.0)?;
    let presence_penalty = f.num_in("presence_penalty", 0.0, -2.0, 2.0)?;
    let frequency_penalty = f.num_in("frequency_penalty", 0.0, -2.0, 2.0)?;
    let repetition_penalty = f.num_or("repetition_penalty", 1.0)?;
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(ApiError::invalid_param(
            "repetition_penalty",
            "`repetition_penalty` must be in (0, 10].",
        ));
    }
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            // Negative seeds are valid in OpenAI's API: reinterpret the bits.
            (None, Some(s)) => Some(s as u64),
            _ => {
                return Err(ApiError::invalid_param(
                    "seed",
                    "`seed` must be an integer.",
                ))
            }
        },
    };
    let stop = parse_stop(obj.get("stop"))?;
    let n = f.uint_opt("n")?.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be between 1 and {MAX_N}, got {n}."),
        ));
    }

    let logprobs = match endpoint {
        Endpoint::Chat => {
            let want = f.bool_or("logprobs", false)?;
            let top = f.uint_opt("top_logprobs")?;
            match (want, top) {
                (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}."),
                    ))
                }
                (false, Some(_)) => {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        "`top_logprobs` requires `logprobs` to be true.",
                    ))
                }
                (true, k) => Some(k.unwrap_or(0)),
                (false, None) => None,
            }
        }
        Endpoint::Completions => match f.uint_opt("logprobs")? {
            Some(k) if k > 5 => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    "`logprobs` must be between 0 and 5.",
                ))
            }
            other => other,
        },
    };

    let stream = f.bool_or("stream", false)?;
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true.",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "stream_options.include_usage",
                        "`include_usage` must be a boolean.",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stream_options",
                "`stream_options` must be an object.",
            ))
        }
    };
    let json_object = match obj.get("response_format") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object") => true,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "response_format",
                    format!(
                    "response_format type `{other}` is not supported; use `text` or `json_object`."
                ),
                ))
            }
            None => {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "`response_format` needs a string `type`.",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid_param(
                "response_format",
                "`response_format` must be an object.",
            ))
        }
    };
    if let Some(v) = obj.get("user") {
        if !(v.is_string() || v.is_null()) {
            return Err(ApiError::invalid_param("user", "`user` must be a string."));
        }
    }

    Ok(GenerationParams {
        model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        seed,
        stop,
        n,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        logprobs,
        stream,
        include_usage,
        json_object,
    })
}

/// Typed getters that name the parameter in their errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn present(&self, key: &str) -> bool {
        !matches!(self.obj.get(key), None | Some(Value::Null))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::invalid_param(
                key,
                format!("`{key}` must be a boolean."),
            )),
        }
    }

    fn num_or(&self, key: &str, default: f32) -> Result<f32, ApiError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && x.abs() < 1e30 => Ok(x as f32),
                _ => Err(ApiError::invalid_param(
                    key,
                    format!("`{key}` is out of range."),
                )),
            },
            Some(_) => Err(ApiError::invalid_param(
                key,
                format!("`{key}` must be a number."),
            )),
        }
    }

    fn num_in(&self, key: &str, default: f32, lo: f32, hi: f32) -> Result<f32, ApiError> {
        let x = self.num_or(key, default)?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid_param(
                key,
                format!("`{key}` must be between {lo} and {hi}, got {x}."),
            ));
        }
        Ok(x)
    }

    /// A non-negative integer (JSON numbers like `3.0` are accepted).
    fn uint_opt(&self, key: &str) -> Result<Option<usize>, ApiError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 9e15)
                        .map(|x| x as u64)
                });
                match n {
                    Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                    None if v.as_i64().is_some_and(|x| x < 0) => Err(ApiError::invalid_param(
                        key,
                        format!("`{key}` must not be negative."),
                    )),
                    None => Err(ApiError::invalid_param(
                        key,
                        format!("`{key}` must be a non-negative integer."),
                    )),
                }
            }
        }
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let arr = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_param(
                "messages",
                "Missing required parameter: `messages`.",
            ))
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must be an array.",
            ))
        }
    };
    if arr.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let p = |field: &str| format!("messages[{i}].{field}");
            let Value::Object(m) = m else {
                return Err(ApiError::invalid_param(&format!("messages[{i}]"), "Each message must be an object."));
            };
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system") | Some("developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("tool") => Role::Tool,
                Some(other) => {
                    return Err(ApiError::invalid_param(&p("role"), format!("Unknown role `{other}`; expected system, developer, user, assistant or tool.")))
                }
                None => return Err(ApiError::invalid_param(&p("role"), "Each message needs a string `role`.")),
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid_param(&format!("messages[{i}].content[{j}]"), "Only text content parts (`{\"type\": \"text\", \"text\": ...}`) are supported."))
                            }
                        }
                    }
                    text
                }
                Some(Value::Null) | None if role == Role::Assistant => String::new(),
                Some(Value::Null) | None => return Err(ApiError::invalid_param(&p("content"), "Missing message `content`.")),
                Some(_) => return Err(ApiError::invalid_param(&p("content"), "`content` must be a string or an array of text parts.")),
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn parse_prompt(v: Option<&Value>) -> Result<PromptInput, ApiError> {
    match v {
        None | Some(Value::Null) => Err(ApiError::invalid_param(
            "prompt",
            "Missing required parameter: `prompt`.",
        )),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(PromptInput::Text(
            a[0].as_str().unwrap_or_default().to_string(),
        )),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            let ids = a
                .iter()
                .map(|t| t.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "prompt",
                        "Token ids in `prompt` must be non-negative 32-bit integers.",
                    )
                })?;
            Ok(PromptInput::Tokens(ids))
        }
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            Err(ApiError::invalid_param(
                "prompt",
                "A list of several prompts is not supported; send one request per prompt.",
            ))
        }
        Some(_) => Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must be a string, a list of one string, or a list of token ids.",
        )),
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid_param("stop", "`stop` must be a string or a list of strings.")
            })?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stop",
                "`stop` must be a string or a list of strings.",
            ))
        }
    };
    if stops.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!("At most {MAX_STOP} stop sequences are allowed."),
        ));
    }
    if stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid_param(
            "stop",
            format!("Stop sequences must be 1 to {MAX_STOP_LEN} bytes long."),
        ));
    }
    Ok(stops)
}

#[cfg(test)]
mod tests;
