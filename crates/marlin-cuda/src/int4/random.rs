//! Deterministic random INT4 tensors and f16 activations for tests and
//! benchmarks (a tiny xorshift generator: no dependency, same data on every
//! machine for a given seed).

use half::f16;
use marlin_quant::{
    ElementType, Granularity, Layout, QuantScheme, QuantTensor, ScaleDType, ZeroPoint,
};

/// xorshift64* generator.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A random INT4 (N, K) tensor with f16-exact scales: symmetric signed codes
/// (`asymmetric == false`) or unsigned codes with integer zero points.
/// `group_size == 0` means per-channel.
pub fn random_int4(
    n: usize,
    k: usize,
    group_size: usize,
    asymmetric: bool,
    seed: u64,
) -> QuantTensor {
    let mut rng = XorShift::new(seed);
    let granularity = if group_size == 0 {
        Granularity::PerChannel
    } else {
        Granularity::PerGroup { group_size }
    };
    let groups = if group_size == 0 {
        1
    } else {
        k.div_ceil(group_size)
    };
    let row_bytes = k.div_ceil(2);
    let mut data = vec![0u8; n * row_bytes];
    for byte in data.iter_mut() {
        *byte = rng.next_u64() as u8;
    }
    if !k.is_multiple_of(2) {
        // The unused high nibble of each row's last byte stays zero.
        for r in 0..n {
            data[r * row_bytes + row_bytes - 1] &= 0x0F;
        }
    }
    let scales: Vec<f32> = (0..n * groups)
        .map(|_| f16::from_f32(0.002 + 0.02 * rng.next_f32()).to_f32())
        .collect();
    let zeros = asymmetric.then(|| {
        (0..n * groups)
            .map(|_| (rng.next_u64() % 16) as f32)
            .collect()
    });
    QuantTensor {
        scheme: QuantScheme {
            element: ElementType::Int {
                bits: 4,
                signed: !asymmetric,
            },
            granularity,
            scale_dtype: ScaleDType::F16,
            zero_point: if asymmetric {
                ZeroPoint::Int
            } else {
                ZeroPoint::None
            },
            global_scale: false,
            layout: Layout::KMajorDense,
        },
        rows: n,
        cols: k,
        data,
        scales,
        zeros,
        global_scale: 1.0,
        g_idx: None,
    }
}

/// Random f16 activations in [-1, 1), row-major (M, K).
pub fn random_activations(m: usize, k: usize, seed: u64) -> Vec<f16> {
    let mut rng = XorShift::new(seed);
    (0..m * k)
        .map(|_| f16::from_f32(2.0 * rng.next_f32() - 1.0))
        .collect()
}
