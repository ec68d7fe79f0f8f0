//! Every op a decode step needs, on the GPU, on f32 activations: RMSNorm
//! (plain, fused with the residual add, per head for QK-norm), RoPE, SwiGLU /
//! GeGLU, add / scale / soft-cap, f16 <-> f32, embedding gather, the f16 KV
//! cache with its write, attention (flash-decoding for decode, a tiled
//! online-softmax kernel for prefill, GQA, sliding windows, logit soft-cap)
//! and on-device greedy / top-k / top-p sampling; `fused`: the decoder's
//! fused kernels (residual + norm, QK-norm + RoPE + KV write, gated
//! activation) on f32 or f16 GEMM activations; `launch`: kernel launches
//! with programmatic dependent launch (the decode step's kernels).
//!
//! Contract shared by every function here, so that a decode step built from
//! them can be captured in a CUDA graph:
//! - everything runs on the device's one stream, in call order;
//! - no function allocates, synchronises or reads a device value on the
//!   host: per-step values (token ids, positions, sequence ids, uniforms)
//!   come in device buffers, and kernels treat out-of-range ones as
//!   "skip" / "zeros", never as an out-of-bounds access;
//! - buffers may be longer than needed (scratch sized for the largest
//!   batch): each is checked for `len >= needed`, else [`CudaError::Shape`].
//!
//! Layouts are row-major: activations of `rows` tokens `(rows, dim)`, per-head
//! tensors `(rows, n_heads, head_dim)`. The CPU references are the ops of
//! `marlin_cpu::ops`; `tests/gpu_ops.rs` compares every kernel with them.

mod attention;
mod elementwise;
mod fused;
mod kv;
pub mod launch;
mod paged;
mod rope;
mod sampling;

pub use attention::{
    attention, attention_decode, attention_decode_rope, attention_prefill, attention_prefill_with,
    attn_cluster_launches, attn_rope_fusion_enabled, attn_stamp_report, attn_stamps_enabled,
    set_attn_override, AttnOverride, AttnParams, PrefillKernel, RopeInputs, DECODE_MAX_ROWS,
    SUPPORTED_HEAD_DIMS,
};
pub use elementwise::{
    add_inplace, add_rms_norm, embedding_rows, f16_to_f32, f32_to_f16, gelu_tanh_mul, rms_norm,
    rms_norm_heads_inplace, scale_inplace, silu_mul, softcap_inplace,
};
pub use fused::{
    glu, logits_from_f16, qkv_rope_kv, resid_norm, resid_norm_with, spin, ActElem, HeadShape,
    KvDest, NormForm, ProjRows, NORM_VEC_MAX_DIM, QKV_MAX_HEAD_DIM,
};
pub use kv::{kv_write, GpuKvCache};
pub use paged::{
    pack_block_tables, paged_attention, paged_attention_decode_rope, paged_block_bytes,
    paged_kv_write, paged_rope_fusion_enabled, PagedKvPool, PAGED_HEAD_DIMS,
};
pub use rope::{rope_inplace, GpuRope};
pub use sampling::{
    argmax_rows, argmax_rows_ws, argmax_rows_ws_f16, check_sampling_params, pack_row_choices,
    sample_rows, sample_rows_each, sample_rows_each_ws, sample_rows_ws, ArgmaxWorkspace,
    DeviceSampling, RowChoice, MAX_TOP_K, NO_TOKEN, ROW_PARAM_WORDS,
};

use cudarc::driver::LaunchConfig;

use crate::device::CudaDevice;
use crate::error::{CudaError, Result};

pub(crate) const OPS_MODULE: &str = "decode_ops";
pub(crate) const OPS_SOURCE: &str = include_str!("../kernels/ops.cu");

/// `a * b`, or a shape error naming `what`.
pub(crate) fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| CudaError::Shape(format!("{what}: {a} x {b} overflows usize")))
}

/// A buffer of `have` elements must hold `need`.
pub(crate) fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(CudaError::Shape(format!(
            "{what}: buffer of {have} elements, {need} needed"
        )));
    }
    Ok(())
}

pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds i32")))
}

pub(crate) fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds u32")))
}

pub(crate) fn to_i64(what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds i64")))
}

/// Threads per block of the grid-stride elementwise kernels.
const ELEMENTWISE_THREADS: u32 = 256;

/// Grid-stride launch over `n` (> 0) elements: enough blocks to fill the
/// device several times over, capped so that huge `n` loops instead.
pub(crate) fn grid_stride(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let cap = (dev.sm_count() * 16).max(1);
    let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, cap);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_checks() {
        assert!(check_len("x", 10, 10).is_ok());
        assert!(check_len("x", 11, 10).is_ok());
        assert!(matches!(check_len("x", 9, 10), Err(CudaError::Shape(_))));
        assert!(mul("x", usize::MAX, 2).is_err());
        assert_eq!(mul("x", 3, 4).unwrap(), 12);
        assert!(to_i32("x", 1 << 31).is_err());
        assert_eq!(to_i32("x", 7).unwrap(), 7);
    }
}
