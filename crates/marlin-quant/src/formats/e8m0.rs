//! E8M0 (OCP MX scale type): an unsigned biased exponent byte. Code `e`
//! is 2^(e - 127) for e in 0..=254; 0xff is NaN. There is no zero and no sign.

use super::{floor_log2, pow2};

/// The E8M0 NaN code.
pub const E8M0_NAN: u8 = 0xff;
/// Smallest and largest exponent an E8M0 code represents.
pub const E8M0_MIN_EXP: i32 = -127;
pub const E8M0_MAX_EXP: i32 = 127;

/// Decodes an E8M0 code: 2^(code - 127), NaN for 0xff. 2^-127 is an f32
/// subnormal and exact.
pub fn e8m0_to_f32(code: u8) -> f32 {
    if code == E8M0_NAN {
        f32::NAN
    } else {
        pow2(i32::from(code) - 127)
    }
}

/// The code of 2^exponent, with the exponent clamped to [-127, 127].
pub fn e8m0_from_exponent(exponent: i32) -> u8 {
    (exponent.clamp(E8M0_MIN_EXP, E8M0_MAX_EXP) + 127) as u8
}

/// The code of the inputs both roundings treat alike: NaN, zero or
/// negative, and infinity; `None` for finite positive x.
fn special_e8m0(x: f32) -> Option<u8> {
    if x.is_nan() {
        Some(E8M0_NAN)
    } else if x <= 0.0 {
        Some(0)
    } else if x.is_infinite() {
        Some(e8m0_from_exponent(E8M0_MAX_EXP))
    } else {
        None
    }
}

/// Largest power of two <= x, clamped to [2^-127, 2^127]. Zero, negative
/// values and -infinity give 2^-127 (code 0); +infinity gives 2^127; NaN
/// gives NaN (0xff).
pub fn f32_to_e8m0_floor(x: f32) -> u8 {
    if let Some(code) = special_e8m0(x) {
        return code;
    }
    e8m0_from_exponent(floor_log2(x))
}

/// Smallest power of two >= x, clamped to [2^-127, 2^127] (so values above
/// 2^127 saturate). Zero, negative values and -infinity give 2^-127 (code 0);
/// +infinity gives 2^127; NaN gives NaN (0xff).
pub fn f32_to_e8m0_ceil(x: f32) -> u8 {
    if let Some(code) = special_e8m0(x) {
        return code;
    }
    let floor = floor_log2(x);
    let exact = pow2(floor) == x;
    e8m0_from_exponent(if exact { floor } else { floor + 1 })
}
