//! Generation engine: sampling, stop conditions, the streaming generation
//! loop, perplexity.
//!
//! The engine drives any [`generate::SequenceModel`] (a model plus the KV
//! cache of one sequence) and never looks inside it.

pub mod generate;
pub mod json_object;
pub mod kld;
pub mod perplexity;
pub mod sampler;
pub mod serve;
pub mod stop;

pub use generate::{
    generate, Detokenizer, FinishReason, GenerationOutput, GenerationRequest, GenerationStats,
    SequenceModel,
};
pub use sampler::{Sampler, SamplingParams};

/// Errors of the generation engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid parameter {0}")]
    InvalidParam(String),
    #[error("prompt of {prompt} tokens does not fit the context of {limit} tokens")]
    ContextOverflow { prompt: usize, limit: usize },
    #[error("the model produced no finite logits")]
    NonFiniteLogits,
    #[error("model: {0}")]
    Model(String),
}
