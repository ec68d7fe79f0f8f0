//! Deterministic random INT4 tensors and f16 / bf16 activations for tests and
//! benchmarks (a tiny xorshift generator: no dependency, same data on every
//! machine for a given seed).

use half::{bf16, f16};
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

/// Random bf16 activations: the same values as [`random_activations`]
/// before rounding (the f32 draws of the same seed), rounded to bf16.
pub fn random_activations_bf16(m: usize, k: usize, seed: u64) -> Vec<bf16> {
    let mut rng = XorShift::new(seed);
    (0..m * k)
        .map(|_| bf16::from_f32(2.0 * rng.next_f32() - 1.0))
        .collect()
}

/// splitmix64's finaliser: the hash of `w4_random_words` /
/// `w4_random_scales` in kernels/w4a16_gemm.cu.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Seed of the device fill for a user seed (so that seeds 0, 1, 2 give
/// unrelated streams).
pub fn fill_seed(seed: u64) -> u64 {
    mix64(seed ^ 0x6D61_726C_696E)
}

/// f16 bits of the scale of (row, group) in the device fill: exponent field
/// 6 + h % 3 (binades 2^-9 .. 2^-7), 10 random mantissa bits.
pub fn hashed_scale_bits(seed: u64, row: usize, groups: usize, group: usize) -> u16 {
    let h = mix64((fill_seed(seed) ^ 0x5C_A1E5).wrapping_add((row * groups + group) as u64));
    (((6 + h % 3) << 10) | ((h >> 8) & 0x3FF)) as u16
}

/// The symmetric INT4 tensor that `Int4Weight::random_on_device` generates
/// on the GPU, built on the host (raw code of (row, col) =
/// mix64(seed' + row*K + col) & 15). `group_size == 0` means per-channel.
pub fn hashed_int4(n: usize, k: usize, group_size: usize, seed: u64) -> QuantTensor {
    let s = fill_seed(seed);
    let (granularity, groups) = if group_size == 0 {
        (Granularity::PerChannel, 1)
    } else {
        (Granularity::PerGroup { group_size }, k.div_ceil(group_size))
    };
    let row_bytes = k.div_ceil(2);
    let mut data = vec![0u8; n * row_bytes];
    for r in 0..n {
        for c in 0..k {
            let raw = (mix64(s.wrapping_add((r * k + c) as u64)) & 15) as u8;
            data[r * row_bytes + c / 2] |= raw << (4 * (c % 2));
        }
    }
    let scales = (0..n * groups)
        .map(|i| f16::from_bits(hashed_scale_bits(seed, i / groups, groups, i % groups)).to_f32())
        .collect();
    QuantTensor {
        scheme: QuantScheme::int_sym(4, granularity, ScaleDType::F16),
        rows: n,
        cols: k,
        data,
        scales,
        zeros: None,
        global_scale: 1.0,
        g_idx: None,
    }
}
