//! FP8 E4M3 (OCP "fn" variant) and E5M2 conversions.
//!
//! E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits. No infinities;
//! S.1111.111 (0x7f / 0xff) is NaN; the largest finite value is
//! S.1111.110 = 448. Smallest subnormal 2^-9.
//!
//! E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits, IEEE-like:
//! S.11111.00 is ±infinity, S.11111.{01,10,11} are NaN; largest finite
//! 57344; smallest subnormal 2^-16.

use super::{minifloat_magnitude, nearest_code};

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite E5M2 value.
pub const E5M2_MAX: f32 = 57344.0;
/// Canonical positive E4M3 NaN (the encoder sets the sign bit of the input).
pub const E4M3_NAN: u8 = 0x7f;
/// Canonical positive E5M2 NaN (quiet, mantissa MSB set).
pub const E5M2_NAN: u8 = 0x7e;
/// Positive E5M2 infinity.
pub const E5M2_INF: u8 = 0x7c;

/// Largest finite positive code of each format.
const E4M3_MAX_CODE: u8 = 0x7e;
const E5M2_MAX_CODE: u8 = 0x7b;

/// Decodes an E4M3 code; 0x7f and 0xff decode to NaN.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let magnitude_bits = code & 0x7f;
    let magnitude = if magnitude_bits == 0x7f {
        f32::NAN
    } else {
        minifloat_magnitude(
            u32::from(magnitude_bits >> 3),
            u32::from(magnitude_bits & 0x7),
            3,
            7,
        )
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Decodes an E5M2 code (with infinities and NaNs).
pub fn e5m2_to_f32(code: u8) -> f32 {
    let exp_field = u32::from((code >> 2) & 0x1f);
    let mantissa = u32::from(code & 0x3);
    let magnitude = match (exp_field, mantissa) {
        (0x1f, 0) => f32::INFINITY,
        (0x1f, _) => f32::NAN,
        _ => minifloat_magnitude(exp_field, mantissa, 2, 15),
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Encodes f32 to E4M3 with round-to-nearest-even and saturation: finite
/// values beyond ±448 and ±infinity become ±448 (CUDA's `__NV_SATFINITE`).
/// NaN becomes NaN (0x7f, or 0xff when the NaN's sign bit is set). The sign
/// of zero is kept.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | E4M3_NAN;
    }
    sign | nearest_code(x.abs(), E4M3_MAX_CODE, e4m3_to_f32)
}

/// Encodes f32 to E5M2 with round-to-nearest-even. Finite values beyond
/// ±57344 saturate to ±57344 (they never become infinity); ±infinity stays
/// ±infinity; NaN becomes a quiet NaN (0x7e, or 0xfe with the sign bit). The
/// sign of zero is kept.
pub fn f32_to_e5m2(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | E5M2_NAN;
    }
    if x.is_infinite() {
        return sign | E5M2_INF;
    }
    sign | nearest_code(x.abs(), E5M2_MAX_CODE, e5m2_to_f32)
}
