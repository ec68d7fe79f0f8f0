//! FP4 E2M1 (OCP MX element type): 1 sign bit (bit 3), 2 exponent bits
//! (bits 2-1, bias 1), 1 mantissa bit (bit 0). Values ±{0, 0.5, 1, 1.5, 2,
//! 3, 4, 6}; no infinities, no NaN.

use super::{minifloat_magnitude, nearest_code};

/// Largest E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;

/// Decodes the low 4 bits of `code` as E2M1 (higher bits are ignored).
pub fn e2m1_to_f32(code: u8) -> f32 {
    let magnitude = minifloat_magnitude(u32::from((code >> 1) & 0x3), u32::from(code & 0x1), 1, 1);
    if code & 0x8 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Encodes f32 to a 4-bit E2M1 code with round-to-nearest-even; magnitudes
/// above 6 (and ±infinity) saturate to ±6. E2M1 has no NaN: NaN encodes to
/// +0 (quantizers reject NaN weights before encoding).
pub fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let sign = if x.is_sign_negative() { 0x8 } else { 0 };
    sign | nearest_code(x.abs(), 0x7, e2m1_to_f32)
}
