//! One request run to completion through the engine, for `marlin run`.

use super::{EngineHandle, EngineRequest, Event};
use crate::{EngineError, FinishReason, GenerationOutput, GenerationStats};

/// Submits `req`, streams its text to `on_text` (returning `false` cancels)
/// and returns the whole output, as [`crate::generate`] does.
pub fn generate_blocking(
    handle: &EngineHandle,
    req: EngineRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<GenerationOutput, EngineError> {
    let mut stream = handle
        .submit(req)
        .map_err(|e| EngineError::InvalidParam(e.to_string()))?;
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut cancelled = false;
    while let Some(event) = stream.recv() {
        match event {
            Event::Token {
                id, text: piece, ..
            } => {
                tokens.push(id);
                text.push_str(&piece);
                if !cancelled && !piece.is_empty() && !on_text(&piece) {
                    cancelled = true;
                    stream.cancel();
                }
            }
            Event::Finished {
                reason,
                usage,
                timings,
            } => {
                let secs =
                    |a: Option<std::time::Instant>, b: Option<std::time::Instant>| match (a, b) {
                        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
                        _ => 0.0,
                    };
                let start = timings.first_scheduled.or(Some(timings.arrival));
                return Ok(GenerationOutput {
                    text,
                    tokens,
                    finish_reason: if cancelled {
                        FinishReason::Cancelled
                    } else {
                        reason
                    },
                    stats: GenerationStats {
                        prompt_tokens: usage.prompt_tokens,
                        prompt_secs: secs(start, timings.first_token),
                        generated_tokens: usage.completion_tokens,
                        decode_secs: secs(timings.first_token, timings.finished),
                    },
                });
            }
            Event::Error(msg) => return Err(EngineError::Model(msg)),
        }
    }
    Err(EngineError::Model(
        "the engine stopped before the request finished".into(),
    ))
}
