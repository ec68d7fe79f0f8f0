//! The serving engine: one thread owns the model and its paged KV pool and
//! runs steps; any number of clients submit requests through a cloneable
//! [`EngineHandle`] and read [`Event`]s from their [`RequestStream`].
//!
//! Each step: drop cancelled requests (their blocks are freed), schedule
//! (decoding sequences one token each, then prompt chunks up to the token
//! budget, then new requests while there is room; when blocks run out the
//! newest running sequence is preempted and later recomputed), one batched
//! forward over every scheduled sequence, then sampling, detokenization and
//! stop strings per sequence. See `docs/SERVING.md`.
//!
//! The engine does not know the model or tokenizer types: it drives a
//! [`BatchModel`] and makes detokenizers through a [`DetokenizerSource`].

mod blocking;
mod blocks;
mod engine;
mod handle;
mod sequence;

pub use blocking::generate_blocking;
pub use handle::{spawn, EngineHandle, RequestStream};
pub use sequence::RankedTokens;

use crate::sampler::SamplingParams;
use crate::{Detokenizer, EngineError, FinishReason};
use std::time::{Duration, Instant};

/// One sequence's share of a batched forward call.
#[derive(Clone, Copy, Debug)]
pub struct BatchChunk<'a> {
    /// New tokens at positions `pos0..pos0 + tokens.len()`.
    pub tokens: &'a [u32],
    /// Block `i` holds positions `i*block_size..(i+1)*block_size`.
    pub block_table: &'a [u32],
    pub pos0: usize,
    /// Whether the logits of the last new token are wanted.
    pub want_logits: bool,
}

/// A model with its paged KV pool, as the engine drives it.
pub trait BatchModel: Send {
    fn vocab_size(&self) -> usize;
    /// Positions per KV block.
    fn block_size(&self) -> usize;
    /// Blocks in the pool.
    fn n_blocks(&self) -> usize;
    /// Runs every chunk in one pass; returns per chunk the logits (vocab)
    /// of its last token if `want_logits`, else an empty vector.
    fn forward_batch(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>, EngineError>;

    /// [`Self::forward_batch`] into `logits`, which the caller keeps from
    /// step to step: a model may refill its rows in place (one row of a
    /// 128k vocabulary is 0.5 MB, and fresh allocations of that size fault
    /// their pages in every step). On success `logits` has one entry per
    /// chunk, as `forward_batch` returns.
    fn forward_batch_into(
        &mut self,
        chunks: &[BatchChunk],
        logits: &mut Vec<Vec<f32>>,
    ) -> Result<(), EngineError> {
        *logits = self.forward_batch(chunks)?;
        Ok(())
    }

    /// [`Self::forward_batch_into`] where a chunk whose `picks[i]` is not
    /// [`ModelPick::Logits`] may be answered `picked[i] = Some(id)`: the
    /// token that choice gives from its logits (an id >= vocab when every
    /// logit is NaN), with no logits row, so that those logits never leave
    /// the model's device. A chunk answered `None` gets its logits row and
    /// the engine chooses on the host, by the same definition. On success
    /// `logits` and `picked` have one entry per chunk. The default picks
    /// nothing (every wanted chunk gets its logits).
    fn forward_batch_picking(
        &mut self,
        chunks: &[BatchChunk],
        picks: &[ModelPick],
        logits: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
    ) -> Result<(), EngineError> {
        let _ = picks;
        self.forward_batch_into(chunks, logits)?;
        picked.clear();
        picked.resize(chunks.len(), None);
        Ok(())
    }
}

/// What a model may pick itself for a chunk's next token
/// ([`BatchModel::forward_batch_picking`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelPick {
    /// The logits come back (logprobs, an output constraint or penalties
    /// need them on the host), or the chunk wants no token.
    Logits,
    /// The plain argmax (lowest id on ties, NaN never chosen).
    Argmax,
    /// The sampler's temperature draw (`sampler/nucleus.rs`: a model must
    /// compute exactly that definition, or answer with logits) with this
    /// uniform in [0, 1), which the host uses too when it gets logits.
    Draw {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        uniform: f32,
    },
}

impl ModelPick {
    /// The token this pick asks for, computed on the host (`None` for
    /// [`ModelPick::Logits`]): what a model answering it must return.
    pub fn host_token(&self, logits: &[f32]) -> Result<Option<u32>, EngineError> {
        match *self {
            ModelPick::Logits => Ok(None),
            ModelPick::Argmax => crate::sampler::argmax(logits).map(Some),
            ModelPick::Draw {
                temperature,
                top_k,
                top_p,
                min_p,
                uniform,
            } => {
                let params = SamplingParams::unpenalised(temperature, top_k, top_p, min_p);
                crate::sampler::draw_with_uniform(&params, logits, uniform).map(Some)
            }
        }
    }
}

/// Makes one incremental detokenizer per request. Detokenizers may borrow
/// the source (a tokenizer's stream decoder borrows the tokenizer).
pub trait DetokenizerSource: Send {
    fn detokenizer(&self) -> Box<dyn Detokenizer + '_>;
}

impl<F> DetokenizerSource for F
where
    F: Fn() -> Box<dyn Detokenizer> + Send,
{
    fn detokenizer(&self) -> Box<dyn Detokenizer + '_> {
        self()
    }
}

/// Limits of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most sequences running (holding KV blocks) at once.
    pub max_num_seqs: usize,
    /// Most tokens in one forward step: one per decoding sequence, the rest
    /// for prompt chunks (a long prompt is prefilled over several steps so
    /// decoding never stalls). At least `max_num_seqs`.
    pub max_batch_tokens: usize,
    /// Most requests waiting for a slot before `submit` answers `QueueFull`.
    pub max_queue: usize,
    /// Longest sequence (prompt + generated); clamped to the pool size.
    pub max_model_len: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 32,
            max_batch_tokens: 512,
            max_queue: 256,
            max_model_len: 4096,
        }
    }
}

/// Restricts which token may come next (`response_format: json_object`).
pub trait TokenConstraint: Send {
    /// The first acceptable token of `ranked` (the sampler's choice first,
    /// then every other token by decreasing logit), or `None` if none is.
    fn choose(&mut self, ranked: RankedTokens<'_>) -> Option<u32>;
    /// Records the token that was emitted.
    fn accept(&mut self, id: u32);
    /// The constrained output is complete: the request finishes (`Stop`).
    fn is_complete(&self) -> bool;
}

/// What a client asks for.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    /// Sampling, with the per-request seed in `sampling.seed`.
    pub sampling: SamplingParams,
    /// Most tokens to generate (>= 1).
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// Tokens that end generation (EOS, end-of-turn); not shown.
    pub stop_token_ids: Vec<u32>,
    /// Also report the log-probability of each sampled token and of the
    /// `n` most likely ones (n <= [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

/// Most alternatives `logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Why `submit` refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({waiting} waiting); retry after {retry_after:?}")]
    QueueFull {
        waiting: usize,
        retry_after: Duration,
    },
    #[error(
        "prompt of {prompt} tokens leaves no room to generate within the context of {max} tokens"
    )]
    PromptTooLong { prompt: usize, max: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// What a request stream yields, in order: tokens, then exactly one
/// `Finished` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token {
        id: u32,
        /// Text that became final with this token (may be empty: a partial
        /// UTF-8 character, or text held back while it may start a stop
        /// string). The last token's text includes whatever was held back.
        text: String,
        /// ln p(id) under the model's distribution (before sampling
        /// transforms), when `logprobs` was asked for.
        logprob: Option<f32>,
        /// The `logprobs` most likely (id, ln p), most likely first.
        top_logprobs: Vec<(u32, f32)>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: RequestTimings,
    },
    Error(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// When things happened to one request (TTFT = first_token - arrival,
/// inter-token latencies = differences of `token_times`, end-to-end =
/// finished - arrival).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestTimings {
    pub arrival: Instant,
    /// First step that computed any of its tokens.
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    /// When each generated token was sampled.
    pub token_times: Vec<Instant>,
    pub finished: Option<Instant>,
}

impl RequestTimings {
    fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            first_scheduled: None,
            first_token: None,
            token_times: Vec::new(),
            finished: None,
        }
    }
}

/// A snapshot of the engine's gauges and counters (for `/metrics`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences holding KV blocks.
    pub running: usize,
    /// Requests waiting for a slot (preempted ones included).
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    /// kv_blocks_used / kv_blocks_total.
    pub kv_usage: f64,
    /// Prompt tokens of requests admitted (counted once per request).
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    /// Tokens computed by forward passes (prefill, recompute and decode).
    pub computed_tokens_total: u64,
    pub preemptions_total: u64,
    /// Tokens looked up in the prefix cache (full blocks, at admission and
    /// at readmission after preemption), and those found.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    /// Steps that ran a forward pass, the time in those forward passes
    /// (the model's work, results back on the host), and in those whole
    /// steps (scheduling, the pass, sampling, sending tokens): the engine
    /// thread's busy time, whose share of the wall time says whether the
    /// engine or its clients set the pace.
    pub steps: u64,
    pub forward_seconds_total: f64,
    pub step_seconds_total: f64,
}
