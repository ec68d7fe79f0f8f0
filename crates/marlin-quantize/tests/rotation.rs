//! The block Hadamard rotation: orthogonality, output invariance, Hessian
//! rotation, padding.

mod common;

use common::Gaussian;
use marlin_quantize::{HessianAccumulator, Rotation};

fn matmul_t(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
    // (rows, K) x (N, K)ᵀ in f64.
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            y[r * n + o] = (0..k)
                .map(|c| f64::from(x[r * k + c]) * f64::from(w[o * k + c]))
                .sum();
        }
    }
    y
}

#[test]
fn rotation_is_orthogonal_and_involutory() {
    for block in [1, 2, 16, 64] {
        let rot = Rotation::new(64, block).unwrap();
        // Rows of the identity rotate into the rows of R.
        let mut eye = vec![0.0f32; 64 * 64];
        for i in 0..64 {
            eye[i * 64 + i] = 1.0;
        }
        let r = rot.rotate_rows(&eye, 64).unwrap(); // (64, 64) = Rᵀ = R
        for i in 0..64 {
            for j in 0..64 {
                let dot: f32 = (0..64).map(|c| r[i * 64 + c] * r[j * 64 + c]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (dot - expected).abs() < 1e-5,
                    "block {block} ({i},{j}) = {dot}"
                );
                assert_eq!(r[i * 64 + j], r[j * 64 + i], "R is symmetric");
            }
        }
        let back = rot.unrotate_rows(&r, 64).unwrap();
        for (a, b) in back.iter().zip(&eye) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}

#[test]
fn outputs_are_unchanged() {
    let mut g = Gaussian::new(3);
    // K = 96 with blocks of 32 (no padding) and K = 100 with blocks of 64
    // (padded to 128).
    for (k, block) in [(96, 32), (100, 64), (7, 4)] {
        let (rows, n) = (5, 3);
        let x = g.vec(rows * k);
        let w = g.vec(n * k);
        let rot = Rotation::new(k, block).unwrap();
        let xr = rot.rotate_rows(&x, rows).unwrap();
        let wr = rot.rotate_rows(&w, n).unwrap();
        let y = matmul_t(&x, rows, &w, n, k);
        let yr = matmul_t(&xr, rows, &wr, n, rot.padded_k);
        for (a, b) in y.iter().zip(&yr) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                "K={k} block={block}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn rotated_hessian_is_hessian_of_rotated_inputs() {
    let mut g = Gaussian::new(4);
    for (k, block) in [(64, 16), (40, 16)] {
        let rows = 50;
        let x = g.vec(rows * k);
        let rot = Rotation::new(k, block).unwrap();
        let mut acc = HessianAccumulator::new(k).unwrap();
        acc.add_batch(&x, rows).unwrap();
        let hr = rot.rotate_hessian(&acc.finish().unwrap()).unwrap();
        let mut acc_r = HessianAccumulator::new(rot.padded_k).unwrap();
        acc_r
            .add_batch(&rot.rotate_rows(&x, rows).unwrap(), rows)
            .unwrap();
        let direct = acc_r.finish().unwrap();
        assert_eq!(hr.k(), rot.padded_k);
        for (a, b) in hr.as_slice().iter().zip(direct.as_slice()) {
            assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}
