//! Synthetic layers with the structure of LLM linear layers: correlated
//! activations (x = z·A + noise, uneven channel scales) with a few outlier
//! channels, and Gaussian weights with a few large input columns.

#![allow(dead_code)]

use marlin_quantize::{Hessian, HessianAccumulator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Gaussian(StdRng);

impl Gaussian {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// A standard normal sample (Box-Muller).
    pub fn sample(&mut self) -> f32 {
        let u1: f64 = self.0.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.0.gen();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.sample()).collect()
    }

    pub fn index(&mut self, bound: usize) -> usize {
        self.0.gen_range(0..bound)
    }
}

/// How much outlier structure a synthetic layer has.
#[derive(Clone, Copy, Debug)]
pub struct Structure {
    /// Input channels whose activations are `outlier_gain` x larger.
    pub outlier_channels: usize,
    pub outlier_gain: f32,
    /// Weight columns `large_column_gain` x larger.
    pub large_columns: usize,
    pub large_column_gain: f32,
}

impl Structure {
    pub const MILD: Structure = Structure {
        outlier_channels: 2,
        outlier_gain: 4.0,
        large_columns: 2,
        large_column_gain: 3.0,
    };
    pub const OUTLIERS: Structure = Structure {
        outlier_channels: 6,
        outlier_gain: 25.0,
        large_columns: 4,
        large_column_gain: 6.0,
    };
}

pub struct Layer {
    pub n: usize,
    pub k: usize,
    /// (N, K)
    pub w: Vec<f32>,
    /// (calib_rows, K)
    pub x_calib: Vec<f32>,
    pub calib_rows: usize,
    /// (test_rows, K), held out from calibration.
    pub x_test: Vec<f32>,
    pub test_rows: usize,
}

impl Layer {
    pub fn new(
        n: usize,
        k: usize,
        calib_rows: usize,
        test_rows: usize,
        structure: Structure,
        seed: u64,
    ) -> Self {
        let mut g = Gaussian::new(seed);
        let latent = k / 4;
        // Mixing matrix A (latent, K) and uneven per-channel gains.
        let mix = g.vec(latent * k);
        let mut gain: Vec<f32> = (0..k).map(|_| (0.5 * g.sample()).exp()).collect();
        for _ in 0..structure.outlier_channels {
            let c = g.index(k);
            gain[c] = structure.outlier_gain;
        }
        let mut activations = |rows: usize| -> Vec<f32> {
            let mut x = vec![0.0f32; rows * k];
            for row in x.chunks_exact_mut(k) {
                let z = g.vec(latent);
                for (c, v) in row.iter_mut().enumerate() {
                    let mixed: f32 = (0..latent).map(|l| z[l] * mix[l * k + c]).sum::<f32>()
                        / (latent as f32).sqrt();
                    *v = gain[c] * (mixed + 0.3 * g.sample());
                }
            }
            x
        };
        let x_calib = activations(calib_rows);
        let x_test = activations(test_rows);
        let mut w: Vec<f32> = g.vec(n * k).iter().map(|v| v * 0.02).collect();
        for _ in 0..structure.large_columns {
            let c = g.index(k);
            for r in 0..n {
                w[r * k + c] *= structure.large_column_gain;
            }
        }
        Self {
            n,
            k,
            w,
            x_calib,
            calib_rows,
            x_test,
            test_rows,
        }
    }

    pub fn hessian(&self) -> Hessian {
        let mut acc = HessianAccumulator::new(self.k).unwrap();
        // Two batches, as a calibration loop would add them.
        let half = self.calib_rows / 2;
        acc.add_batch(&self.x_calib[..half * self.k], half).unwrap();
        acc.add_batch(&self.x_calib[half * self.k..], self.calib_rows - half)
            .unwrap();
        acc.finish().unwrap()
    }

    /// Output error on the held-out rows, relative to ||x·Wᵀ||².
    pub fn relative_error(&self, w_hat: &[f32]) -> f64 {
        let err = marlin_quantize::output_error(
            &self.x_test,
            self.test_rows,
            &self.w,
            w_hat,
            self.n,
            self.k,
        )
        .unwrap();
        let zero = vec![0.0f32; self.w.len()];
        let norm = marlin_quantize::output_error(
            &self.x_test,
            self.test_rows,
            &self.w,
            &zero,
            self.n,
            self.k,
        )
        .unwrap();
        err / norm
    }
}
