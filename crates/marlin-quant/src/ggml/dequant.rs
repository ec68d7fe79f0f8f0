//! Reference dequantization of every ggml block type, bit-identical to
//! ggml's `dequantize_row_*` (ggml-quants.c) and to gguf-py's
//! `gguf.quants.dequantize`: each value is computed with the same f32
//! operations in the same order, with no fused multiply-add.

use super::blocks::*;
use super::GgmlType;
use crate::QuantError;

/// Q4_0 block -> 32 values.
pub fn dequant_q4_0(b: &BlockQ4_0, out: &mut [f32; 32]) {
    let d = b.d();
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1 block -> 32 values.
pub fn dequant_q4_1(b: &BlockQ4_1, out: &mut [f32; 32]) {
    let (d, m) = (b.d(), b.m());
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = (q & 0xF) as f32 * d + m;
        out[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0 block -> 32 values.
pub fn dequant_q5_0(b: &BlockQ5_0, out: &mut [f32; 32]) {
    let d = b.d();
    let qh = b.qh_bits();
    for (j, &q) in b.qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = (((q & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        out[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1 block -> 32 values.
pub fn dequant_q5_1(b: &BlockQ5_1, out: &mut [f32; 32]) {
    let (d, m) = (b.d(), b.m());
    let qh = b.qh_bits();
    for (j, &q) in b.qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = ((q & 0xF) as u32 | h0) as f32 * d + m;
        out[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0 block -> 32 values.
pub fn dequant_q8_0(b: &BlockQ8_0, out: &mut [f32; 32]) {
    let d = b.d();
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Q8_1 block -> 32 values (ggml has no row dequantizer for Q8_1; this is
/// the definition its quantizer implies: x = d * q, `s` is only a sum).
pub fn dequant_q8_1(b: &BlockQ8_1, out: &mut [f32; 32]) {
    let d = b.d();
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// MXFP4 block -> 32 values.
pub fn dequant_mxfp4(b: &BlockMxfp4, out: &mut [f32; 32]) {
    let d = e8m0_to_f32_half(b.e);
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = KVALUES_MXFP4[(q & 0xF) as usize] as f32 * d;
        out[j + 16] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
    }
}

/// Q2_K block -> 256 values.
pub fn dequant_q2k(b: &BlockQ2K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (b.d(), b.dmin());
    // Each 128-element half reads 32 bytes of qs at four shifts; each shift
    // covers two sub-blocks of 16 (bytes 0..16 and 16..32).
    for half in 0..2 {
        let qs = &b.qs[half * 32..half * 32 + 32];
        for shift_i in 0..4 {
            for part in 0..2 {
                let sub = half * 8 + shift_i * 2 + part;
                let sc = b.scales[sub];
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for l in 0..16 {
                    let q = (qs[part * 16 + l] >> (2 * shift_i)) & 3;
                    out[sub * 16 + l] = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K block -> 256 values.
pub fn dequant_q3k(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d_all = b.d();
    let scales = q3k_scales(&b.scales);
    for half in 0..2 {
        let qs = &b.qs[half * 32..half * 32 + 32];
        for shift_i in 0..4 {
            // The high bit of element l of this 32-run is bit (half*4 +
            // shift_i) of hmask[l]; a clear bit means "subtract 4".
            let hbit = 1u8 << (half * 4 + shift_i);
            for part in 0..2 {
                let sub = half * 8 + shift_i * 2 + part;
                let dl = d_all * scales[sub] as f32;
                for l in 0..16 {
                    let idx = part * 16 + l;
                    let low = ((qs[idx] >> (2 * shift_i)) & 3) as i32;
                    let q = low - if b.hmask[idx] & hbit != 0 { 0 } else { 4 };
                    out[sub * 16 + l] = dl * q as f32;
                }
            }
        }
    }
}

/// Q4_K block -> 256 values.
pub fn dequant_q4k(b: &BlockQ4K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (b.d(), b.dmin());
    for chunk in 0..4 {
        let qs = &b.qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for (l, &q) in qs.iter().enumerate() {
            out[chunk * 64 + l] = d1 * (q & 0xF) as f32 - m1;
            out[chunk * 64 + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// Q5_K block -> 256 values.
pub fn dequant_q5k(b: &BlockQ5K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (b.d(), b.dmin());
    for chunk in 0..4 {
        let qs = &b.qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for (l, &q) in qs.iter().enumerate() {
            let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            out[chunk * 64 + l] = d1 * ((q & 0xF) + h1) as f32 - m1;
            out[chunk * 64 + 32 + l] = d2 * ((q >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K block -> 256 values.
pub fn dequant_q6k(b: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = b.d();
    for half in 0..2 {
        let ql = &b.ql[half * 64..half * 64 + 64];
        let qh = &b.qh[half * 32..half * 32 + 32];
        let sc = &b.scales[half * 8..half * 8 + 8];
        let y = &mut out[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc[is] as f32 * q1 as f32;
            y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
            y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
            y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
        }
    }
}

/// Q8_K block -> 256 values.
pub fn dequant_q8k(b: &BlockQ8K, out: &mut [f32; QK_K]) {
    let d = b.d();
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = d * q as f32;
    }
}

/// Casts `bytes` to blocks (alignment 1, so only the length can fail).
fn blocks<T: bytemuck::Pod>(ty: GgmlType, bytes: &[u8]) -> Result<&[T], QuantError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        QuantError::InvalidData(format!(
            "{} data of {} bytes: {e:?}",
            ty.name(),
            bytes.len()
        ))
    })
}

/// Dequantizes a whole number of blocks with `f`, one block at a time.
fn run<T: bytemuck::Pod, const B: usize>(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [f32],
    f: fn(&T, &mut [f32; B]),
) -> Result<(), QuantError> {
    let blocks = blocks::<T>(ty, bytes)?;
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B)) {
        // chunks_exact_mut yields slices of exactly B elements.
        let o: &mut [f32; B] = o
            .try_into()
            .map_err(|_| QuantError::Shape("block".into()))?;
        f(b, o);
    }
    Ok(())
}

/// Dequantizes `out.len()` elements of type `ty` stored in `bytes` (one or
/// more whole rows, or any whole number of blocks). `bytes` must hold
/// exactly the bytes of `out.len()` elements.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let want = ty.row_bytes(out.len())?;
    if bytes.len() != want {
        return Err(QuantError::Shape(format!(
            "{} dequantize: {} elements need {want} bytes, got {}",
            ty.name(),
            out.len(),
            bytes.len()
        )));
    }
    use GgmlType::*;
    match ty {
        F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
        F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_le([b[0], b[1]]);
            }
            Ok(())
        }
        BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
            Ok(())
        }
        Q4_0 => run(ty, bytes, out, dequant_q4_0),
        Q4_1 => run(ty, bytes, out, dequant_q4_1),
        Q5_0 => run(ty, bytes, out, dequant_q5_0),
        Q5_1 => run(ty, bytes, out, dequant_q5_1),
        Q8_0 => run(ty, bytes, out, dequant_q8_0),
        Q8_1 => run(ty, bytes, out, dequant_q8_1),
        Mxfp4 => run(ty, bytes, out, dequant_mxfp4),
        Q2K => run(ty, bytes, out, dequant_q2k),
        Q3K => run(ty, bytes, out, dequant_q3k),
        Q4K => run(ty, bytes, out, dequant_q4k),
        Q5K => run(ty, bytes, out, dequant_q5k),
        Q6K => run(ty, bytes, out, dequant_q6k),
        Q8K => run(ty, bytes, out, dequant_q8k),
    }
}
