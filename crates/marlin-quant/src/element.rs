//! Per-element behaviour of [`ElementType`]: code width, decoding a raw code
//! to its value on the code grid, and encoding a value (in code units, i.e.
//! already divided by the scale) to the nearest code.

use crate::formats::{
    e2m1_to_f32, e4m3_to_f32, e5m2_to_f32, f32_to_e2m1, f32_to_e4m3, f32_to_e5m2, f32_to_nf4,
    nf4_to_f32, E2M1_MAX, E4M3_MAX, E5M2_MAX,
};
use crate::pack::{raw_to_signed, signed_to_raw};
use crate::scheme::ElementType;
use crate::QuantError;

impl ElementType {
    /// Width of one packed code in bits.
    pub fn bits(&self) -> u8 {
        match *self {
            ElementType::Int { bits, .. } => bits,
            ElementType::Fp4E2M1 | ElementType::Nf4 => 4,
            ElementType::Fp8E4M3 | ElementType::Fp8E5M2 => 8,
        }
    }

    /// Checks the element description itself (integer width in 2..=8).
    pub fn validate(&self) -> Result<(), QuantError> {
        match *self {
            ElementType::Int { bits, .. } if !(2..=8).contains(&bits) => {
                Err(QuantError::Unsupported(format!(
                    "integer elements of {bits} bits (supported: 2..=8)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether this is a floating-point (or NF4 lookup) element, i.e. codes
    /// are not integers.
    pub fn is_float(&self) -> bool {
        !matches!(self, ElementType::Int { .. })
    }

    /// The integer code range `(min, max)` of `Int` elements: signed
    /// [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1]. `None` for float elements.
    pub fn int_range(&self) -> Option<(i32, i32)> {
        match *self {
            // Widths outside 2..=8 fail `validate`; no range rather than a
            // shift overflow for a scheme that was never validated.
            ElementType::Int { bits, .. } if !(2..=8).contains(&bits) => None,
            ElementType::Int { bits, signed: true } => {
                let half = 1i32 << (bits - 1);
                Some((-half, half - 1))
            }
            ElementType::Int {
                bits,
                signed: false,
            } => Some((0, (1i32 << bits) - 1)),
            _ => None,
        }
    }

    /// The largest positive value on the code grid: the divisor that maps a
    /// group's absolute maximum onto the grid in symmetric quantization
    /// (signed int: 2^(b-1)-1; unsigned int: 2^b-1; E2M1: 6; E4M3: 448;
    /// E5M2: 57344; NF4: 1).
    pub fn max_value(&self) -> f32 {
        match *self {
            ElementType::Int { .. } => self.int_range().map_or(0.0, |(_, hi)| hi as f32),
            ElementType::Fp4E2M1 => E2M1_MAX,
            ElementType::Fp8E4M3 => E4M3_MAX,
            ElementType::Fp8E5M2 => E5M2_MAX,
            ElementType::Nf4 => 1.0,
        }
    }

    /// Exponent of the largest normal power of two of a float element
    /// (E2M1: 2, E4M3: 8, E5M2: 15), used by the OCP MX shared-exponent
    /// rule. `None` for integer and NF4 elements.
    pub fn max_exponent(&self) -> Option<i32> {
        match *self {
            ElementType::Fp4E2M1 => Some(2),
            ElementType::Fp8E4M3 => Some(8),
            ElementType::Fp8E5M2 => Some(15),
            ElementType::Int { .. } | ElementType::Nf4 => None,
        }
    }

    /// Decodes a raw code (its low `bits()` bits) to its value on the code
    /// grid: the signed/unsigned integer, or the FP4/FP8/NF4 value. FP8 NaN
    /// codes decode to NaN and E5M2 infinity codes to infinity.
    #[inline]
    pub fn decode(&self, raw: u8) -> f32 {
        match *self {
            ElementType::Int { bits, signed: true } => raw_to_signed(raw, bits) as f32,
            ElementType::Int {
                bits,
                signed: false,
            } => f32::from(raw & mask(bits)),
            ElementType::Fp4E2M1 => e2m1_to_f32(raw),
            ElementType::Fp8E4M3 => e4m3_to_f32(raw),
            ElementType::Fp8E5M2 => e5m2_to_f32(raw),
            ElementType::Nf4 => nf4_to_f32(raw),
        }
    }

    /// Encodes a value in code units (already divided by the scale and
    /// shifted by the zero point) to the nearest raw code:
    /// integers round half to even and clamp to [`Self::int_range`]; float
    /// elements use their round-to-nearest-even, saturating encoders; NF4 the
    /// nearest level. NaN encodes to the code of 0 (callers reject NaN
    /// earlier).
    #[inline]
    pub fn encode(&self, x: f32) -> u8 {
        match *self {
            ElementType::Int { bits, signed } => {
                let (lo, hi) = self.int_range().unwrap_or((0, 0));
                let v = if x.is_nan() {
                    0
                } else {
                    // Clamp in f32 first so the cast cannot saturate oddly.
                    x.round_ties_even().clamp(lo as f32, hi as f32) as i32
                };
                if signed {
                    signed_to_raw(v, bits)
                } else {
                    v as u8
                }
            }
            ElementType::Fp4E2M1 => f32_to_e2m1(x),
            ElementType::Fp8E4M3 => f32_to_e4m3(x),
            ElementType::Fp8E5M2 => f32_to_e5m2(x),
            ElementType::Nf4 => f32_to_nf4(x),
        }
    }

    /// Whether a raw code is a valid code of this element: fits in `bits()`
    /// and (FP8) is not NaN or infinity.
    pub fn is_finite_code(&self, raw: u8) -> bool {
        let fits = 1u16
            .checked_shl(u32::from(self.bits()))
            .is_none_or(|limit| u16::from(raw) < limit);
        fits && self.decode(raw).is_finite()
    }
}

#[inline]
fn mask(bits: u8) -> u8 {
    1u16.checked_shl(u32::from(bits))
        .map_or(u8::MAX, |bit| (bit - 1) as u8)
}
