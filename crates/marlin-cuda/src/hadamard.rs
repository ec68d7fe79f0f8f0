//! Block-diagonal Hadamard rotation of activation rows on the GPU, the
//! online half of MR-GPTQ (`kernels/hadamard.cu`): `x·Rᵀ` for x (rows, k),
//! zero-padded to `padded_k` (a multiple of the block), each block of the
//! row transformed by the normalised Walsh-Hadamard matrix. Matches the CPU
//! transform `marlin_models::layers::hadamard::rotate_rows`
//! (`tests/gpu_hadamard.rs`). The GPU decoder's rotated linears
//! (`marlin_models::gpu::linear::GpuLinear::Rotated`) call it before their
//! product.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::ops::to_i32;

const MODULE: &str = "hadamard";
const SOURCE: &str = include_str!("kernels/hadamard.cu");
const FUNC: &str = "hadamard_rotate_rows";

/// Largest Hadamard block: one thread per element of a block.
pub const MAX_BLOCK: usize = 1024;

/// `out` (rows, padded_k) = rotated `x` (rows, k), with
/// padded_k = k rounded up to a multiple of `block` (a power of two,
/// 1..=[`MAX_BLOCK`]). Returns padded_k. Buffers may be longer than needed.
pub fn rotate_rows(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    rows: usize,
    k: usize,
    block: usize,
    out: &mut CudaSlice<f32>,
) -> Result<usize> {
    if !block.is_power_of_two() || block > MAX_BLOCK {
        return Err(CudaError::Shape(format!(
            "Hadamard block {block} (needs a power of two <= {MAX_BLOCK})"
        )));
    }
    if k == 0 {
        return Err(CudaError::Shape("Hadamard rotation of K = 0".into()));
    }
    let padded_k = k.div_ceil(block) * block;
    let need = |n: usize, what: &str| {
        rows.checked_mul(n)
            .ok_or_else(|| CudaError::Shape(format!("{what}: {rows} x {n} overflows")))
    };
    let (need_x, need_out) = (need(k, "x")?, need(padded_k, "out")?);
    if x.len() < need_x || out.len() < need_out {
        return Err(CudaError::Shape(format!(
            "Hadamard rotation: x holds {} of {need_x}, out {} of {need_out} values",
            x.len(),
            out.len()
        )));
    }
    if rows == 0 {
        return Ok(padded_k);
    }
    let to_u32 = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds u32")))
    };
    if rows > 65_535 {
        return Err(CudaError::Shape(format!(
            "{rows} rows (grid y limit 65535)"
        )));
    }
    let cfg = LaunchConfig {
        grid_dim: (
            to_u32(padded_k / block, "blocks")?,
            to_u32(rows, "rows")?,
            1,
        ),
        block_dim: (to_u32(block, "block")?, 1, 1),
        shared_mem_bytes: to_u32(block * 4, "shared bytes")?,
    };
    let (k32, pk32, b32) = (
        to_i32("k", k)?,
        to_i32("padded_k", padded_k)?,
        to_i32("block", block)?,
    );
    let norm = 1.0f32 / (block as f32).sqrt();
    let func = dev.function(MODULE, SOURCE, FUNC, 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(out).arg(&k32).arg(&pk32).arg(&b32).arg(&norm);
    // SAFETY: arguments in the order and types of hadamard_rotate_rows; x
    // holds rows x k values and out rows x padded_k (checked above); the
    // grid covers exactly rows x padded_k outputs, one thread each, and the
    // shared memory holds one block.
    unsafe { b.launch(cfg) }.map_err(|e| driver_err(&format!("launch {FUNC}"), e))?;
    Ok(padded_k)
}
