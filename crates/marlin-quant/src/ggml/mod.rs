//! GGUF / ggml block formats, kept in their native block layout.

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

/// A ggml-typed (rows, cols) matrix in its native block layout: each row
/// holds `cols` elements as consecutive blocks.
#[derive(Clone, Debug)]
pub struct GgmlTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}
