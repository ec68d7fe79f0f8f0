//! Exact scalar conversions between f32 and the small number formats.
//!
//! Every decoder is exact (each code's value is representable in f32). Every
//! encoder rounds to the nearest representable value with ties to the code
//! whose least significant bit is 0 (round-to-nearest-even), and saturates
//! finite overflow to the largest finite value. The behaviour on NaN and
//! infinity is documented per function and in `docs/FORMATS.md`.

pub mod e8m0;
pub mod fp4;
pub mod fp8;
pub mod nf4;

pub use e8m0::{e8m0_from_exponent, e8m0_to_f32, f32_to_e8m0_ceil, f32_to_e8m0_floor};
pub use fp4::{e2m1_to_f32, f32_to_e2m1, E2M1_MAX};
pub use fp8::{e4m3_to_f32, e5m2_to_f32, f32_to_e4m3, f32_to_e5m2, E4M3_MAX, E5M2_MAX};
pub use nf4::{f32_to_nf4, nf4_to_f32, NF4_VALUES};

/// Decodes the sign-less part of a small IEEE-like float: `exp_field` and
/// `mantissa` with `mant_bits` mantissa bits and exponent `bias`. Builds the
/// f32 bit pattern directly (normal numbers) or multiplies the mantissa by a
/// power of two (subnormals); both are exact.
pub(crate) fn minifloat_magnitude(exp_field: u32, mantissa: u32, mant_bits: u32, bias: i32) -> f32 {
    if exp_field == 0 {
        // Subnormal: mantissa * 2^(1 - bias - mant_bits).
        mantissa as f32 * pow2(1 - bias - mant_bits as i32)
    } else {
        let exp = exp_field as i32 - bias + 127;
        f32::from_bits(((exp as u32) << 23) | (mantissa << (23 - mant_bits)))
    }
}

/// 2^e as f32 for e in [-149, 127] (exact; subnormal below -126).
pub(crate) fn pow2(e: i32) -> f32 {
    debug_assert!((-149..=127).contains(&e));
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// floor(log2(x)) for finite x > 0 (subnormals included), exact.
pub(crate) fn floor_log2(x: f32) -> i32 {
    debug_assert!(x > 0.0 && x.is_finite());
    let bits = x.to_bits();
    let exp_field = ((bits >> 23) & 0xff) as i32;
    if exp_field == 0 {
        let mant = bits & 0x7f_ffff;
        // Value = mant * 2^-149; position of the highest set bit.
        (31 - mant.leading_zeros() as i32) - 149
    } else {
        exp_field - 127
    }
}

/// Nearest code to the non-negative finite magnitude `a` among codes
/// `0..=max_code`, whose values `decode(code)` increase strictly with the
/// code. Ties go to the even code (the one whose mantissa LSB is 0). Values
/// at or above `decode(max_code)` saturate to `max_code`.
pub(crate) fn nearest_code(a: f32, max_code: u8, decode: impl Fn(u8) -> f32) -> u8 {
    let a = f64::from(a);
    if a >= f64::from(decode(max_code)) {
        return max_code;
    }
    // Invariant: decode(lo) <= a < decode(hi).
    let (mut lo, mut hi) = (0u8, max_code);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if f64::from(decode(mid)) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Both differences are exact in f64 (all operands are f32 values).
    let below = a - f64::from(decode(lo));
    let above = f64::from(decode(hi)) - a;
    if below < above || (below == above && lo % 2 == 0) {
        lo
    } else {
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_and_floor_log2_are_exact() {
        for e in -149..=127 {
            let x = pow2(e);
            assert_eq!(f64::from(x), 2f64.powi(e), "2^{e}");
            assert_eq!(floor_log2(x), e);
            if e > -149 && e < 127 {
                assert_eq!(floor_log2(x * 1.5), e);
            }
        }
    }
}
