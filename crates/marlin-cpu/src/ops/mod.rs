//! Elementwise, normalisation, rotary and attention ops on f32 activations.
//!
//! Every op has a plain scalar version (`*_ref`, kept obviously right) and,
//! where it matters for speed, an AVX2+FMA version chosen once at run time
//! through [`simd::kernels`]. Tests compare the two on random inputs at
//! awkward lengths.
//!
//! Layout conventions: activations of `m` tokens are row-major `(m, d)`;
//! per-head tensors are `(m, n_heads, head_dim)`.

pub mod activation;
pub mod attention;
pub mod gemm;
pub mod norm;
pub mod rope;
pub mod simd;
pub mod softmax;

pub use activation::{gelu_tanh_mul, silu_mul, soft_cap};
pub use attention::{attention, attention_ref, AttentionParams, KvRows, KvView};
pub use norm::{rms_norm, rms_norm_inplace};
pub use rope::{Rope, RopeScaling, RopeStyle};
pub use softmax::softmax_inplace;

use crate::CpuError;

/// `len` must be a positive multiple of `row`: returns the number of rows.
pub(crate) fn rows_of(what: &str, len: usize, row: usize) -> Result<usize, CpuError> {
    if row == 0 || !len.is_multiple_of(row) {
        return Err(CpuError::Shape(format!(
            "{what}: {len} values are not whole rows of {row}"
        )));
    }
    Ok(len / row)
}
