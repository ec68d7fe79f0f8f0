//! A Hadamard-rotated quantized linear (MR-GPTQ) on the CPU: `forward(x)`
//! must equal the same quantized weight applied to the rotated input, bit
//! for bit (same kernel, same input), for padded and unpadded K; and the
//! cost of the online rotation beside the product is printed (median of
//! alternated runs of the plain and the rotated linear, same process).

use marlin_io::checkpoint::ActivationRotation;
use marlin_models::layers::{hadamard, Linear};
use marlin_models::source::TensorData;
use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};
use std::time::Instant;

fn weights(n: usize, k: usize, scheme: QuantScheme) -> QuantTensor {
    let w: Vec<f32> = (0..n * k)
        .map(|i| (((i * 7919) % 1009) as f32 - 504.0) / 300.0)
        .collect();
    quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).unwrap()
}

fn input(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| (((i * 104_729) % 997) as f32 - 498.0) / 250.0)
        .collect()
}

#[test]
fn rotated_linear_is_the_product_with_the_rotated_input() {
    // (N, K, block): SmolLM2's down_proj (1536 in blocks of 128), its
    // q_proj (576 / 64), and a K that needs padding (100 -> 128).
    for (n, k, block) in [(576, 1536, 128), (576, 576, 64), (64, 100, 32)] {
        let rot = ActivationRotation::new(k, block).unwrap();
        let t = weights(n, rot.padded_k, QuantScheme::mxfp4());
        let plain = Linear::from_data("plain", TensorData::Quant(t.clone())).unwrap();
        let rotated = Linear::from_data(
            "rotated",
            TensorData::RotatedQuant {
                tensor: t,
                rotation: rot,
            },
        )
        .unwrap();
        assert_eq!((rotated.out_features(), rotated.in_features()), (n, k));
        for m in [1, 5] {
            let x = input(m, k);
            let mut xr = Vec::new();
            hadamard::rotate_rows(&rot, &x, m, &mut xr);
            let want = plain.forward(&xr, m).unwrap();
            let got = rotated.forward(&x, m).unwrap();
            assert_eq!(got, want, "n {n} k {k} block {block} m {m}");
        }
        // An input of the padded width is refused.
        assert!(rotated.forward(&input(1, rot.padded_k + 1), 1).is_err());
    }
    // A rotation that does not match the stored columns is refused.
    let bad = TensorData::RotatedQuant {
        tensor: weights(8, 64, QuantScheme::mxfp4()),
        rotation: ActivationRotation::new(100, 32).unwrap(),
    };
    assert!(Linear::from_data("bad", bad).is_err());
}

#[test]
fn online_rotation_cost() {
    let reps = 15;
    for (n, k, block) in [(576, 1536, 128), (1536, 576, 64)] {
        let rot = ActivationRotation::new(k, block).unwrap();
        let t = weights(n, k, QuantScheme::mxfp4());
        let plain = Linear::from_data("plain", TensorData::Quant(t.clone())).unwrap();
        let rotated = Linear::from_data(
            "rotated",
            TensorData::RotatedQuant {
                tensor: t,
                rotation: rot,
            },
        )
        .unwrap();
        for m in [1, 64] {
            let x = input(m, k);
            let (mut tp, mut tr, mut th) = (Vec::new(), Vec::new(), Vec::new());
            let mut buf = Vec::new();
            for _ in 0..reps {
                let t0 = Instant::now();
                std::hint::black_box(plain.forward(&x, m).unwrap());
                tp.push(t0.elapsed().as_secs_f64() * 1e6);
                let t0 = Instant::now();
                std::hint::black_box(rotated.forward(&x, m).unwrap());
                tr.push(t0.elapsed().as_secs_f64() * 1e6);
                let t0 = Instant::now();
                hadamard::rotate_rows(&rot, &x, m, &mut buf);
                std::hint::black_box(&buf);
                th.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (p, r, h) = (med(&mut tp), med(&mut tr), med(&mut th));
            println!(
                "MXFP4 {n}x{k} (blocks of {block}), m = {m}: plain {p:.1} us, rotated {r:.1} us, \
                 rotation alone {h:.1} us ({:.1} % of the plain product)",
                100.0 * h / p
            );
            // What was timed computed the same thing both ways.
            assert_eq!(
                rotated.forward(&x, m).unwrap(),
                plain.forward(&buf, m).unwrap()
            );
        }
    }
}
