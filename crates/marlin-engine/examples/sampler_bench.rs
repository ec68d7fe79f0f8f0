//! The host sampler's cost per token against the textbook way of computing
//! the same distribution (sort every candidate, softmax, cut, draw; what
//! PyTorch-based engines do with `torch.sort`), on Llama 3's and Gemma 3's
//! vocabulary sizes, measured in one run.
//!
//! cargo run --release -p marlin-engine --example sampler_bench

use marlin_engine::{Sampler, SamplingParams};
use std::time::Instant;

/// The definition by sorting (the peer): candidates by (logit desc, id asc),
/// top-k, softmax at temperature, min-p, top-p, one draw.
fn sort_based(logits: &[f32], p: &SamplingParams, u: f32, scratch: &mut Vec<(u32, f32)>) -> u32 {
    scratch.clear();
    scratch.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l)),
    );
    scratch.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        scratch.truncate(p.top_k);
    }
    let (max, inv_t) = (scratch[0].1, 1.0 / p.temperature);
    let mut z = 0.0f64;
    for c in scratch.iter_mut() {
        c.1 = ((c.1 - max) * inv_t).exp();
        z += f64::from(c.1);
    }
    scratch.retain(|c| c.1 >= p.min_p);
    let mut run = 0.0f64;
    let mut n = scratch.len();
    for (i, c) in scratch.iter().enumerate() {
        run += f64::from(c.1);
        if run >= f64::from(p.top_p) * z {
            n = i + 1;
            break;
        }
    }
    let total: f64 = scratch[..n].iter().map(|c| f64::from(c.1)).sum();
    let r = f64::from(u) * total;
    let mut run = 0.0f64;
    for c in &scratch[..n] {
        run += f64::from(c.1);
        if run >= r {
            return c.0;
        }
    }
    scratch[n - 1].0
}

struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms, variance 1).
    fn normal(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f32.sqrt()
    }
}

fn median_us(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() {
    let settings = [
        (
            "T 1 (OpenAI default)",
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..SamplingParams::default()
            },
        ),
        (
            "T 0.7, top-p 0.9",
            SamplingParams {
                temperature: 0.7,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..SamplingParams::default()
            },
        ),
        ("llama.cpp default", SamplingParams::default()),
    ];
    println!(
        "{:<8} {:<7} {:<22} {:>12} {:>12} {:>8}",
        "vocab", "logits", "parameters", "sampler us", "sort us", "speedup"
    );
    let mut g = Lcg(0x5eed);
    for vocab in [128_256usize, 262_144] {
        // "peaked": a language model's shape (a few tokens far above a
        // normal bulk); "flat": every token within 20 nats (the worst case
        // for the nucleus, which then spans most of the vocabulary).
        let peaked: Vec<f32> = (0..vocab)
            .map(|i| {
                if i % 9973 == 5 {
                    12.0 + g.unit() * 4.0
                } else {
                    2.5 * g.normal()
                }
            })
            .collect();
        let flat: Vec<f32> = (0..vocab).map(|_| g.unit() * 20.0 - 10.0).collect();
        for (shape, base) in [("peaked", &peaked), ("flat", &flat)] {
            for (name, p) in &settings {
                let mut sampler = Sampler::new(SamplingParams {
                    seed: Some(1),
                    ..p.clone()
                })
                .expect("valid parameters");
                let mut logits = base.clone();
                let ours = median_us(
                    || {
                        logits.copy_from_slice(base);
                        std::hint::black_box(sampler.sample(&mut logits).expect("finite"));
                    },
                    41,
                );
                let mut scratch = Vec::new();
                let mut u = 0.0f32;
                let peer = median_us(
                    || {
                        u = (u + 0.618_034) % 1.0;
                        std::hint::black_box(sort_based(base, p, u, &mut scratch));
                    },
                    11,
                );
                println!(
                    "{vocab:<8} {shape:<7} {name:<22} {ours:>12.1} {peer:>12.1} {:>7.1}x",
                    peer / ours
                );
            }
        }
    }
}
