//! Portable integer dot products of one weight row with one row of 8-bit
//! activations; the fallback when AVX2 is missing, and simple enough to read
//! as the definition of what the SIMD versions compute.

use super::act::{ActQ8K, ActQ8x32};
use marlin_quant::ggml::*;

/// Σ over blocks of `d_w * d_a * Σ q_w q_a + c_w * s_a`, where each weight
/// block gives its codes (unsigned or signed) and the coefficient `c_w` of
/// the activation sum (its offset, or minus its bias code times d_w).
#[inline]
fn dot32<B>(w: &[B], a: &[ActQ8x32], decode: impl Fn(&B, &mut [i32; 32]) -> (f32, f32)) -> f32 {
    let mut acc = 0f32;
    let mut q = [0i32; 32];
    for (bw, ba) in w.iter().zip(a) {
        let (d, c) = decode(bw, &mut q);
        let sum: i32 = q.iter().zip(&ba.qs).map(|(&x, &y)| x * y as i32).sum();
        acc += d * ba.d * sum as f32 + c * ba.s;
    }
    acc
}

fn nibbles(qs: &[u8; 16], q: &mut [i32; 32]) {
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0xF) as i32;
        q[j + 16] = (b >> 4) as i32;
    }
}

fn fifth_bits(qh: u32, q: &mut [i32; 32]) {
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as i32;
    }
}

pub fn dot_q4_0(w: &[BlockQ4_0], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        nibbles(&b.qs, q);
        (b.d(), -8.0 * b.d())
    })
}

pub fn dot_q4_1(w: &[BlockQ4_1], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        nibbles(&b.qs, q);
        (b.d(), b.m())
    })
}

pub fn dot_q5_0(w: &[BlockQ5_0], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        nibbles(&b.qs, q);
        fifth_bits(b.qh_bits(), q);
        (b.d(), -16.0 * b.d())
    })
}

pub fn dot_q5_1(w: &[BlockQ5_1], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        nibbles(&b.qs, q);
        fifth_bits(b.qh_bits(), q);
        (b.d(), b.m())
    })
}

pub fn dot_q8_0(w: &[BlockQ8_0], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        for (v, &c) in q.iter_mut().zip(&b.qs) {
            *v = c as i32;
        }
        (b.d(), 0.0)
    })
}

pub fn dot_mxfp4(w: &[BlockMxfp4], a: &[ActQ8x32]) -> f32 {
    dot32(w, a, |b, q| {
        for (j, &c) in b.qs.iter().enumerate() {
            q[j] = KVALUES_MXFP4[(c & 0xF) as usize] as i32;
            q[j + 16] = KVALUES_MXFP4[(c >> 4) as usize] as i32;
        }
        (e8m0_to_f32_half(b.e), 0.0)
    })
}

pub fn dot_q4k(w: &[BlockQ4K], a: &[ActQ8K]) -> f32 {
    let mut acc = 0f32;
    for (bw, ba) in w.iter().zip(a) {
        let mut sumi = 0i32; // Σ_sub sc * Σ q a
        let mut summ = 0i32; // Σ_sub m * Σ a
        for sub in 0..8 {
            let (sc, m) = scale_min_k4(sub, &bw.scales);
            let chunk = &bw.qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
            let shift = 4 * (sub % 2);
            let aq = &ba.qs[sub * 32..sub * 32 + 32];
            let s: i32 = chunk
                .iter()
                .zip(aq)
                .map(|(&q, &x)| ((q >> shift) & 0xF) as i32 * x as i32)
                .sum();
            sumi += sc as i32 * s;
            summ += m as i32 * (ba.bsums[2 * sub] as i32 + ba.bsums[2 * sub + 1] as i32);
        }
        acc += bw.d() * ba.d * sumi as f32 - bw.dmin() * ba.d * summ as f32;
    }
    acc
}

pub fn dot_q6k(w: &[BlockQ6K], a: &[ActQ8K]) -> f32 {
    let mut acc = 0f32;
    for (bw, ba) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for half in 0..2 {
            let ql = &bw.ql[half * 64..half * 64 + 64];
            let qh = &bw.qh[half * 32..half * 32 + 32];
            for l in 0..32 {
                let q = [
                    (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let idx = half * 128 + k * 32 + l;
                    let sc = bw.scales[idx / 16] as i32;
                    sumi += sc * (qk as i32 - 32) * ba.qs[idx] as i32;
                }
            }
        }
        acc += bw.d() * ba.d * sumi as f32;
    }
    acc
}

/// f32 dot product (generic path and float weights).
pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // Eight partial sums: faster than one chain, and a little more accurate.
    let mut acc = [0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (a, b) in (&mut wc).zip(&mut xc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}
