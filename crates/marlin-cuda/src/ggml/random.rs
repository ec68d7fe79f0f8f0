//! Random ggml tensors for tests and benchmarks: random code bytes with
//! valid, finite f16 scales (deterministic for a seed).

use half::{bf16, f16};
use marlin_quant::{GgmlTensor, GgmlType};

use crate::error::{CudaError, Result};
use crate::int4::random::XorShift;

/// Byte offsets of the f16 scale fields of a block, and whether each is a
/// scale (positive, 1e-3..2e-2) or a min/offset (-0.2..0).
fn f16_fields(ty: GgmlType) -> &'static [(usize, bool)] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[(0, true)],
        Q4_1 | Q5_1 => &[(0, true), (2, false)],
        // dmin multiplies a non-negative 6-bit min that is subtracted.
        Q4K | Q5K => &[(0, true), (2, true)],
        Q6K => &[(208, true)],
        _ => &[],
    }
}

/// A (rows, cols) tensor of type `ty` with random contents.
pub fn random_ggml_tensor(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Result<GgmlTensor> {
    let mut rng = XorShift::new(seed);
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| CudaError::Shape(format!("{rows}x{cols} overflows")))?;
    let data: Vec<u8> = match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| (rng.next_f32() * 0.2 - 0.1).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.next_f32() * 0.2 - 0.1).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.next_f32() * 0.2 - 0.1).to_le_bytes())
            .collect(),
        _ => {
            let bytes = ty
                .row_bytes(cols)
                .ok()
                .and_then(|rb| rb.checked_mul(rows))
                .ok_or_else(|| {
                    CudaError::Shape(format!("{} needs whole blocks, got {cols}", ty.name()))
                })?;
            let mut data: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
            for blk in data.chunks_exact_mut(ty.type_size()) {
                for &(off, is_scale) in f16_fields(ty) {
                    let u = rng.next_f32();
                    let v = if is_scale {
                        1e-3 + 1.9e-2 * u
                    } else {
                        -0.2 * u
                    };
                    blk[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            data
        }
    };
    GgmlTensor::new(ty, rows, cols, data).map_err(|e| CudaError::Shape(e.to_string()))
}

/// Activations (m, k): uniform in [-1, 1) with every 37th value 8x larger
/// (outliers, as real activations have).
pub fn random_activations_f32(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    (0..m * k)
        .map(|i| {
            let v = 2.0 * rng.next_f32() - 1.0;
            if i % 37 == 5 {
                8.0 * v
            } else {
                v
            }
        })
        .collect()
}
