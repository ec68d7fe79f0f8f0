//! GGUF / ggml block formats, kept in their native block layout.

use crate::QuantError;

pub mod blocks;
pub mod dequant;

pub use blocks::*;
pub use dequant::dequantize_row;

/// ggml tensor element types, with their GGUF type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    BF16 = 30,
    Mxfp4 = 39,
}

impl GgmlType {
    /// The type for a GGUF type id; `None` for ids marlin does not support.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            39 => Mxfp4,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Name as ggml prints it ("q4_K", "f16", ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_K",
            Q3K => "q3_K",
            Q4K => "q4_K",
            Q5K => "q5_K",
            Q6K => "q6_K",
            Q8K => "q8_K",
            Mxfp4 => "mxfp4",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Mxfp4 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            Mxfp4 => 17,
        }
    }

    /// Bytes of one row of `cols` elements; errors if `cols` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Result<usize, QuantError> {
        let bs = self.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(QuantError::Shape(format!(
                "{} rows need a multiple of {bs} elements, got {cols}",
                self.name()
            )));
        }
        (cols / bs)
            .checked_mul(self.type_size())
            .ok_or_else(|| QuantError::Shape(format!("row of {cols} {} overflows", self.name())))
    }

    /// Bits per weight including block scales.
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }
}

/// A ggml-typed (rows, cols) matrix in its native block layout: each row
/// holds `cols` elements as consecutive blocks.
#[derive(Clone, Debug)]
pub struct GgmlTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl GgmlTensor {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, QuantError> {
        let want = ty
            .row_bytes(cols)?
            .checked_mul(rows)
            .ok_or_else(|| QuantError::Shape(format!("{rows} rows of {cols} overflow")))?;
        if data.len() != want {
            return Err(QuantError::Shape(format!(
                "{} tensor {rows}x{cols} needs {want} bytes, got {}",
                ty.name(),
                data.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> Result<usize, QuantError> {
        self.ty.row_bytes(self.cols)
    }

    /// The packed bytes of row `r`.
    pub fn row(&self, r: usize) -> Result<&[u8], QuantError> {
        let rb = self.row_bytes()?;
        let start = r
            .checked_mul(rb)
            .filter(|_| r < self.rows)
            .ok_or_else(|| QuantError::Shape(format!("row {r} of {} rows", self.rows)))?;
        self.data
            .get(start..start + rb)
            .ok_or_else(|| QuantError::Shape(format!("row {r} past the end of the data")))
    }

    /// The whole tensor as f32, row-major (rows, cols), bit-identical to
    /// ggml's reference dequantization.
    pub fn dequantize(&self) -> Result<Vec<f32>, QuantError> {
        let n = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| QuantError::Shape(format!("{}x{} overflows", self.rows, self.cols)))?;
        let want = self.ty.row_bytes(self.cols)?.checked_mul(self.rows);
        if want != Some(self.data.len()) {
            return Err(QuantError::Shape(format!(
                "{} tensor {}x{} has {} bytes of data",
                self.ty.name(),
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        let mut out = vec![0f32; n];
        dequantize_row(self.ty, &self.data, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                assert!(t.type_size() > 0 && t.block_size() > 0);
            }
        }
        assert_eq!(GgmlType::Q4K.row_bytes(512).unwrap(), 288);
        assert!(GgmlType::Q4K.row_bytes(100).is_err());
        assert!(GgmlTensor::new(GgmlType::Q8_0, 2, 32, vec![0; 67]).is_err());
    }
}

#[cfg(test)]
mod fixture_tests;
