//! The glue between the HTTP server (`marlin_server::Backend`) and the
//! serving engine (`marlin_engine::serve`): tokenization and chat
//! templates, the model + KV pool as the engine's `BatchModel` (the CPU
//! one here; on `--device cuda` it is `marlin_models::gpu::GpuBatchModel`,
//! chosen in `cmd_serve.rs`), and engine events as server events.

use std::sync::{Arc, OnceLock};

use marlin_engine::json_object::JsonConstraint;
use marlin_engine::serve::{
    BatchChunk, BatchModel, DetokenizerSource, EngineHandle, EngineRequest, Event, RankedTokens,
    RequestStream, SubmitError as EngineSubmitError, TokenConstraint,
};
use marlin_engine::{Detokenizer, EngineError, FinishReason};
use marlin_io::tokenizer::{ChatMessage as TemplateMessage, ChatTemplate, Tokenizer};
use marlin_models::{KvPool, LogitsWanted, Model, SeqChunk};
use marlin_server::backend::TokenLogprob;
use marlin_server::request::ChatMessage;
use marlin_server::{
    Backend, BackendEvent, BackendRequest, BackendStats, EventStream, SubmitError,
};

use crate::session::TextStream;

/// A CPU model with its paged KV pool, driven by the engine thread.
pub struct CpuBatchModel {
    model: Box<dyn Model>,
    pool: KvPool,
}

impl CpuBatchModel {
    pub fn new(model: Box<dyn Model>, block_size: usize, n_blocks: usize) -> anyhow::Result<Self> {
        let batched = model.batched().ok_or_else(|| {
            anyhow::anyhow!(
                "architecture '{}' has no batched forward",
                model.config().arch
            )
        })?;
        let pool = batched.new_pool(block_size, n_blocks)?;
        Ok(Self { model, pool })
    }
}

impl BatchModel for CpuBatchModel {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn block_size(&self) -> usize {
        self.pool.block_size()
    }
    fn n_blocks(&self) -> usize {
        self.pool.n_blocks()
    }
    fn forward_batch(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>, EngineError> {
        let seqs: Vec<SeqChunk> = chunks
            .iter()
            .map(|c| SeqChunk {
                tokens: c.tokens,
                block_table: c.block_table,
                pos0: c.pos0,
                logits: c.want_logits.then_some(LogitsWanted::Last),
            })
            .collect();
        let batched = self
            .model
            .batched()
            .ok_or_else(|| EngineError::Model("model lost its batched forward".into()))?;
        batched
            .forward_batch(&mut self.pool, &seqs)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
}

/// Makes one incremental detokenizer per request.
pub struct TokenizerDetok(pub Arc<Tokenizer>);

impl DetokenizerSource for TokenizerDetok {
    fn detokenizer(&self) -> Box<dyn Detokenizer + '_> {
        Box::new(TextStream(self.0.stream_decoder()))
    }
}

/// `marlin_server::Backend` over a running engine.
pub struct EngineBackend {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// `None`: the model has no chat template (chat requests get a 400).
    pub template: Option<ChatTemplate>,
    pub template_error: String,
    pub vocab_size: usize,
    /// Each token's text (empty for special tokens), built at the first
    /// `json_object` request.
    pub token_texts: OnceLock<Arc<Vec<String>>>,
}

impl EngineBackend {
    fn token_texts(&self) -> Arc<Vec<String>> {
        let texts = self.token_texts.get_or_init(|| {
            let texts = (0..self.vocab_size as u32)
                .map(|id| {
                    if self.tokenizer.is_special(id) {
                        String::new()
                    } else {
                        self.tokenizer.decode(&[id]).unwrap_or_default()
                    }
                })
                .collect();
            Arc::new(texts)
        });
        Arc::clone(texts)
    }
}

/// `response_format: json_object`: tokens that keep the output a valid
/// prefix of one JSON object; the request ends when the object closes.
struct JsonTokenConstraint {
    json: JsonConstraint,
    texts: Arc<Vec<String>>,
}

impl TokenConstraint for JsonTokenConstraint {
    fn choose(&mut self, ranked: RankedTokens<'_>) -> Option<u32> {
        let texts = &self.texts;
        self.json
            .choose(ranked, |id| texts.get(id as usize).map(String::as_str))
    }
    fn accept(&mut self, id: u32) {
        if let Some(t) = self.texts.get(id as usize) {
            self.json.accept(t);
        }
    }
    fn is_complete(&self) -> bool {
        self.json.is_complete()
    }
}

impl Backend for EngineBackend {
    fn max_model_len(&self) -> usize {
        self.engine.max_model_len()
    }

    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| self.template_error.clone())?;
        let msgs: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage::new(m.role.as_str(), m.content.clone()))
            .collect();
        let rendered = template.render(&msgs, true).map_err(|e| e.to_string())?;
        self.tokenizer
            .encode_chat_prompt(&rendered)
            .map_err(|e| e.to_string())
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, true).map_err(|e| e.to_string())
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn submit(&self, req: BackendRequest) -> Result<Box<dyn EventStream>, SubmitError> {
        let engine_req = EngineRequest {
            prompt: req.prompt,
            sampling: req.sampling,
            max_tokens: req.max_tokens,
            stop_strings: req.stop,
            stop_token_ids: self.tokenizer.eos_ids().to_vec(),
            logprobs: req.logprobs,
        };
        let max_tokens = engine_req.max_tokens;
        let submitted = if req.json_object {
            let constraint = JsonTokenConstraint {
                json: JsonConstraint::new(),
                texts: self.token_texts(),
            };
            self.engine
                .submit_constrained(engine_req, Box::new(constraint))
        } else {
            self.engine.submit(engine_req)
        };
        let stream = submitted.map_err(|e| match e {
            EngineSubmitError::QueueFull { retry_after, .. } => SubmitError::QueueFull {
                retry_after_secs: retry_after.as_secs().max(1),
            },
            EngineSubmitError::PromptTooLong { prompt, max } => SubmitError::PromptTooLong {
                prompt_tokens: prompt,
                max_tokens,
                limit: max,
            },
            EngineSubmitError::Invalid(m) => SubmitError::Invalid {
                param: "request".into(),
                message: m,
            },
            EngineSubmitError::ShuttingDown => SubmitError::ShuttingDown,
        })?;
        Ok(Box::new(EngineEvents {
            stream,
            tokenizer: Arc::clone(&self.tokenizer),
        }))
    }

    fn stats(&self) -> BackendStats {
        let s = self.engine.stats();
        BackendStats {
            running: s.running,
            waiting: s.waiting,
            kv_cache_usage: s.kv_usage,
            kv_blocks_total: s.kv_blocks_total,
            kv_blocks_free: s.kv_blocks_total.saturating_sub(s.kv_blocks_used),
            prompt_tokens: s.prompt_tokens_total,
            generation_tokens: s.generation_tokens_total,
            preemptions: s.preemptions_total,
            prefix_cache_queries: s.prefix_cache_queries,
            prefix_cache_hits: s.prefix_cache_hits,
            engine_steps: s.steps,
            engine_forward_seconds: s.forward_seconds_total,
            engine_step_seconds: s.step_seconds_total,
        }
    }
}

struct EngineEvents {
    stream: RequestStream,
    tokenizer: Arc<Tokenizer>,
}

impl EngineEvents {
    /// A token's own text and bytes (for logprobs; may be a partial UTF-8
    /// character, shown lossily as OpenAI does).
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let text = self.tokenizer.decode(&[id]).unwrap_or_default();
        let bytes = text.as_bytes().to_vec();
        (text, bytes)
    }
}

impl EventStream for EngineEvents {
    fn next_event(&mut self) -> Option<BackendEvent> {
        let ev = self.stream.recv()?;
        Some(match ev {
            Event::Token {
                id,
                text,
                logprob,
                top_logprobs,
            } => {
                let logprob = logprob.map(|lp| {
                    let (token, bytes) = self.token_text(id);
                    let top = top_logprobs
                        .iter()
                        .map(|&(t, l)| {
                            let (s, b) = self.token_text(t);
                            (s, b, l)
                        })
                        .collect();
                    TokenLogprob {
                        token,
                        logprob: lp,
                        bytes,
                        top,
                    }
                });
                BackendEvent::Token { text, logprob }
            }
            Event::Finished { reason, usage, .. } => BackendEvent::Finished {
                reason: match reason {
                    FinishReason::Stop => marlin_server::FinishReason::Stop,
                    FinishReason::Length => marlin_server::FinishReason::Length,
                    FinishReason::Cancelled => marlin_server::FinishReason::Cancelled,
                },
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            },
            Event::Error(e) => BackendEvent::Error(e),
        })
    }
}
