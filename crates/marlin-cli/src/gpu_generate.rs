//! `marlin run --device cuda` with the token choice on the GPU: when the
//! sampling parameters are ones the device sampler implements, each step
//! brings 4 bytes back (the chosen id) instead of the vocabulary's logits,
//! and the captured decode graph ends with the choice.

use std::time::Instant;

use marlin_cuda::ops::{DeviceSampling, MAX_TOP_K};
use marlin_engine::stop::StopMatcher;
use marlin_engine::{
    Detokenizer, FinishReason, GenerationOutput, GenerationRequest, GenerationStats,
    SamplingParams, SequenceModel,
};
use marlin_models::gpu::GpuSequence;

/// The device sampler's parameters for `p`, or `None` when only the host
/// sampler gives `p`'s distribution: penalties (they need the history),
/// min-p, and top-k off or above [`MAX_TOP_K`] (the device keeps at most
/// that many candidates). Greedy (temperature 0) is always on the device.
pub fn device_sampling(p: &SamplingParams) -> Option<DeviceSampling> {
    let penalties =
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
    if penalties {
        return None;
    }
    if p.temperature == 0.0 {
        return Some(DeviceSampling {
            temperature: 0.0,
            top_k: 1,
            top_p: 1.0,
        });
    }
    if p.min_p > 0.0 || p.top_k == 0 || p.top_k > MAX_TOP_K {
        return None;
    }
    Some(DeviceSampling {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
    })
}

/// SplitMix64: the uniforms the device sampler draws with, seeded by
/// `--seed` (same seed, same output) or the clock.
struct Uniforms(u64);

impl Uniforms {
    fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        });
        Self(seed)
    }

    /// A uniform in [0, 1) (24 random bits: exact in f32).
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
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
    let mut uniforms = Uniforms::new(req.sampling.seed);
    let mut pick = |seq: &mut GpuSequence<'_>, tokens: &[u32]| -> anyhow::Result<u32> {
        Ok(if choice.temperature <= 0.0 {
            seq.greedy(tokens)?
        } else {
            seq.sample(tokens, choice, uniforms.next())?
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
    fn device_sampling_only_where_it_gives_the_same_distribution() {
        let greedy = SamplingParams::greedy();
        assert_eq!(device_sampling(&greedy).map(|d| d.temperature), Some(0.0));
        // The CLI defaults have min-p 0.05: host.
        assert!(device_sampling(&SamplingParams::default()).is_none());
        let plain = SamplingParams {
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let d = device_sampling(&plain).expect("top-k 40, top-p 0.95");
        assert_eq!((d.top_k, d.top_p, d.temperature), (40, 0.95, 0.8));
        for p in [
            SamplingParams {
                top_k: 0,
                ..plain.clone()
            },
            SamplingParams {
                top_k: MAX_TOP_K + 1,
                ..plain.clone()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..greedy.clone()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..plain.clone()
            },
        ] {
            assert!(device_sampling(&p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn uniforms_are_in_range_and_seeded() {
        let (mut a, mut b) = (Uniforms::new(Some(7)), Uniforms::new(Some(7)));
        for _ in 0..1000 {
            let u = a.next();
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u, b.next());
        }
        assert_ne!(Uniforms::new(Some(8)).next(), Uniforms::new(Some(7)).next());
    }
}
