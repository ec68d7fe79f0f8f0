//! `QuantScheme`: a description of how a weight matrix is quantized.

/// The element (code) type of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// Integer codes of `bits` bits (2..=8). `signed: true` is the symmetric
    /// two's-complement grid [-2^(b-1), 2^(b-1)-1]; `signed: false` is the
    /// unsigned grid [0, 2^b - 1], used with a zero point.
    Int { bits: u8, signed: bool },
    /// FP4 E2M1 (values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}).
    Fp4E2M1,
    /// FP8 E4M3 (OCP "fn" variant: no infinities, max 448).
    Fp8E4M3,
    /// FP8 E5M2 (IEEE-like, with infinities).
    Fp8E5M2,
    /// NormalFloat4 (QLoRA's 16-level grid).
    Nf4,
}

/// Which elements share one scale (and zero point). Shapes are (N, K): N
/// output features (rows), K input features (the reduction dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    PerTensor,
    /// One scale per output row.
    PerChannel,
    /// One scale per `group_size` consecutive elements of a row along K.
    PerGroup { group_size: usize },
    /// One scale per `rows` x `cols` tile (DeepSeek FP8 uses 128x128).
    Block2d { rows: usize, cols: usize },
}

/// Storage type of the scales. Scales held in [`crate::QuantTensor`] are f32
/// values that are exactly representable in this dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleDType {
    F32,
    F16,
    BF16,
    /// Power-of-two exponent byte (OCP MX).
    E8M0,
    /// FP8 E4M3 scale (NVFP4).
    E4M3,
}

/// Zero-point handling: dequantized value = scale * (code - zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZeroPoint {
    None,
    /// Integer zero point on the code grid (GPTQ / AWQ style).
    Int,
    /// Arbitrary float zero point.
    Float,
}

/// Memory layout of the packed codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Row-major (N rows), each row holds K codes packed densely along K,
    /// little-endian bit order, rows padded to whole bytes. See
    /// `docs/FORMATS.md` for the exact bit layout per element width.
    KMajorDense,
}

/// A full description of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantScheme {
    pub element: ElementType,
    pub granularity: Granularity,
    pub scale_dtype: ScaleDType,
    pub zero_point: ZeroPoint,
    /// A second-level f32 scale over the whole tensor (NVFP4's per-tensor
    /// scale): value = global_scale * scale * (code - zero).
    pub global_scale: bool,
    pub layout: Layout,
}
