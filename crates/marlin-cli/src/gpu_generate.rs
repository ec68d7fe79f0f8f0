//! `marlin run --device cuda` with the token choice on the GPU: when the
//! sampling parameters are ones the device sampler implements, each step
//! brings 4 bytes back (the chosen id) instead of the vocabulary's logits,
//! and the captured decode graph ends with the choice.

use std::time::Instant;

use marlin_cuda::ops::{DeviceSampling, MAX_TOP_K};
use marlin_engine::stop::StopMatcher;
use marlin_engine::{
    Detokenizer, FinishReason, GenerationOutput, GenerationRequest, GenerationStats, Sampler,
    SamplingParams, SequenceModel,
};
use marlin_models::gpu::GpuSequence;

/// The device sampler's parameters for `p`, or `None` when only the host
/// sampler gives `p`'s draw: penalties (they need the history) and a top-k
/// between [`MAX_TOP_K`] and the vocabulary (the device keeps at most that
/// many candidates below the whole vocabulary). Everything else, greedy
/// included, is the CPU sampler's definition on the device, bit for bit.
pub fn device_sampling(p: &SamplingParams, vocab: usize) -> Option<DeviceSampling> {
    let penalties =
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
    if penalties {
        return None;
    }
    if p.top_k > MAX_TOP_K && p.top_k < vocab {
        return None;
    }
    Some(DeviceSampling {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
    })
}

/// `marlin_engine::generate` with the choice on the device: the same
/// checks, stop tokens / strings, budget and streaming; the first token is
/// chosen by the prompt's last forward (its time counts as prompt time).
pub fn generate_on_device(
    seq: &mut GpuSequence<'_>,
    choice: DeviceSampling,
    detok: &mut dyn Detokenizer,
    req: &GenerationRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> anyhow::Result<GenerationOutput> {
    anyhow::ensure!(
        !req.prompt.is_empty(),
        "prompt: at least one token is required"
    );
    let limit = seq.max_seq_len();
    anyhow::ensure!(
        req.prompt.len() < limit,
        "prompt of {} tokens does not fit the context of {limit}",
        req.prompt.len()
    );
    let vocab = seq.vocab_size();
    if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        anyhow::bail!("prompt: token id {bad} is outside the vocabulary ({vocab})");
    }
    // The CPU sampler's RNG (seeded by --seed): one uniform per token, as
    // the host draw takes them, so a seed means the same draws on both.
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let mut pick = |seq: &mut GpuSequence<'_>, tokens: &[u32]| -> anyhow::Result<u32> {
        let u = sampler.next_uniform();
        Ok(if choice.temperature <= 0.0 {
            seq.greedy(tokens)?
        } else {
            seq.sample(tokens, choice, u)?
        })
    };
    let mut stops = StopMatcher::new(&req.stop_strings);

    let t0 = Instant::now();
    let chunks: Vec<&[u32]> = req.prompt.chunks(req.prefill_chunk.max(1)).collect();
    let (last, head) = chunks
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("empty prompt"))?;
    for piece in head {
        // Only the cache matters here; greedy brings back 4 bytes, not logits.
        seq.greedy(piece)?;
    }
    let mut next = pick(seq, last)?;
    let prompt_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let budget = req.max_tokens.min(limit - req.prompt.len());
    while tokens.len() < budget {
        if req.stop_tokens.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        tokens.push(next);
        let step = stops.push(&detok.push(next)?);
        if !step.emit.is_empty() {
            text.push_str(&step.emit);
            if !on_text(&step.emit) {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        if step.stopped {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() < budget {
            next = pick(seq, &[next])?;
        }
    }
    if finish != FinishReason::Cancelled && finish != FinishReason::Stop {
        let mut tail = stops.push(&detok.finish()?).emit;
        tail.push_str(&stops.finish());
        if !tail.is_empty() {
            text.push_str(&tail);
            on_text(&tail);
        }
    }
    Ok(GenerationOutput {
        text,
        finish_reason: finish,
        stats: GenerationStats {
            prompt_tokens: req.prompt.len(),
            prompt_secs,
            generated_tokens: tokens.len(),
            decode_secs: t1.elapsed().as_secs_f64(),
        },
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_sampling_except_penalties_and_wide_top_k() {
        let vocab = 32_000;
        let greedy = SamplingParams::greedy();
        assert_eq!(
            device_sampling(&greedy, vocab).map(|d| d.temperature),
            Some(0.0)
        );
        let d = device_sampling(&SamplingParams::default(), vocab).expect("CLI defaults");
        assert_eq!(
            (d.top_k, d.top_p, d.temperature, d.min_p),
            (40, 0.95, 0.8, 0.05)
        );
        let all = SamplingParams {
            top_k: 0,
            ..SamplingParams::default()
        };
        assert!(device_sampling(&all, vocab).is_some(), "top-k off");
        let past_vocab = SamplingParams {
            top_k: vocab,
            ..SamplingParams::default()
        };
        assert!(device_sampling(&past_vocab, vocab).is_some());
        for p in [
            SamplingParams {
                top_k: MAX_TOP_K + 1,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..greedy.clone()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..SamplingParams::default()
            },
        ] {
            assert!(device_sampling(&p, vocab).is_none(), "{p:?}");
        }
    }
}
