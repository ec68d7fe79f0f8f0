//! The GPU block-Hadamard rotation (`marlin_cuda::hadamard`, MR-GPTQ's
//! online rotation) against the transform by its definition (f64, entry
//! (i, j) of H_b = (-1)^popcount(i & j) / sqrt(b)), which the CPU transform
//! `marlin_models::layers::hadamard::rotate_rows` is tested against too.
//! Fresh random inputs (seed printed), NaN-poisoned outputs longer than
//! needed (the tail must stay NaN). Without a GPU the test prints why and
//! passes.
#![cfg(feature = "cuda")]

use marlin_cuda::{hadamard, CudaDevice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SLACK: usize = 5;

fn reference(x: &[f32], k: usize, block: usize) -> Vec<f64> {
    let padded_k = k.div_ceil(block) * block;
    let mut out = Vec::new();
    for row in x.chunks_exact(k) {
        let mut p: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        p.resize(padded_k, 0.0);
        for blk in p.chunks_exact(block) {
            for i in 0..block {
                let s: f64 = (0..block)
                    .map(|j| {
                        if (i & j).count_ones() % 2 == 0 {
                            blk[j]
                        } else {
                            -blk[j]
                        }
                    })
                    .sum();
                out.push(s / (block as f64).sqrt());
            }
        }
    }
    out
}

#[test]
fn gpu_rotation_matches_the_definition() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIP: no usable CUDA device ({e})");
            return;
        }
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("gpu_hadamard: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // SmolLM2 (576 in blocks of 64, 1536 in 128), Gemma 3 (640 / 128), a
    // padded K, the largest block, and the identity (block 1).
    for (rows, k, block) in [
        (1usize, 576usize, 64usize),
        (9, 1536, 128),
        (4, 640, 128),
        (3, 100, 32),
        (2, 2048, 1024),
        (3, 5, 1),
    ] {
        let x: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-4.0..4.0)).collect();
        let padded_k = k.div_ceil(block) * block;
        let xd = dev.upload("x", &x).unwrap();
        let mut out = dev
            .upload("out", &vec![f32::NAN; rows * padded_k + SLACK])
            .unwrap();
        let got_k = hadamard::rotate_rows(&dev, &xd, rows, k, block, &mut out).unwrap();
        assert_eq!(got_k, padded_k);
        let got = dev.download(&out).unwrap();
        let want = reference(&x, k, block);
        let mut worst = 0.0f64;
        for (g, w) in got.iter().zip(&want) {
            let err = (f64::from(*g) - w).abs();
            worst = worst.max(err);
            // f32 sums of `block` terms of |x| <= 4: a few ulps of 4·sqrt(b).
            assert!(
                err <= 1e-5 * 4.0 * (block as f64).sqrt() + 1e-6,
                "{rows}x{k}/{block}: {g} vs {w}"
            );
        }
        assert!(
            got[rows * padded_k..].iter().all(|v| v.is_nan()),
            "tail written"
        );
        println!("rows {rows} k {k} block {block}: max |err| {worst:.2e}");
    }
    // Bad shapes are errors, not launches.
    let xd = dev.upload("x", &[0.0f32; 64]).unwrap();
    let mut out = dev.upload("out", &[0.0f32; 64]).unwrap();
    assert!(hadamard::rotate_rows(&dev, &xd, 1, 64, 48, &mut out).is_err());
    assert!(hadamard::rotate_rows(&dev, &xd, 1, 64, 2048, &mut out).is_err());
    assert!(hadamard::rotate_rows(&dev, &xd, 2, 64, 64, &mut out).is_err());

    // Cost beside the GEMM it precedes: 64 rows of SmolLM2's down_proj
    // input (1536 in blocks of 128), median of 50 synchronised launches.
    let (rows, k, block) = (64, 1536, 128);
    let x: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let xd = dev.upload("x", &x).unwrap();
    let mut out = dev.upload("out", &vec![0.0f32; rows * k]).unwrap();
    let mut times = Vec::new();
    for _ in 0..50 {
        dev.synchronize().unwrap();
        let t0 = std::time::Instant::now();
        hadamard::rotate_rows(&dev, &xd, rows, k, block, &mut out).unwrap();
        dev.synchronize().unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "rotate {rows} x {k} (blocks of {block}): median {:.1} us per launch incl. sync",
        times[times.len() / 2]
    );
}
