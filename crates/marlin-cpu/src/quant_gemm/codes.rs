//! Reading a `QuantTensor` as the kernels need it: the packed code stream,
//! the element decoders and the scale grid, all checked once at load.
//!
//! The element decoders here are small private copies of the format
//! definitions (`docs/FORMATS.md`), so that the repacking code does not
//! depend on anything but the documented bit layout; the tests check the
//! kernels against `marlin-quant`'s own reference dequantizer.

use crate::CpuError;
use marlin_quant::{ElementType, Granularity, Layout, QuantTensor, ZeroPoint};

/// Code width in bits of an element type (2..=8).
pub(crate) fn element_bits(element: ElementType) -> Result<u32, CpuError> {
    match element {
        ElementType::Int { bits, .. } if (2..=8).contains(&bits) => Ok(u32::from(bits)),
        ElementType::Int { bits, .. } => Err(CpuError::Unsupported(format!(
            "integer codes of {bits} bits (supported: 2..=8)"
        ))),
        ElementType::Fp4E2M1 | ElementType::Nf4 => Ok(4),
        ElementType::Fp8E4M3 | ElementType::Fp8E5M2 => Ok(8),
    }
}

/// Bytes of one packed row of `k` codes of `bits` bits (rows are padded to
/// whole bytes).
pub(crate) fn row_bytes(k: usize, bits: u32) -> Result<usize, CpuError> {
    k.checked_mul(bits as usize)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| CpuError::Shape(format!("row of {k} codes overflows")))
}

/// Code `j` of a packed row: bit offset `j * bits`, little-endian bit stream
/// (a 3-bit code may straddle two bytes). `row` must hold `row_bytes(k)`.
#[inline]
pub(crate) fn read_code(row: &[u8], j: usize, bits: u32) -> u8 {
    let bit = j * bits as usize;
    let byte = bit / 8;
    let shift = bit % 8;
    let lo = u16::from(row[byte]);
    let hi = row.get(byte + 1).map_or(0, |&b| u16::from(b));
    let word = lo | (hi << 8);
    ((word >> shift) & ((1u16 << bits) - 1)) as u8
}

/// NormalFloat4 levels (QLoRA), code 0..15.
const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// 2^e for e in [-149, 127], exact.
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// FP4 E2M1: bit 3 sign, bits 2-1 exponent (bias 1), bit 0 mantissa.
pub(crate) fn decode_e2m1(code: u8) -> f32 {
    let e = i32::from((code >> 1) & 3);
    let m = f32::from(code & 1);
    let mag = if e == 0 {
        0.5 * m
    } else {
        (1.0 + 0.5 * m) * pow2(e - 1)
    };
    if code & 8 != 0 {
        -mag
    } else {
        mag
    }
}

/// FP8 E4M3 (OCP "fn": S.1111.111 is NaN, no infinities).
pub(crate) fn decode_e4m3(code: u8) -> f32 {
    let e = i32::from((code >> 3) & 0xF);
    let m = f32::from(code & 7);
    let mag = if e == 0xF && code & 7 == 7 {
        f32::NAN
    } else if e == 0 {
        m / 8.0 * pow2(-6)
    } else {
        (1.0 + m / 8.0) * pow2(e - 7)
    };
    if code & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

/// FP8 E5M2 (IEEE-like: exponent 31 is infinity / NaN).
pub(crate) fn decode_e5m2(code: u8) -> f32 {
    let e = i32::from((code >> 2) & 0x1F);
    let m = f32::from(code & 3);
    let mag = if e == 0x1F {
        if code & 3 == 0 {
            f32::INFINITY
        } else {
            f32::NAN
        }
    } else if e == 0 {
        m / 4.0 * pow2(-14)
    } else {
        (1.0 + m / 4.0) * pow2(e - 15)
    };
    if code & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

/// The value of a code before scale and zero point.
pub(crate) fn decode_element(element: ElementType, code: u8) -> f32 {
    match element {
        ElementType::Int { bits, signed } => {
            let half = 1i32 << (bits - 1);
            let c = i32::from(code);
            if signed && c >= half {
                (c - 2 * half) as f32
            } else {
                c as f32
            }
        }
        ElementType::Fp4E2M1 => decode_e2m1(code),
        ElementType::Fp8E4M3 => decode_e4m3(code),
        ElementType::Fp8E5M2 => decode_e5m2(code),
        ElementType::Nf4 => NF4_LEVELS[usize::from(code & 0xF)],
    }
}

/// Geometry of the scale grid: which scale (and zero) covers element (r, c).
#[derive(Clone, Debug)]
pub(crate) struct ScaleGrid {
    /// Weight rows sharing one row of the grid.
    pub rows_per: usize,
    /// Columns sharing one grid entry (without g_idx).
    pub cols_per: usize,
    /// Grid entries per grid row.
    pub grid_cols: usize,
    /// Grid rows.
    pub grid_rows: usize,
}

impl ScaleGrid {
    pub fn new(g: Granularity, n: usize, k: usize) -> Result<Self, CpuError> {
        let (rows_per, cols_per) = match g {
            Granularity::PerTensor => (n.max(1), k.max(1)),
            Granularity::PerChannel => (1, k.max(1)),
            Granularity::PerGroup { group_size } => {
                if group_size == 0 || !k.is_multiple_of(group_size) {
                    return Err(marlin_quant::QuantError::GroupSize {
                        group: group_size,
                        k,
                    }
                    .into());
                }
                (1, group_size)
            }
            Granularity::Block2d { rows, cols } => {
                if rows == 0 || cols == 0 {
                    return Err(CpuError::Shape(format!(
                        "2d scale block {rows}x{cols} has a zero side"
                    )));
                }
                (rows, cols)
            }
        };
        Ok(Self {
            rows_per,
            cols_per,
            grid_cols: k.div_ceil(cols_per),
            grid_rows: n.div_ceil(rows_per),
        })
    }

    pub fn len(&self) -> usize {
        self.grid_rows * self.grid_cols
    }
}

/// A validated view of a `QuantTensor`: every length matches the scheme,
/// every scale, zero and code is finite, g_idx is in range.
pub(crate) struct CheckedTensor<'a> {
    pub t: &'a QuantTensor,
    pub bits: u32,
    pub row_bytes: usize,
    pub grid: ScaleGrid,
}

impl<'a> CheckedTensor<'a> {
    pub fn new(t: &'a QuantTensor) -> Result<Self, CpuError> {
        let (n, k) = (t.rows, t.cols);
        let s = &t.scheme;
        match s.layout {
            Layout::KMajorDense => {}
        }
        let bits = element_bits(s.element)?;
        let row_bytes = row_bytes(k, bits)?;
        let want = n
            .checked_mul(row_bytes)
            .ok_or_else(|| CpuError::Shape(format!("{n}x{k} weight overflows")))?;
        if t.data.len() != want {
            return Err(CpuError::Shape(format!(
                "packed data has {} bytes, a {n}x{k} matrix of {bits}-bit codes needs {want}",
                t.data.len()
            )));
        }
        let grid = ScaleGrid::new(s.granularity, n, k)?;
        if t.scales.len() != grid.len() {
            return Err(CpuError::Shape(format!(
                "{} scales for a {}x{} scale grid",
                t.scales.len(),
                grid.grid_rows,
                grid.grid_cols
            )));
        }
        check_finite("scale", &t.scales)?;
        match (s.zero_point, &t.zeros) {
            (ZeroPoint::None, None) => {}
            (ZeroPoint::None, Some(_)) => {
                return Err(CpuError::Shape(
                    "zeros given for a scheme without zero point".into(),
                ))
            }
            (_, None) => {
                return Err(CpuError::Shape(
                    "scheme has a zero point but no zeros".into(),
                ))
            }
            (_, Some(z)) => {
                if z.len() != grid.len() {
                    return Err(CpuError::Shape(format!(
                        "{} zeros for a {}x{} scale grid",
                        z.len(),
                        grid.grid_rows,
                        grid.grid_cols
                    )));
                }
                check_finite("zero", z)?;
            }
        }
        if !t.global_scale.is_finite() {
            return Err(CpuError::Shape(format!(
                "global scale is {}",
                t.global_scale
            )));
        }
        if let Some(g_idx) = &t.g_idx {
            if !matches!(s.granularity, Granularity::PerGroup { .. }) {
                return Err(CpuError::Unsupported(
                    "g_idx with a granularity other than per-group".into(),
                ));
            }
            if g_idx.len() != k {
                return Err(CpuError::Shape(format!(
                    "g_idx has {} entries, K = {k}",
                    g_idx.len()
                )));
            }
            if let Some(pos) = g_idx.iter().position(|&g| g as usize >= grid.grid_cols) {
                return Err(CpuError::Shape(format!(
                    "g_idx[{pos}] = {} is not below the {} groups",
                    g_idx[pos], grid.grid_cols
                )));
            }
        }
        let checked = Self {
            t,
            bits,
            row_bytes,
            grid,
        };
        checked.check_codes()?;
        Ok(checked)
    }

    /// FP8 NaN / infinity codes are bad input (integer and FP4 codes are
    /// always in range).
    fn check_codes(&self) -> Result<(), CpuError> {
        let bad: fn(u8) -> bool = match self.t.scheme.element {
            ElementType::Fp8E4M3 => |c| c & 0x7F == 0x7F,
            ElementType::Fp8E5M2 => |c| c & 0x7C == 0x7C,
            _ => return Ok(()),
        };
        if let Some(pos) = self.t.data.iter().position(|&c| bad(c)) {
            let (r, c) = (pos / self.row_bytes.max(1), pos % self.row_bytes.max(1));
            return Err(CpuError::Shape(format!(
                "non-finite FP8 code {:#04x} at row {r}, column {c}",
                self.t.data[pos]
            )));
        }
        Ok(())
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.t.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Grid index of element (r, c).
    pub fn grid_index(&self, r: usize, c: usize) -> usize {
        let gc = match &self.t.g_idx {
            Some(g) => g[c] as usize,
            None => c / self.grid.cols_per,
        };
        (r / self.grid.rows_per) * self.grid.grid_cols + gc
    }

    /// Dequantizes row `r` into `out` (K values): the scalar definition
    /// `global * scale * (decode(code) - zero)`.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        let el = self.t.scheme.element;
        for (c, o) in out.iter_mut().enumerate().take(self.t.cols) {
            let gi = self.grid_index(r, c);
            let zero = self.t.zeros.as_ref().map_or(0.0, |z| z[gi]);
            let v = decode_element(el, read_code(row, c, self.bits));
            *o = self.t.global_scale * self.t.scales[gi] * (v - zero);
        }
    }
}

fn check_finite(what: &str, v: &[f32]) -> Result<(), CpuError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(CpuError::Shape(format!("{what} {i} is {}", v[i]))),
        None => Ok(()),
    }
}
