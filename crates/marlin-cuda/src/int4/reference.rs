//! Scalar references for the INT4 GEMM: dequantize a KMajorDense INT4
//! [`QuantTensor`] to f64, multiply in f64, and decode the packed layout back
//! (checks the repack without a GPU). Kept simple on purpose.

use half::f16;
use marlin_quant::{ElementType, Granularity, QuantTensor};

use super::pack::{nibble_position, word_index, Int4Packed, K_CHUNK};

/// Dequantize an INT4 KMajorDense tensor to f64, row-major (N, K):
/// value = global_scale * scale * (code - zero). Returns None for schemes
/// the INT4 kernel does not take (the caller's pack step reports why).
pub fn dequantize_int4_ref(w: &QuantTensor) -> Option<Vec<f64>> {
    let ElementType::Int { bits: 4, signed } = w.scheme.element else {
        return None;
    };
    let (n, k) = (w.rows, w.cols);
    let row_bytes = k.div_ceil(2);
    let group = match w.scheme.granularity {
        Granularity::PerChannel => k,
        Granularity::PerGroup { group_size } if group_size > 0 => group_size,
        _ => return None,
    };
    let groups = k.div_ceil(group);
    let mut out = vec![0f64; n * k];
    for r in 0..n {
        for c in 0..k {
            let byte = *w.data.get(r * row_bytes + c / 2)?;
            let nib = if c.is_multiple_of(2) {
                byte & 0xF
            } else {
                byte >> 4
            };
            let code = if signed {
                f64::from(((nib << 4) as i8) >> 4)
            } else {
                f64::from(nib)
            };
            let gi = r * groups + c / group;
            let scale = f64::from(*w.scales.get(gi)?);
            let zero = match &w.zeros {
                Some(z) => f64::from(*z.get(gi)?),
                None => 0.0,
            };
            out[r * k + c] = f64::from(w.global_scale) * scale * (code - zero);
        }
    }
    Some(out)
}

/// C (M, N) = A (M, K) . W^T with W (N, K), all f64.
pub fn matmul_ref(a: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|x| a[i * k + x] * w[j * k + x]).sum();
        }
    }
    c
}

/// Decode a packed weight back to the f32 values the kernel's dequant
/// produces ((u * scale) + neg_zero_scale, in f32 instead of f16), (N, K).
/// Follows the kernel's index arithmetic, so it checks the repack against the
/// fragment mapping without a GPU.
pub fn unpack_int4_ref(p: &Int4Packed) -> Vec<f32> {
    let nb_count = p.n_pad / 16;
    let k_chunks = p.k_pad / K_CHUNK;
    let mut out = vec![0f32; p.n * p.k];
    for nb in 0..nb_count {
        for c in 0..k_chunks {
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                // The lane's 16 indices k = c*64 + 16t .. lie in one group
                // (groups are 32 or a multiple of 64).
                let gi = p.group_of(c * K_CHUNK + 16 * t);
                let at = (gi * nb_count + nb) * 8 + g;
                let s = p.scales[at];
                for j in 0..4 {
                    let word = p.words[word_index(nb, c, lane, k_chunks) * 4 + j];
                    for half in 0..2 {
                        let col_n = nb * 16 + 8 * half + g;
                        let scale = f16::from_bits((s >> (16 * half)) as u16).to_f32();
                        let nzs = match &p.neg_zero_scales {
                            Some(z) => f16::from_bits((z[at] >> (16 * half)) as u16).to_f32(),
                            None => -8.0 * scale,
                        };
                        for slot in 0..4 {
                            let kk = c * K_CHUNK + 16 * t + 4 * j + slot;
                            if col_n < p.n && kk < p.k {
                                let u = (word >> (4 * nibble_position(slot, half))) & 0xF;
                                out[col_n * p.k + kk] = u as f32 * scale + nzs;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}
