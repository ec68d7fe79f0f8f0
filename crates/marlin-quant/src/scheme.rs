//! `QuantScheme`: a description of how a weight matrix is quantized.

use crate::QuantError;

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
    PerGroup {
        group_size: usize,
    },
    /// One scale per `rows` x `cols` tile (DeepSeek FP8 uses 128x128).
    Block2d {
        rows: usize,
        cols: usize,
    },
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

impl QuantScheme {
    /// Signed symmetric integer codes (two's complement), no zero point.
    pub fn int_sym(bits: u8, granularity: Granularity, scale_dtype: ScaleDType) -> Self {
        Self::plain(
            ElementType::Int { bits, signed: true },
            granularity,
            scale_dtype,
            ZeroPoint::None,
        )
    }

    /// Unsigned integer codes with an integer zero point (GPTQ / AWQ style).
    pub fn int_asym(bits: u8, granularity: Granularity, scale_dtype: ScaleDType) -> Self {
        Self::plain(
            ElementType::Int {
                bits,
                signed: false,
            },
            granularity,
            scale_dtype,
            ZeroPoint::Int,
        )
    }

    /// INT4 symmetric, f16 scale per group of `group_size` along K.
    pub fn int4_sym(group_size: usize) -> Self {
        Self::int_sym(4, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT4 asymmetric (unsigned codes, integer zero point), f16 scale per group.
    pub fn int4_asym(group_size: usize) -> Self {
        Self::int_asym(4, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT3 symmetric, f16 scale per group.
    pub fn int3_sym(group_size: usize) -> Self {
        Self::int_sym(3, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT3 asymmetric, f16 scale per group.
    pub fn int3_asym(group_size: usize) -> Self {
        Self::int_asym(3, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT2 symmetric, f16 scale per group.
    pub fn int2_sym(group_size: usize) -> Self {
        Self::int_sym(2, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT2 asymmetric, f16 scale per group.
    pub fn int2_asym(group_size: usize) -> Self {
        Self::int_asym(2, Granularity::PerGroup { group_size }, ScaleDType::F16)
    }

    /// INT8 symmetric, one f32 scale per output row.
    pub fn int8_per_channel() -> Self {
        Self::int_sym(8, Granularity::PerChannel, ScaleDType::F32)
    }

    /// INT8 asymmetric, one f32 scale and integer zero point per group.
    pub fn int8_asym(group_size: usize) -> Self {
        Self::int_asym(8, Granularity::PerGroup { group_size }, ScaleDType::F32)
    }

    /// OCP MXFP4: E2M1 elements, one E8M0 scale per 32 along K.
    pub fn mxfp4() -> Self {
        Self::plain(
            ElementType::Fp4E2M1,
            Granularity::PerGroup { group_size: 32 },
            ScaleDType::E8M0,
            ZeroPoint::None,
        )
    }

    /// NVIDIA NVFP4: E2M1 elements, one E4M3 scale per 16 along K, plus one
    /// f32 scale per tensor.
    pub fn nvfp4() -> Self {
        Self {
            global_scale: true,
            ..Self::plain(
                ElementType::Fp4E2M1,
                Granularity::PerGroup { group_size: 16 },
                ScaleDType::E4M3,
                ZeroPoint::None,
            )
        }
    }

    /// FP8 E4M3, one f32 scale per output row.
    pub fn fp8_e4m3_per_channel() -> Self {
        Self::plain(
            ElementType::Fp8E4M3,
            Granularity::PerChannel,
            ScaleDType::F32,
            ZeroPoint::None,
        )
    }

    /// FP8 E4M3, one f32 scale for the whole tensor.
    pub fn fp8_e4m3_per_tensor() -> Self {
        Self::plain(
            ElementType::Fp8E4M3,
            Granularity::PerTensor,
            ScaleDType::F32,
            ZeroPoint::None,
        )
    }

    /// FP8 E4M3 with one f32 scale per 128 x 128 tile (DeepSeek-V3 checkpoints).
    pub fn fp8_e4m3_block128() -> Self {
        Self::plain(
            ElementType::Fp8E4M3,
            Granularity::Block2d {
                rows: 128,
                cols: 128,
            },
            ScaleDType::F32,
            ZeroPoint::None,
        )
    }

    /// FP8 E5M2, one f32 scale per output row.
    pub fn fp8_e5m2_per_channel() -> Self {
        Self::plain(
            ElementType::Fp8E5M2,
            Granularity::PerChannel,
            ScaleDType::F32,
            ZeroPoint::None,
        )
    }

    /// NF4 with an f32 absmax scale per group (bitsandbytes uses 64).
    pub fn nf4(group_size: usize) -> Self {
        Self::plain(
            ElementType::Nf4,
            Granularity::PerGroup { group_size },
            ScaleDType::F32,
            ZeroPoint::None,
        )
    }

    /// FP4 E2M1 with any granularity and scale dtype.
    pub fn fp4_e2m1(granularity: Granularity, scale_dtype: ScaleDType) -> Self {
        Self::plain(
            ElementType::Fp4E2M1,
            granularity,
            scale_dtype,
            ZeroPoint::None,
        )
    }

    /// A scheme without a global scale, in the dense K-major layout.
    pub fn plain(
        element: ElementType,
        granularity: Granularity,
        scale_dtype: ScaleDType,
        zero_point: ZeroPoint,
    ) -> Self {
        Self {
            element,
            granularity,
            scale_dtype,
            zero_point,
            global_scale: false,
            layout: Layout::KMajorDense,
        }
    }

    /// The same scheme with another granularity.
    pub fn with_granularity(self, granularity: Granularity) -> Self {
        Self {
            granularity,
            ..self
        }
    }

    /// The same scheme with another scale dtype.
    pub fn with_scale_dtype(self, scale_dtype: ScaleDType) -> Self {
        Self {
            scale_dtype,
            ..self
        }
    }

    /// The same scheme with another zero-point kind.
    pub fn with_zero_point(self, zero_point: ZeroPoint) -> Self {
        Self { zero_point, ..self }
    }

    /// The same scheme with or without a per-tensor global scale.
    pub fn with_global_scale(self, global_scale: bool) -> Self {
        Self {
            global_scale,
            ..self
        }
    }

    /// Checks the scheme alone: integer width in 2..=8, non-zero group and
    /// block sizes, and the zero-point rules (signed integers and float
    /// elements take no zero point; unsigned integers need one; a float zero
    /// point cannot be stored as E8M0).
    pub fn validate_scheme(&self) -> Result<(), QuantError> {
        self.element.validate()?;
        match self.granularity {
            Granularity::PerGroup { group_size: 0 } => {
                return Err(QuantError::Unsupported("group size 0".into()));
            }
            Granularity::Block2d { rows, cols } if rows == 0 || cols == 0 => {
                return Err(QuantError::Unsupported(format!(
                    "2D block of {rows} x {cols}"
                )));
            }
            _ => {}
        }
        match (self.element, self.zero_point) {
            (ElementType::Int { signed: true, .. }, ZeroPoint::Int | ZeroPoint::Float) => {
                return Err(QuantError::Unsupported(
                    "signed integer codes are symmetric: use unsigned codes with a zero point"
                        .into(),
                ))
            }
            (ElementType::Int { signed: false, .. }, ZeroPoint::None) => {
                return Err(QuantError::Unsupported(
                    "unsigned integer codes need a zero point (Int or Float)".into(),
                ))
            }
            (e, ZeroPoint::Int | ZeroPoint::Float) if e.is_float() => {
                return Err(QuantError::Unsupported(format!(
                    "{e:?} elements take no zero point"
                )))
            }
            _ => {}
        }
        if self.zero_point == ZeroPoint::Float && self.scale_dtype == ScaleDType::E8M0 {
            return Err(QuantError::Unsupported(
                "a float zero point cannot be stored as E8M0".into(),
            ));
        }
        Ok(())
    }

    /// Checks the scheme against an (rows, cols) = (N, K) matrix: both
    /// non-zero, the group size divides K, and everything
    /// [`Self::validate_scheme`] checks.
    pub fn validate(&self, rows: usize, cols: usize) -> Result<(), QuantError> {
        self.validate_scheme()?;
        if rows == 0 || cols == 0 {
            return Err(QuantError::Shape(format!("empty matrix {rows} x {cols}")));
        }
        if rows.checked_mul(cols).is_none() {
            return Err(QuantError::Shape(format!("{rows} x {cols} overflows")));
        }
        if let Granularity::PerGroup { group_size } = self.granularity {
            if !cols.is_multiple_of(group_size) {
                return Err(QuantError::GroupSize {
                    group: group_size,
                    k: cols,
                });
            }
        }
        crate::pack::packed_len(rows, cols, self.element.bits())?;
        Ok(())
    }

    /// Shape (grid rows, grid cols) of the scale (and zero-point) grid of an
    /// (N, K) matrix: PerTensor (1, 1); PerChannel (N, 1); PerGroup
    /// (N, K / g); Block2d (ceil(N / r), ceil(K / c)).
    pub fn scale_grid(&self, rows: usize, cols: usize) -> Result<(usize, usize), QuantError> {
        self.validate(rows, cols)?;
        Ok(match self.granularity {
            Granularity::PerTensor => (1, 1),
            Granularity::PerChannel => (rows, 1),
            Granularity::PerGroup { group_size } => (rows, cols / group_size),
            Granularity::Block2d { rows: br, cols: bc } => (rows.div_ceil(br), cols.div_ceil(bc)),
        })
    }

    /// Number of scales (and zero points) of an (N, K) matrix.
    pub fn num_scales(&self, rows: usize, cols: usize) -> Result<usize, QuantError> {
        let (gr, gc) = self.scale_grid(rows, cols)?;
        Ok(gr * gc)
    }

    /// Index into the row-major scale grid of element (r, c) of an (N, K)
    /// matrix, without act-order (see `QuantTensor::scale_index` for g_idx).
    /// The caller guarantees r < N, c < K and a validated scheme.
    #[inline]
    pub fn scale_index(&self, r: usize, c: usize, cols: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor => 0,
            Granularity::PerChannel => r,
            Granularity::PerGroup { group_size } => r * (cols / group_size) + c / group_size,
            Granularity::Block2d { rows: br, cols: bc } => (r / br) * cols.div_ceil(bc) + c / bc,
        }
    }

    /// Bytes of one packed row of K codes.
    pub fn row_bytes(&self, cols: usize) -> Result<usize, QuantError> {
        crate::pack::row_bytes(cols, self.element.bits())
    }

    /// Bytes of the packed codes of an (N, K) matrix.
    pub fn data_bytes(&self, rows: usize, cols: usize) -> Result<usize, QuantError> {
        crate::pack::packed_len(rows, cols, self.element.bits())
    }

    /// Storage bits of one zero point: integer zero points are stored at the
    /// code width, float ones at the scale dtype; 0 without zero points.
    pub fn zero_bits(&self) -> u32 {
        match self.zero_point {
            ZeroPoint::None => 0,
            ZeroPoint::Int => u32::from(self.element.bits()),
            ZeroPoint::Float => self.scale_dtype.bits(),
        }
    }

    /// Average storage bits per weight for large matrices: the code width
    /// plus the scale and zero-point storage amortised over the elements
    /// sharing them (PerGroup: g, Block2d: r x c). Per-tensor and per-channel
    /// scales and the global scale amortise to ~0 and are not counted; use
    /// [`Self::storage_bits`] for the exact total of a given shape.
    pub fn bits_per_weight(&self) -> f64 {
        let code = f64::from(self.element.bits());
        let per_scale = f64::from(self.scale_dtype.bits() + self.zero_bits());
        match self.granularity {
            Granularity::PerTensor | Granularity::PerChannel => code,
            Granularity::PerGroup { group_size } => code + per_scale / group_size as f64,
            Granularity::Block2d { rows, cols } => code + per_scale / (rows as f64 * cols as f64),
        }
    }

    /// Exact storage of an (N, K) matrix in bits: packed rows (with their
    /// padding), scales, zero points and the f32 global scale. g_idx (act
    /// order) is not included.
    pub fn storage_bits(&self, rows: usize, cols: usize) -> Result<u64, QuantError> {
        let overflow = || QuantError::Shape(format!("storage of {rows} x {cols} overflows u64"));
        let data_bits = u64::try_from(self.data_bytes(rows, cols)?)
            .ok()
            .and_then(|b| b.checked_mul(8))
            .ok_or_else(overflow)?;
        let n_scales = u64::try_from(self.num_scales(rows, cols)?).map_err(|_| overflow())?;
        let per_scale = u64::from(self.scale_dtype.bits() + self.zero_bits());
        let global = if self.global_scale { 32 } else { 0 };
        n_scales
            .checked_mul(per_scale)
            .and_then(|s| s.checked_add(data_bits))
            .and_then(|s| s.checked_add(global))
            .ok_or_else(overflow)
    }
}
