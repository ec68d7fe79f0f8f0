//! Host decode of a [`WxPacked`] weight with the kernel's index arithmetic
//! and number conversions (checks the repack against
//! `QuantTensor::dequantize` without a GPU).

use half::f16;
use marlin_quant::formats::{e2m1_to_f32, e4m3_to_f32};

use super::pack::{code_bit_position, code_bits, scale16_index, word_index, WxFormat, WxPacked};
use crate::int4::pack::K_CHUNK;

/// The (N, K) weight values the kernel multiplies, as f64: FP4 codes times
/// the f16 scale (2^-14 folded back) times the per-tensor factor; 8-bit codes
/// times their fp32 group scale.
pub fn unpack_wx_ref(p: &WxPacked) -> Vec<f64> {
    let k_chunks = p.k_chunks();
    let mut out = vec![0f64; p.n * p.k];
    for col in 0..p.n {
        let (nb, half, g) = (col / 16, (col % 16) / 8, col % 8);
        for kk in 0..p.k {
            let (c, within) = (kk / K_CHUNK, kk % K_CHUNK);
            let (t, j, slot) = (within / 16, (within % 16) / 4, within % 4);
            let lane = 4 * g + t;
            let mut code = 0u32;
            for b in 0..code_bits(p.format) {
                let (word, pos) = code_bit_position(p.format, j, half, slot, b);
                let w = p.words[word_index(p.format, nb, c, lane, word, k_chunks)];
                code |= ((w >> pos) & 1) << b;
            }
            let group = c / p.group_chunks;
            out[col * p.k + kk] = match p.format {
                WxFormat::Fp4 => {
                    let col_scale = f64::from(p.scales32[group * p.n_pad + col]);
                    let s = p.scales16[scale16_index(nb, c, lane, k_chunks)] >> (16 * half);
                    let s = f64::from(f16::from_bits(s as u16).to_f32());
                    f64::from(e2m1_to_f32(code as u8)) * s / 16384.0 * col_scale
                }
                WxFormat::Int8 => {
                    f64::from(code as i32 - 128) * f64::from(p.scales32[group * p.n_pad + col])
                }
                WxFormat::Fp8 => {
                    f64::from(e4m3_to_f32(code as u8))
                        * f64::from(p.scales32[group * p.n_pad + col])
                }
                WxFormat::Int3 | WxFormat::Int2 => {
                    let sz = p.scale_zero[group * p.n_pad + col];
                    let s = f64::from(f16::from_bits(sz as u16).to_f32());
                    (f64::from(code) - f64::from(sz >> 16)) * s
                }
            };
        }
    }
    out
}
