//! What the HTTP layer needs from an inference engine. The server is written
//! against this trait so that its request handling (validation, streaming,
//! errors, metrics) is independent of how generation is scheduled;
//! `marlin serve` (crates/marlin-cli/src/serve_backend.rs) implements it over
//! `marlin_engine::serve`.

use crate::request::ChatMessage;
use marlin_engine::SamplingParams;

/// One generation, already tokenized and validated.
#[derive(Clone, Debug)]
pub struct BackendRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(k)`: report the chosen token's logprob and the k best.
    pub logprobs: Option<usize>,
    /// Constrain the output to one JSON object.
    pub json_object: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// The k most likely alternatives at this position: (token text, bytes, logprob).
    pub top: Vec<(String, Vec<u8>, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

impl FinishReason {
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "abort",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum BackendEvent {
    /// New text (may be empty while a multi-byte character or a possible stop
    /// string is held back) for one generated token.
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Why a request was not accepted.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitError {
    QueueFull {
        retry_after_secs: u64,
    },
    PromptTooLong {
        prompt_tokens: usize,
        max_tokens: usize,
        limit: usize,
    },
    Invalid {
        param: String,
        message: String,
    },
    ShuttingDown,
    Internal(String),
}

/// A running request's events. Dropping it cancels the request (its KV
/// blocks are freed at the engine's next step).
pub trait EventStream: Send {
    /// Blocks until the next event; `None` once the request has ended.
    fn next_event(&mut self) -> Option<BackendEvent>;
}

/// Engine statistics read at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendStats {
    pub running: usize,
    pub waiting: usize,
    /// 0..=1.
    pub kv_cache_usage: f64,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub preemptions: u64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Engine steps that ran a forward pass, seconds in those passes, and
    /// in those whole steps (see `marlin_engine::serve::EngineStats`).
    pub engine_steps: u64,
    pub engine_forward_seconds: f64,
    pub engine_step_seconds: f64,
}

pub trait Backend: Send + Sync + 'static {
    /// Longest sequence (prompt + completion) a request may use.
    fn max_model_len(&self) -> usize;
    /// Renders chat messages with the model's template and tokenizes them.
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String>;
    /// Tokenizes a raw prompt (with the BOS the model expects).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Largest valid token id + 1.
    fn vocab_size(&self) -> usize;
    fn submit(&self, req: BackendRequest) -> Result<Box<dyn EventStream>, SubmitError>;
    fn stats(&self) -> BackendStats;
}
