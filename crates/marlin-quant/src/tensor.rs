//! `QuantTensor`: the canonical in-memory form of a quantized matrix.

use crate::scheme::QuantScheme;

/// A quantized (N, K) weight matrix. `y = x · Wᵀ` contracts over K.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantTensor {
    pub scheme: QuantScheme,
    /// N: output features.
    pub rows: usize,
    /// K: input features (reduction dimension).
    pub cols: usize,
    /// Packed codes in `scheme.layout`.
    pub data: Vec<u8>,
    /// Scales, row-major over the scale grid of `scheme.granularity`
    /// (PerTensor: 1; PerChannel: N; PerGroup: N x K/g; Block2d:
    /// ceil(N/r) x ceil(K/c)). Each value is exactly representable in
    /// `scheme.scale_dtype`.
    pub scales: Vec<f32>,
    /// Zero points on the same grid as `scales` (None when
    /// `scheme.zero_point == ZeroPoint::None`).
    pub zeros: Option<Vec<f32>>,
    /// Per-tensor second-level scale (1.0 unless `scheme.global_scale`).
    pub global_scale: f32,
    /// Act-order permutation: group index of each K column (GPTQ g_idx).
    pub g_idx: Option<Vec<u32>>,
}
