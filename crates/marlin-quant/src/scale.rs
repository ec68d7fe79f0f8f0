//! Scale storage types: rounding a computed scale to a [`ScaleDType`] and
//! converting to and from the stored bit pattern.

use crate::formats::{e4m3_to_f32, e8m0_to_f32, f32_to_e4m3, f32_to_e8m0_ceil, E4M3_MAX};
use crate::scheme::ScaleDType;
use crate::QuantError;
use half::{bf16, f16};

impl ScaleDType {
    /// Storage width in bits.
    pub fn bits(&self) -> u32 {
        match self {
            ScaleDType::F32 => 32,
            ScaleDType::F16 | ScaleDType::BF16 => 16,
            ScaleDType::E8M0 | ScaleDType::E4M3 => 8,
        }
    }

    /// Largest finite value of the dtype.
    pub fn max_finite(&self) -> f32 {
        match self {
            ScaleDType::F32 => f32::MAX,
            ScaleDType::F16 => f16::MAX.to_f32(),
            ScaleDType::BF16 => bf16::MAX.to_f32(),
            ScaleDType::E8M0 => e8m0_to_f32(0xfe),
            ScaleDType::E4M3 => E4M3_MAX,
        }
    }

    /// Rounds a non-negative finite scale to a value of this dtype.
    /// F16 / BF16 / E4M3: round to nearest even, saturating at the largest
    /// finite value. E8M0: the smallest power of two >= x (so rounding never
    /// shrinks the scale and never clips), clamped to [2^-127, 2^127]; the
    /// OCP MX rule for float elements is applied by the quantizer instead.
    /// F32: unchanged.
    pub fn round(&self, x: f32) -> f32 {
        match self {
            ScaleDType::F32 => x,
            ScaleDType::F16 => saturate(f16::from_f32(x).to_f32(), x, self.max_finite()),
            ScaleDType::BF16 => saturate(bf16::from_f32(x).to_f32(), x, self.max_finite()),
            ScaleDType::E4M3 => e4m3_to_f32(f32_to_e4m3(x)),
            ScaleDType::E8M0 => e8m0_to_f32(f32_to_e8m0_ceil(x)),
        }
    }

    /// Whether `x` is exactly a finite value of this dtype.
    pub fn is_representable(&self, x: f32) -> bool {
        if !x.is_finite() {
            return false;
        }
        match self {
            ScaleDType::F32 => true,
            ScaleDType::F16 => f16::from_f32(x).to_f32() == x,
            ScaleDType::BF16 => bf16::from_f32(x).to_f32() == x,
            ScaleDType::E4M3 => e4m3_to_f32(f32_to_e4m3(x)) == x,
            ScaleDType::E8M0 => x > 0.0 && e8m0_to_f32(f32_to_e8m0_ceil(x)) == x,
        }
    }

    /// The stored bit pattern of a representable value (f32 / f16 / bf16
    /// bits, or the E4M3 / E8M0 byte), zero-extended to u32.
    pub fn encode(&self, x: f32) -> Result<u32, QuantError> {
        if !self.is_representable(x) {
            return Err(QuantError::InvalidData(format!(
                "scale {x} is not a {self:?} value"
            )));
        }
        Ok(match self {
            ScaleDType::F32 => x.to_bits(),
            ScaleDType::F16 => u32::from(f16::from_f32(x).to_bits()),
            ScaleDType::BF16 => u32::from(bf16::from_f32(x).to_bits()),
            ScaleDType::E4M3 => u32::from(f32_to_e4m3(x)),
            ScaleDType::E8M0 => u32::from(f32_to_e8m0_ceil(x)),
        })
    }

    /// Decodes a stored bit pattern (only the low `bits()` bits are used).
    pub fn decode(&self, stored: u32) -> f32 {
        match self {
            ScaleDType::F32 => f32::from_bits(stored),
            ScaleDType::F16 => f16::from_bits(stored as u16).to_f32(),
            ScaleDType::BF16 => bf16::from_bits(stored as u16).to_f32(),
            ScaleDType::E4M3 => e4m3_to_f32(stored as u8),
            ScaleDType::E8M0 => e8m0_to_f32(stored as u8),
        }
    }
}

/// Replaces an overflow to infinity by the largest finite value of the sign
/// of the input.
fn saturate(rounded: f32, input: f32, max: f32) -> f32 {
    if rounded.is_infinite() && input.is_finite() {
        max.copysign(input)
    } else {
        rounded
    }
}
