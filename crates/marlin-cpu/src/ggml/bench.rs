//! Benchmark of the ggml kernels on the two demo models' matmul shapes,
//! with random weights of the models' types (the kernels' speed does not
//! depend on the values). Ignored by default; run with
//!
//! ```text
//! cargo test --release -p marlin-cpu --lib ggml::bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Every layer gets its own weights, as in the model, so the weights come
//! from DRAM, not from cache. Reported: per shape GB/s of weight bytes
//! (m = 1) and GFLOP/s (m = 64), the matmul time per token of a whole
//! model, and a read bandwidth measured in the same run.

use super::tests::random_tensor;
use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use std::time::Instant;

/// (name, type, K, N, copies: layers that have this matrix)
type Shape = (&'static str, GgmlType, usize, usize, usize);

const SMOLLM2: &[Shape] = &[
    ("attn_q", GgmlType::Q4_1, 576, 576, 30),
    ("attn_k", GgmlType::Q4_1, 576, 192, 30),
    ("attn_v", GgmlType::Q4_1, 576, 192, 30),
    ("attn_output", GgmlType::Q4_1, 576, 576, 30),
    ("ffn_gate", GgmlType::Q4_1, 576, 1536, 30),
    ("ffn_up", GgmlType::Q4_1, 576, 1536, 30),
    ("ffn_down", GgmlType::Q4_1, 1536, 576, 30),
    ("output (tied token_embd)", GgmlType::Q8_0, 576, 49152, 1),
];

const GEMMA3: &[Shape] = &[
    ("attn_q", GgmlType::Q5_0, 640, 1024, 18),
    ("attn_k", GgmlType::Q5_0, 640, 256, 18),
    ("attn_v q5_0", GgmlType::Q5_0, 640, 256, 9),
    ("attn_v q8_0", GgmlType::Q8_0, 640, 256, 9),
    ("attn_output", GgmlType::Q4K, 1024, 640, 18),
    ("ffn_gate", GgmlType::Q5_0, 640, 2048, 18),
    ("ffn_up", GgmlType::Q5_0, 640, 2048, 18),
    ("ffn_down q4_k", GgmlType::Q4K, 2048, 640, 9),
    ("ffn_down q6_k", GgmlType::Q6K, 2048, 640, 9),
    ("output (tied token_embd)", GgmlType::Q8_0, 640, 262144, 1),
];

/// GB/s of a parallel read of a buffer much larger than the caches.
fn read_bandwidth() -> f64 {
    let buf = vec![1u64; 256 << 17]; // 256 MiB
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best / 1e9
}

/// Runs every matrix of the model once per "token" (m rows) and reports
/// per-shape and total times: the best of `reps` passes, since on a shared
/// machine the slower passes measure the other tenants.
fn bench_model(name: &str, shapes: &[Shape], m: usize, reps: usize) -> f64 {
    let mut rng = StdRng::seed_from_u64(1);
    let mats: Vec<Vec<PreparedGgml>> = shapes
        .iter()
        .map(|&(_, ty, k, n, copies)| {
            (0..copies)
                .map(|_| PreparedGgml::new(random_tensor(&mut rng, ty, n, k)).unwrap())
                .collect()
        })
        .collect();
    let max_k = shapes.iter().map(|s| s.2).max().unwrap_or(0);
    let max_n = shapes.iter().map(|s| s.3).max().unwrap_or(0);
    let x: Vec<f32> = (0..m * max_k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0f32; m * max_n];
    let mut times = vec![vec![0f64; reps]; shapes.len()]; // (shape, rep) seconds
    for rep in 0..reps + 1 {
        for (si, (&(_, _, k, n, _), ms)) in shapes.iter().zip(&mats).enumerate() {
            let t = Instant::now();
            for w in ms {
                w.matmul(&x[..m * k], m, &mut y[..m * n]).unwrap();
            }
            if rep > 0 {
                times[si][rep - 1] = t.elapsed().as_secs_f64();
            }
        }
    }
    let best = |v: &mut Vec<f64>| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{name}, m = {m}:");
    let mut total = 0.0;
    for ((&(sname, ty, k, n, copies), ms), t) in shapes.iter().zip(&mats).zip(&mut times) {
        let t = best(t);
        total += t;
        let bytes = (ms[0].weight_bytes() * copies) as f64;
        let flops = 2.0 * (m * k * n * copies) as f64;
        println!(
            "  {sname:<26} {:>5} K={k:<5} N={n:<6} x{copies:<3} {:>8.1} us/call  {:>6.2} GB/s  {:>6.1} GFLOP/s",
            ty.name(),
            t / copies as f64 * 1e6,
            bytes / t / 1e9,
            flops / t / 1e9
        );
    }
    println!(
        "  all matmuls of one forward: {:.2} ms -> {:.1} forwards/s, {:.1} tok/s",
        total * 1e3,
        1.0 / total,
        m as f64 / total
    );
    total
}

/// One thread, one cache-resident matrix per type (256 rows, K = 2048):
/// the kernels' own speed, without DRAM, threads or other tenants (best
/// of many calls).
fn bench_kernels_in_cache() {
    let mut rng = StdRng::seed_from_u64(2);
    let (n, k) = (256, 2048);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!("one thread, {n}x{k} weights in cache, best of 200 calls:");
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Mxfp4,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5K,
        GgmlType::F32,
    ] {
        let w = PreparedGgml::new(random_tensor(&mut rng, ty, n, k)).unwrap();
        let mut line = format!("  {:>5}", ty.name());
        for m in [1, 4, 16] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0f32; m * n];
            let mut t_best = f64::INFINITY;
            pool.install(|| {
                for _ in 0..200 {
                    let t = Instant::now();
                    w.matmul(&x, m, &mut y).unwrap();
                    t_best = t_best.min(t.elapsed().as_secs_f64());
                }
            });
            line += &format!(
                "  m={m:<2} {:>6.1} us {:>6.2} GB/s {:>6.1} GOP/s",
                t_best * 1e6,
                w.weight_bytes() as f64 / t_best / 1e9,
                2.0 * (m * n * k) as f64 / t_best / 1e9
            );
        }
        println!("{line}");
    }
}

#[test]
#[ignore]
fn bench_ggml_models() {
    bench_kernels_in_cache();
    println!(
        "kernels: {}, threads: {}, read bandwidth: {:.2} GB/s",
        best_kernels().name,
        rayon::current_num_threads(),
        read_bandwidth()
    );
    for m in [1, 64] {
        let reps = if m == 1 { 21 } else { 5 };
        bench_model("SmolLM2-135M Q4_1", SMOLLM2, m, reps);
        bench_model("Gemma3-270M Q4_K_M", GEMMA3, m, reps);
    }
}
