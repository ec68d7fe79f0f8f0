//! The scalar reference dequantizer of [`QuantTensor`]: the truth every
//! CPU and CUDA kernel is tested against. Kept deliberately simple.
//!
//! Element (r, c) of the (N, K) matrix is, computed in f32 in this order:
//! `(global_scale * scale[g]) * (decode(code(r, c)) - zero[g])`
//! where `g` is the scale-grid index of (r, c) (act-order: for PerGroup with
//! `g_idx`, `g = r * (K / group_size) + g_idx[c]`) and `zero[g] = 0` without
//! zero points.

use crate::pack::read_code;
use crate::scheme::{Granularity, ZeroPoint};
use crate::tensor::QuantTensor;
use crate::QuantError;
use rayon::prelude::*;

impl QuantTensor {
    /// Checks the lengths of `data`, `scales`, `zeros` and `g_idx` against
    /// the scheme and shape (O(1), except that g_idx is range-checked
    /// lazily by [`Self::scale_index`]).
    pub fn check_lengths(&self) -> Result<(), QuantError> {
        let s = &self.scheme;
        let expected_data = s.data_bytes(self.rows, self.cols)?;
        let n_scales = s.num_scales(self.rows, self.cols)?;
        if self.data.len() != expected_data {
            return Err(QuantError::Shape(format!(
                "packed data has {} bytes, expected {expected_data} for {} x {} codes of {} bits",
                self.data.len(),
                self.rows,
                self.cols,
                s.element.bits()
            )));
        }
        if self.scales.len() != n_scales {
            return Err(QuantError::Shape(format!(
                "{} scales, expected {n_scales} for {:?} on {} x {}",
                self.scales.len(),
                s.granularity,
                self.rows,
                self.cols
            )));
        }
        match (&self.zeros, s.zero_point) {
            (None, ZeroPoint::None) => {}
            (Some(z), ZeroPoint::Int | ZeroPoint::Float) if z.len() == n_scales => {}
            (Some(z), ZeroPoint::Int | ZeroPoint::Float) => {
                return Err(QuantError::Shape(format!(
                    "{} zero points, expected {n_scales}",
                    z.len()
                )));
            }
            (Some(_), ZeroPoint::None) => {
                return Err(QuantError::InvalidData(
                    "zero points given for a scheme without them".into(),
                ));
            }
            (None, _) => {
                return Err(QuantError::InvalidData(format!(
                    "scheme has {:?} zero points but none are given",
                    s.zero_point
                )));
            }
        }
        if let Some(g_idx) = &self.g_idx {
            if !matches!(s.granularity, Granularity::PerGroup { .. }) {
                return Err(QuantError::InvalidData(format!(
                    "g_idx given for {:?} (only PerGroup has act order)",
                    s.granularity
                )));
            }
            if g_idx.len() != self.cols {
                return Err(QuantError::Shape(format!(
                    "g_idx has {} entries, expected K = {}",
                    g_idx.len(),
                    self.cols
                )));
            }
        }
        if !s.global_scale && self.global_scale != 1.0 {
            return Err(QuantError::InvalidData(format!(
                "global scale {} on a scheme without one (must be 1.0)",
                self.global_scale
            )));
        }
        Ok(())
    }

    /// Full validation: [`Self::check_lengths`], plus: every g_idx entry is
    /// below K / group_size; the global scale is finite and positive; every
    /// scale is finite, non-negative and exactly representable in the scale
    /// dtype; integer zero points are integers within the unsigned code
    /// range; float zero points are finite and representable in the scale
    /// dtype. Codes are not checked here (FP8 NaN codes decode to NaN, see
    /// [`Self::check_codes`]).
    pub fn validate(&self) -> Result<(), QuantError> {
        self.check_lengths()?;
        let s = &self.scheme;
        if !(self.global_scale.is_finite() && self.global_scale > 0.0) {
            return Err(QuantError::InvalidData(format!(
                "global scale {} is not finite and > 0",
                self.global_scale
            )));
        }
        if let (Some(g_idx), Granularity::PerGroup { group_size }) = (&self.g_idx, s.granularity) {
            let n_groups = self.cols / group_size;
            if let Some(c) = g_idx.iter().position(|&g| g as usize >= n_groups) {
                return Err(QuantError::InvalidData(format!(
                    "g_idx[{c}] = {} is out of range (K / group_size = {n_groups} groups)",
                    g_idx[c]
                )));
            }
        }
        for (i, &scale) in self.scales.iter().enumerate() {
            if !(scale >= 0.0 && s.scale_dtype.is_representable(scale)) {
                return Err(QuantError::InvalidData(format!(
                    "scale[{i}] = {scale} is not a non-negative {:?} value",
                    s.scale_dtype
                )));
            }
        }
        if let Some(zeros) = &self.zeros {
            let max_zero = self.scheme.element.int_range().map_or(0, |(_, hi)| hi) as f32;
            for (i, &z) in zeros.iter().enumerate() {
                let ok = match s.zero_point {
                    ZeroPoint::Int => z.fract() == 0.0 && (0.0..=max_zero).contains(&z),
                    ZeroPoint::Float => s.scale_dtype.is_representable(z),
                    ZeroPoint::None => false,
                };
                if !ok {
                    return Err(QuantError::InvalidData(format!(
                        "zero[{i}] = {z} is not a valid {:?} zero point",
                        s.zero_point
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that every code is a finite value of the element type (FP8:
    /// no NaN / infinity codes). O(N x K).
    pub fn check_codes(&self) -> Result<(), QuantError> {
        self.check_lengths()?;
        for r in 0..self.rows {
            for c in 0..self.cols {
                let raw = self.code(r, c)?;
                if !self.scheme.element.is_finite_code(raw) {
                    return Err(QuantError::InvalidData(format!(
                        "code {raw:#04x} at ({r}, {c}) is not a finite {:?} value",
                        self.scheme.element
                    )));
                }
            }
        }
        Ok(())
    }

    /// Index into `scales` / `zeros` of element (r, c), honouring g_idx.
    /// Errors on an invalid scheme or shape (fields are public, so a zero
    /// group size cannot be ruled out here), out-of-range coordinates or
    /// g_idx entries.
    pub fn scale_index(&self, r: usize, c: usize) -> Result<usize, QuantError> {
        self.scheme.validate(self.rows, self.cols)?;
        self.grid_index(r, c)
    }

    /// [`Self::scale_index`] for a tensor whose scheme and shape were
    /// already validated (no division by a zero group size, no overflow).
    #[inline]
    fn grid_index(&self, r: usize, c: usize) -> Result<usize, QuantError> {
        if r >= self.rows || c >= self.cols {
            return Err(QuantError::Shape(format!(
                "element ({r}, {c}) outside {} x {}",
                self.rows, self.cols
            )));
        }
        match (&self.g_idx, self.scheme.granularity) {
            (Some(g_idx), Granularity::PerGroup { group_size }) => {
                let n_groups = self.cols / group_size;
                let g = *g_idx.get(c).ok_or_else(|| {
                    QuantError::Shape(format!("g_idx has no entry for column {c}"))
                })? as usize;
                if g >= n_groups {
                    return Err(QuantError::InvalidData(format!(
                        "g_idx[{c}] = {g} is out of range ({n_groups} groups)"
                    )));
                }
                Ok(r * n_groups + g)
            }
            _ => Ok(self.scheme.scale_index(r, c, self.cols)),
        }
    }

    /// The raw packed code of element (r, c) (b-bit pattern; signed
    /// integers in two's complement). Decode with `scheme.element.decode`.
    pub fn code(&self, r: usize, c: usize) -> Result<u8, QuantError> {
        if r >= self.rows || c >= self.cols {
            return Err(QuantError::Shape(format!(
                "element ({r}, {c}) outside {} x {}",
                self.rows, self.cols
            )));
        }
        let row_bytes = self.scheme.row_bytes(self.cols)?;
        let too_short = || QuantError::Shape(format!("packed data too short for row {r}"));
        let start = r.checked_mul(row_bytes).ok_or_else(too_short)?;
        let end = start.checked_add(row_bytes).ok_or_else(too_short)?;
        let row = self.data.get(start..end).ok_or_else(too_short)?;
        read_code(row, c, self.scheme.element.bits())
            .ok_or_else(|| QuantError::Shape(format!("code ({r}, {c}) outside the packed row")))
    }

    /// Dequantizes row `r` into `out` (length K).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        self.check_lengths()?;
        if r >= self.rows {
            return Err(QuantError::Shape(format!(
                "row {r} outside {} rows",
                self.rows
            )));
        }
        if out.len() != self.cols {
            return Err(QuantError::Shape(format!(
                "output row has {} elements, expected K = {}",
                out.len(),
                self.cols
            )));
        }
        let bits = self.scheme.element.bits();
        let row_bytes = self.scheme.row_bytes(self.cols)?;
        let row = &self.data[r * row_bytes..(r + 1) * row_bytes];
        for (c, slot) in out.iter_mut().enumerate() {
            let raw = read_code(row, c, bits).ok_or_else(|| {
                QuantError::Shape(format!("code ({r}, {c}) outside the packed row"))
            })?;
            let g = self.grid_index(r, c)?;
            let zero = self.zeros.as_ref().map_or(0.0, |z| z[g]);
            *slot = (self.global_scale * self.scales[g]) * (self.scheme.element.decode(raw) - zero);
        }
        Ok(())
    }

    /// Dequantizes the whole matrix, row-major (N, K).
    pub fn dequantize(&self) -> Result<Vec<f32>, QuantError> {
        self.validate()?;
        let mut out = vec![0.0f32; self.rows * self.cols]; // (N, K)
        out.par_chunks_mut(self.cols)
            .enumerate()
            .try_for_each(|(r, row)| self.dequantize_row(r, row))?;
        Ok(out)
    }
}
