//! Random FP4 / INT8 / FP8 / INT3 / INT2 tensors for tests and benchmarks: random codes
//! and representable scales straight in `QuantTensor` form (no quantizer
//! run, fast enough for 235M-weight benchmark shapes).

use marlin_quant::{QuantScheme, QuantTensor};

use crate::int4::random::XorShift;

/// The benchmark's formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BenchFormat {
    /// OCP MXFP4: E2M1, E8M0 scale per 32.
    Mxfp4,
    /// NVFP4: E2M1, E4M3 scale per 16, f32 global scale.
    Nvfp4,
    /// INT8 symmetric, f32 scale per output channel.
    Int8,
    /// FP8 E4M3, f32 scale per output channel.
    Fp8,
    /// FP8 E4M3, f32 scale per 128 x 128 block.
    Fp8Block128,
    /// INT3 unsigned with integer zero points, f16 scale per 128 (GPTQ
    /// 3-bit style).
    Int3,
    /// INT2 unsigned with integer zero points, f16 scale per 64.
    Int2,
}

impl BenchFormat {
    pub fn scheme(self) -> QuantScheme {
        match self {
            BenchFormat::Mxfp4 => QuantScheme::mxfp4(),
            BenchFormat::Nvfp4 => QuantScheme::nvfp4(),
            BenchFormat::Int8 => QuantScheme::int8_per_channel(),
            BenchFormat::Fp8 => QuantScheme::fp8_e4m3_per_channel(),
            BenchFormat::Fp8Block128 => QuantScheme::fp8_e4m3_block128(),
            BenchFormat::Int3 => QuantScheme::int3_asym(128),
            BenchFormat::Int2 => QuantScheme::int2_asym(64),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchFormat::Mxfp4 => "mxfp4",
            BenchFormat::Nvfp4 => "nvfp4",
            BenchFormat::Int8 => "int8",
            BenchFormat::Fp8 => "fp8",
            BenchFormat::Fp8Block128 => "fp8b128",
            BenchFormat::Int3 => "int3",
            BenchFormat::Int2 => "int2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BenchFormat::Mxfp4,
            BenchFormat::Nvfp4,
            BenchFormat::Int8,
            BenchFormat::Fp8,
            BenchFormat::Fp8Block128,
            BenchFormat::Int3,
            BenchFormat::Int2,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }
}

/// A random (N, K) tensor of `format`: uniform random codes (FP8 NaN codes
/// replaced by 0), scales of magnitude ~1e-2 / max code exactly
/// representable in the scheme's scale dtype, random integer zero points for
/// INT3 / INT2. K must suit the scheme (a multiple of the group size for
/// MXFP4 / NVFP4 / INT3 / INT2).
pub fn random_wx(format: BenchFormat, n: usize, k: usize, seed: u64) -> QuantTensor {
    let scheme = format.scheme();
    let mut rng = XorShift::new(seed);
    let row_bytes = scheme.row_bytes(k).unwrap_or(0);
    let mut data: Vec<u8> = (0..n * row_bytes).map(|_| rng.next_u64() as u8).collect();
    // Padding bits at the end of a row must be zero.
    let used_bits = k * usize::from(scheme.element.bits()) % 8;
    if used_bits != 0 {
        for r in 0..n {
            data[r * row_bytes + row_bytes - 1] &= (1u8 << used_bits) - 1;
        }
    }
    match format {
        BenchFormat::Fp8 | BenchFormat::Fp8Block128 => {
            for b in data.iter_mut().filter(|b| **b & 0x7F == 0x7F) {
                *b = 0;
            }
        }
        _ => {}
    }
    let n_scales = scheme.num_scales(n, k).unwrap_or(0);
    let mut scales = Vec::with_capacity(n_scales);
    for _ in 0..n_scales {
        let u = rng.next_f32();
        scales.push(match format {
            // E8M0: powers of two 2^-10 .. 2^-6.
            BenchFormat::Mxfp4 => (-(6 + (rng.next_u64() % 5) as i32) as f32).exp2(),
            // E4M3 values in [1, 448) (the global scale brings them down).
            BenchFormat::Nvfp4 => {
                marlin_quant::formats::e4m3_to_f32(0x38 + (rng.next_u64() % (0x7E - 0x38)) as u8)
            }
            BenchFormat::Int8 => half::f16::from_f32(0.01 / 127.0 * (0.5 + u)).to_f32(),
            BenchFormat::Fp8 | BenchFormat::Fp8Block128 => {
                half::f16::from_f32(0.01 / 448.0 * (0.5 + u)).to_f32()
            }
            BenchFormat::Int3 => half::f16::from_f32(0.01 / 4.0 * (0.5 + u)).to_f32(),
            BenchFormat::Int2 => half::f16::from_f32(0.01 / 2.0 * (0.5 + u)).to_f32(),
        });
    }
    let zeros = match format {
        BenchFormat::Int3 | BenchFormat::Int2 => {
            let levels = 1u64 << scheme.element.bits();
            Some(
                (0..n_scales)
                    .map(|_| (rng.next_u64() % levels) as f32)
                    .collect(),
            )
        }
        _ => None,
    };
    QuantTensor {
        scheme,
        rows: n,
        cols: k,
        data,
        scales,
        zeros,
        global_scale: if format == BenchFormat::Nvfp4 {
            1.0 / (6.0 * 448.0)
        } else {
            1.0
        },
        g_idx: None,
    }
}
