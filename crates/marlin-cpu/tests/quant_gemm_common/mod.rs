//! Test helpers: random `QuantTensor`s packed by the documented layout, and
//! an f64 reference product, written independently of the kernels.

#![allow(dead_code)]

use marlin_quant::{
    ElementType, Granularity, Layout, QuantScheme, QuantTensor, ScaleDType, ZeroPoint,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh seed per run, printed so that a failure can be replayed with
/// `MARLIN_TEST_SEED=<seed>`.
pub fn rng() -> (StdRng, u64) {
    let seed = std::env::var("MARLIN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    (StdRng::seed_from_u64(seed), seed)
}

pub fn scheme(
    element: ElementType,
    granularity: Granularity,
    scale_dtype: ScaleDType,
    zero_point: ZeroPoint,
) -> QuantScheme {
    QuantScheme {
        element,
        granularity,
        scale_dtype,
        zero_point,
        global_scale: false,
        layout: Layout::KMajorDense,
    }
}

pub fn bits_of(e: ElementType) -> usize {
    match e {
        ElementType::Int { bits, .. } => bits as usize,
        ElementType::Fp4E2M1 | ElementType::Nf4 => 4,
        _ => 8,
    }
}

/// Packs codes (N, K) little-endian, rows padded to whole bytes.
pub fn pack(codes: &[u8], n: usize, k: usize, bits: usize) -> Vec<u8> {
    let rb = (k * bits).div_ceil(8);
    let mut out = vec![0u8; n * rb];
    for r in 0..n {
        for j in 0..k {
            let c = u32::from(codes[r * k + j]);
            let bit = j * bits;
            let word = c << (bit % 8);
            out[r * rb + bit / 8] |= word as u8;
            if bit % 8 + bits > 8 {
                out[r * rb + bit / 8 + 1] |= (word >> 8) as u8;
            }
        }
    }
    out
}

const FP4: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
const NF4: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982467651367,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Value of a code, by the format definitions.
pub fn value(e: ElementType, c: u8) -> f64 {
    let minifloat = |c: u8, ebits: u32, mbits: u32, bias: i32| -> f64 {
        let sign = if c >> (ebits + mbits) & 1 == 1 {
            -1.0
        } else {
            1.0
        };
        let ex = i32::from((c >> mbits) & ((1 << ebits) - 1) as u8);
        let man = f64::from(c & ((1 << mbits) - 1) as u8) / f64::from(1u32 << mbits);
        if ex == 0 {
            sign * man * 2f64.powi(1 - bias)
        } else {
            sign * (1.0 + man) * 2f64.powi(ex - bias)
        }
    };
    match e {
        ElementType::Int { bits, signed } => {
            let v = i32::from(c);
            if signed && v >= 1 << (bits - 1) {
                f64::from(v - (1 << bits))
            } else {
                f64::from(v)
            }
        }
        ElementType::Fp4E2M1 => {
            let m = FP4[usize::from(c & 7)];
            if c & 8 != 0 {
                -m
            } else {
                m
            }
        }
        ElementType::Nf4 => NF4[usize::from(c & 15)],
        ElementType::Fp8E4M3 => minifloat(c, 4, 3, 7),
        ElementType::Fp8E5M2 => minifloat(c, 5, 2, 15),
    }
}

/// A random code that is not NaN / infinity.
fn random_code(rng: &mut StdRng, e: ElementType) -> u8 {
    let bits = bits_of(e);
    loop {
        let c = (rng.gen::<u32>() & ((1 << bits) - 1)) as u8;
        let bad = match e {
            ElementType::Fp8E4M3 => c & 0x7F == 0x7F,
            ElementType::Fp8E5M2 => c & 0x7C == 0x7C,
            _ => false,
        };
        if !bad {
            return c;
        }
    }
}

/// A random scale exactly representable in `dt`.
fn random_scale(rng: &mut StdRng, dt: ScaleDType) -> f32 {
    let s: f32 = rng.gen_range(0.002..0.05);
    match dt {
        ScaleDType::F32 => s,
        ScaleDType::F16 => half::f16::from_f32(s).to_f32(),
        ScaleDType::BF16 => half::bf16::from_f32(s).to_f32(),
        ScaleDType::E8M0 => 2f32.powi(rng.gen_range(-9..-3)),
        // E4M3 values in [1, 448): mantissa of 3 bits.
        ScaleDType::E4M3 => (8 + rng.gen_range(0..8)) as f32 * 2f32.powi(rng.gen_range(-3..5)),
    }
}

pub struct Case {
    pub t: QuantTensor,
    pub codes: Vec<u8>,
}

/// A random tensor of `s` with shape (n, k); `g_idx`: an act-order
/// permutation (regular groups) when `Some(true)`, random group per column
/// (irregular) when `Some(false)`.
pub fn random_tensor(
    rng: &mut StdRng,
    s: QuantScheme,
    n: usize,
    k: usize,
    g_idx: Option<bool>,
) -> Case {
    let bits = bits_of(s.element);
    let codes: Vec<u8> = (0..n * k).map(|_| random_code(rng, s.element)).collect();
    let (gr, gc) = match s.granularity {
        Granularity::PerTensor => (1, 1),
        Granularity::PerChannel => (n, 1),
        Granularity::PerGroup { group_size } => (n, k / group_size),
        Granularity::Block2d { rows, cols } => (n.div_ceil(rows), k.div_ceil(cols)),
    };
    let scales: Vec<f32> = (0..gr * gc)
        .map(|_| random_scale(rng, s.scale_dtype))
        .collect();
    let zeros = match s.zero_point {
        ZeroPoint::None => None,
        ZeroPoint::Int => {
            let max = 1u32 << bits;
            Some((0..gr * gc).map(|_| rng.gen_range(0..max) as f32).collect())
        }
        ZeroPoint::Float => Some(
            (0..gr * gc)
                .map(|_| half::f16::from_f32(rng.gen_range(-2.0f32..9.0)).to_f32())
                .collect(),
        ),
    };
    let g_idx = g_idx.map(|regular| {
        if regular {
            let Granularity::PerGroup { group_size } = s.granularity else {
                panic!("g_idx needs per-group scales");
            };
            let mut cols: Vec<u32> = (0..k as u32).map(|c| c / group_size as u32).collect();
            for i in (1..k).rev() {
                cols.swap(i, rng.gen_range(0..=i));
            }
            cols
        } else {
            (0..k).map(|_| rng.gen_range(0..gc as u32)).collect()
        }
    });
    let global_scale = if s.global_scale {
        rng.gen_range(0.5f32..2.0)
    } else {
        1.0
    };
    let t = QuantTensor {
        scheme: s,
        rows: n,
        cols: k,
        data: pack(&codes, n, k, bits),
        scales,
        zeros,
        global_scale,
        g_idx,
    };
    Case { t, codes }
}

/// Dequantized W (N, K) in f64, from the codes and the scheme definition.
pub fn dequant_f64(c: &Case) -> Vec<f64> {
    let t = &c.t;
    let (n, k) = (t.rows, t.cols);
    let (rp, cp, gc) = match t.scheme.granularity {
        Granularity::PerTensor => (n, k, 1),
        Granularity::PerChannel => (1, k, 1),
        Granularity::PerGroup { group_size } => (1, group_size, k / group_size),
        Granularity::Block2d { rows, cols } => (rows, cols, k.div_ceil(cols)),
    };
    let mut w = vec![0f64; n * k];
    for r in 0..n {
        for j in 0..k {
            let g = match &t.g_idx {
                Some(gi) => gi[j] as usize,
                None => j / cp,
            };
            let idx = (r / rp) * gc + g;
            let z = t.zeros.as_ref().map_or(0.0, |z| f64::from(z[idx]));
            w[r * k + j] = f64::from(t.global_scale)
                * f64::from(t.scales[idx])
                * (value(t.scheme.element, c.codes[r * k + j]) - z);
        }
    }
    w
}

/// y (m, N) = x (m, K) · Wᵀ in f64.
pub fn matmul_f64(w: &[f64], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for mi in 0..m {
        for r in 0..n {
            y[mi * n + r] = (0..k)
                .map(|j| f64::from(x[mi * k + j]) * w[r * k + j])
                .sum();
        }
    }
    y
}

pub fn random_x(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}
