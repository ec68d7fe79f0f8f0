//! Checked launches of kernels/ggml_blocks.cu and the cuBLAS calls of the
//! prefill path. Callers check buffer lengths first (layout.rs).

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::f16;
use marlin_quant::GgmlType;

use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

pub const MODULE: &str = "ggml_blocks";
pub const SOURCE: &str = include_str!("../kernels/ggml_blocks.cu");

/// Rows per block of the decode kernels (MMVQ_WARPS in the source: one
/// warp per row).
pub const ROWS_PER_BLOCK: usize = 4;
/// Largest m of the decode kernels (one instantiation per m).
pub const DECODE_MAX_M: usize = 8;

macro_rules! per_m {
    ($prefix:literal, $name:literal) => {
        [
            concat!($prefix, $name, "_m1"),
            concat!($prefix, $name, "_m2"),
            concat!($prefix, $name, "_m3"),
            concat!($prefix, $name, "_m4"),
            concat!($prefix, $name, "_m5"),
            concat!($prefix, $name, "_m6"),
            concat!($prefix, $name, "_m7"),
            concat!($prefix, $name, "_m8"),
        ]
    };
}

/// The decode kernel of a block type for m rows (1..=8).
pub fn mmvq_name(ty: GgmlType, m: usize) -> Option<&'static str> {
    use GgmlType::*;
    let names = match ty {
        Q4_0 => per_m!("ggml_mmvq_", "q4_0"),
        Q4_1 => per_m!("ggml_mmvq_", "q4_1"),
        Q5_0 => per_m!("ggml_mmvq_", "q5_0"),
        Q5_1 => per_m!("ggml_mmvq_", "q5_1"),
        Q8_0 => per_m!("ggml_mmvq_", "q8_0"),
        Q4K => per_m!("ggml_mmvq_", "q4_k"),
        Q5K => per_m!("ggml_mmvq_", "q5_k"),
        Q6K => per_m!("ggml_mmvq_", "q6_k"),
        _ => return None,
    };
    names.get(m.checked_sub(1)?).copied()
}

/// The dense decode kernel (f16 or f32 weights) for m rows (1..=8).
pub fn gemv_name(half: bool, m: usize) -> Option<&'static str> {
    let names = if half {
        per_m!("ggml_gemv_", "f16")
    } else {
        per_m!("ggml_gemv_", "f32")
    };
    names.get(m.checked_sub(1)?).copied()
}

/// (dequant-to-f16, get_rows) kernels of a block type.
pub fn block_kernel_names(ty: GgmlType) -> Option<(&'static str, &'static str)> {
    use GgmlType::*;
    macro_rules! pair {
        ($n:literal) => {
            (
                concat!("ggml_dequant_f16_", $n),
                concat!("ggml_get_rows_", $n),
            )
        };
    }
    Some(match ty {
        Q4_0 => pair!("q4_0"),
        Q4_1 => pair!("q4_1"),
        Q5_0 => pair!("q5_0"),
        Q5_1 => pair!("q5_1"),
        Q8_0 => pair!("q8_0"),
        Q4K => pair!("q4_k"),
        Q5K => pair!("q5_k"),
        Q6K => pair!("q6_k"),
        _ => return None,
    })
}

pub const QUANTIZE: &str = "ggml_quantize_q8x32";
pub const GET_ROWS_DENSE: &str = "ggml_get_rows_dense";
pub const X_TO_F16: &str = "ggml_x_to_f16_scaled";
pub const SCALE_ROWS: &str = "ggml_scale_rows";

/// Loads (compiling at first use) kernel `name`.
pub fn load(dev: &CudaDevice, name: &'static str) -> Result<cudarc::driver::CudaFunction> {
    dev.function(MODULE, SOURCE, name, 0)
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds i32")))
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} = {v} exceeds u32")))
}

fn grid_1d(items: usize, per_block: usize) -> Result<u32> {
    let blocks = items.div_ceil(per_block).max(1);
    if blocks > i32::MAX as usize {
        return Err(CudaError::Shape(format!("grid of {blocks} blocks")));
    }
    Ok(blocks as u32)
}

/// x (m, K) f32 -> int8 codes (m, K) and {d, s} (m, K/32). K % 32 == 0.
pub fn quantize_q8x32(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    m: usize,
    k: usize,
    qs: &mut CudaSlice<i8>,
    ds: &mut CudaSlice<f32>,
) -> Result<()> {
    let blocks = m * k / 32;
    if !k.is_multiple_of(32) || qs.len() < m * k || ds.len() < 2 * blocks || x.len() < m * k {
        return Err(CudaError::Shape(format!(
            "quantize_q8x32: m={m} K={k}, buffers x {} qs {} ds {}",
            x.len(),
            qs.len(),
            ds.len()
        )));
    }
    let func = load(dev, QUANTIZE)?;
    let blocks_i32 = i32_of(blocks, "activation blocks")?;
    let cfg = LaunchConfig {
        grid_dim: (grid_1d(blocks, 8)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = dev.stream().launch_builder(&func);
    l.arg(x).arg(qs).arg(ds).arg(&blocks_i32);
    // SAFETY: matches ggml_quantize_q8x32; x >= m*K, qs >= m*K, ds >= 2*m*K/32.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {QUANTIZE}"), e))?;
    Ok(())
}

/// y (m, rows) = blocks · quantized activations, m in 1..=8 (views: a
/// launch of some rows of a larger call).
#[allow(clippy::too_many_arguments)]
pub fn mmvq(
    dev: &CudaDevice,
    ty: GgmlType,
    codes: &CudaSlice<u8>,
    meta: &CudaSlice<u8>,
    qs: &CudaView<'_, i8>,
    ds: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
    m: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let name = mmvq_name(ty, m)
        .ok_or_else(|| CudaError::Unsupported(format!("{} decode at m={m}", ty.name())))?;
    if qs.len() < m * cols || ds.len() < 2 * m * cols / 32 || y.len() < m * rows {
        return Err(CudaError::Shape(format!(
            "ggml decode m={m} {rows}x{cols}: activation codes {}, scales {}, output {}",
            qs.len(),
            ds.len(),
            y.len()
        )));
    }
    let func = load(dev, name)?;
    let (rows_i32, cols_i32) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let cfg = LaunchConfig {
        grid_dim: (grid_1d(rows, ROWS_PER_BLOCK)?, 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = dev.stream().launch_builder(&func);
    l.arg(codes)
        .arg(meta)
        .arg(qs)
        .arg(ds)
        .arg(y)
        .arg(&rows_i32)
        .arg(&cols_i32);
    // SAFETY: matches ggml_mmvq_*; codes/meta hold rows x cols of `ty` in
    // the split layout, qs/ds hold m rows of K, y >= m*rows (checked by the
    // caller).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

/// y (m, rows) = dense W · x, m in 1..=8.
#[allow(clippy::too_many_arguments)]
pub fn gemv_dense<T: cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    half: bool,
    w: &CudaSlice<T>,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    m: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let name = gemv_name(half, m)
        .ok_or_else(|| CudaError::Unsupported(format!("dense decode at m={m}")))?;
    let func = load(dev, name)?;
    let (rows_i32, cols_i32) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let cfg = LaunchConfig {
        grid_dim: (grid_1d(rows, ROWS_PER_BLOCK)?, 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = dev.stream().launch_builder(&func);
    l.arg(w).arg(x).arg(y).arg(&rows_i32).arg(&cols_i32);
    // SAFETY: matches ggml_gemv_*; w holds rows*cols f32 or f16 (per
    // `half`), x >= m*cols, y >= m*rows (checked by the caller).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

/// The weight dequantized into `out` (rows, cols) f16.
pub fn dequant_f16(
    dev: &CudaDevice,
    ty: GgmlType,
    codes: &CudaSlice<u8>,
    meta: &CudaSlice<u8>,
    out: &mut CudaSlice<f16>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (name, _) = block_kernel_names(ty).ok_or_else(|| super::layout::unsupported(ty))?;
    if out.len() < rows * cols {
        return Err(CudaError::Shape(format!(
            "dequant scratch of {} for {rows}x{cols}",
            out.len()
        )));
    }
    let func = load(dev, name)?;
    let chunks = rows * cols / 32;
    let blocks = grid_1d(chunks, 256)?.min(dev.sm_count() as u32 * 16);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows_i32, cols_i32) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let mut l = dev.stream().launch_builder(&func);
    l.arg(codes)
        .arg(meta)
        .arg(out)
        .arg(&rows_i32)
        .arg(&cols_i32);
    // SAFETY: matches ggml_dequant_f16_*; out >= rows*cols (checked above).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

/// Block rows ids[..n] dequantized times `scale` into out (n, cols).
#[allow(clippy::too_many_arguments)]
pub fn get_rows_blocks(
    dev: &CudaDevice,
    ty: GgmlType,
    codes: &CudaSlice<u8>,
    meta: &CudaSlice<u8>,
    ids: &CudaSlice<u32>,
    n: usize,
    scale: f32,
    out: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (_, name) = block_kernel_names(ty).ok_or_else(|| super::layout::unsupported(ty))?;
    let func = load(dev, name)?;
    let cfg = LaunchConfig {
        grid_dim: (u32_of(n, "get_rows n")?, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows_i32, cols_i32) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let mut l = dev.stream().launch_builder(&func);
    l.arg(codes)
        .arg(meta)
        .arg(ids)
        .arg(out)
        .arg(&rows_i32)
        .arg(&cols_i32)
        .arg(&scale);
    // SAFETY: matches ggml_get_rows_*; ids >= n, out >= n*cols (checked by
    // the caller); ids are range-checked in the kernel.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {name}"), e))?;
    Ok(())
}

/// Dense rows ids[..n] times `scale` into out (n, cols).
#[allow(clippy::too_many_arguments)]
pub fn get_rows_dense<T: cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    half: bool,
    w: &CudaSlice<T>,
    ids: &CudaSlice<u32>,
    n: usize,
    scale: f32,
    out: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let func = load(dev, GET_ROWS_DENSE)?;
    let cfg = LaunchConfig {
        grid_dim: (u32_of(n, "get_rows n")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let is_f16 = i32::from(half);
    let (rows_i32, cols_i32) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let mut l = dev.stream().launch_builder(&func);
    l.arg(w)
        .arg(&is_f16)
        .arg(ids)
        .arg(out)
        .arg(&rows_i32)
        .arg(&cols_i32)
        .arg(&scale);
    // SAFETY: matches ggml_get_rows_dense; w holds rows*cols of f16/f32 per
    // is_f16; ids >= n, out >= n*cols (checked by the caller).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {GET_ROWS_DENSE}"), e))?;
    Ok(())
}

/// x (m, K) -> f16 row-scaled copy and the rows' inverse scales.
pub fn x_to_f16_scaled(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    m: usize,
    k: usize,
    xh: &mut CudaSlice<f16>,
    inv_scale: &mut CudaSlice<f32>,
) -> Result<()> {
    if x.len() < m * k || xh.len() < m * k || inv_scale.len() < m {
        return Err(CudaError::Shape(format!("x_to_f16 m={m} K={k}")));
    }
    let func = load(dev, X_TO_F16)?;
    let cfg = LaunchConfig {
        grid_dim: (u32_of(m, "m")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let k_i32 = i32_of(k, "K")?;
    let mut l = dev.stream().launch_builder(&func);
    l.arg(x).arg(xh).arg(inv_scale).arg(&k_i32);
    // SAFETY: matches ggml_x_to_f16_scaled; sizes checked above.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {X_TO_F16}"), e))?;
    Ok(())
}

/// y (m, n) *= inv_scale[row].
pub fn scale_rows(
    dev: &CudaDevice,
    y: &mut CudaSlice<f32>,
    inv_scale: &CudaSlice<f32>,
    m: usize,
    n: usize,
) -> Result<()> {
    let func = load(dev, SCALE_ROWS)?;
    let blocks = grid_1d(m * n, 256)?.min(dev.sm_count() as u32 * 8);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (m_i32, n_i32) = (i32_of(m, "m")?, i32_of(n, "n")?);
    let mut l = dev.stream().launch_builder(&func);
    l.arg(y).arg(inv_scale).arg(&m_i32).arg(&n_i32);
    // SAFETY: matches ggml_scale_rows; y >= m*n, inv_scale >= m (caller).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err(&format!("launch {SCALE_ROWS}"), e))?;
    Ok(())
}

/// cuBLAS data types of the prefill GEMM's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmInputs {
    /// W and x f16, fp32 accumulation.
    F16,
    /// W and x f32 (full fp32, no TF32).
    F32,
}

/// y (m, rows) f32 = x (m, cols) · Wᵀ with W (rows, cols) and x of the
/// type `inputs` names, fp32 accumulation.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex<T>(
    dev: &CudaDevice,
    inputs: GemmInputs,
    w: &CudaSlice<T>,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<f32>,
    m: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let elem = match inputs {
        GemmInputs::F16 => 2,
        GemmInputs::F32 => 4,
    };
    if std::mem::size_of::<T>() != elem
        || w.len() < rows * cols
        || x.len() < m * cols
        || y.len() < m * rows
    {
        return Err(CudaError::Shape(format!(
            "gemm_ex {inputs:?} m={m} rows={rows} cols={cols}: buffers w {} x {} y {}",
            w.len(),
            x.len(),
            y.len()
        )));
    }
    let data_type = match inputs {
        GemmInputs::F16 => cudaDataType::CUDA_R_16F,
        GemmInputs::F32 => cudaDataType::CUDA_R_32F,
    };
    let (rows_i, m_i, cols_i) = (
        i32_of(rows, "rows")?,
        i32_of(m, "m")?,
        i32_of(cols, "cols")?,
    );
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = dev.stream();
    dev.with_blas(|blas| {
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        // SAFETY: W (rows, cols) row-major is cols x rows column-major (op T
        // gives rows x cols); x (m, cols) row-major is cols x m column-major;
        // y (m, rows) row-major is rows x m column-major. Sizes checked above;
        // alpha/beta are f32 host scalars as CUBLAS_COMPUTE_32F requires.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                rows_i,
                m_i,
                cols_i,
                (&alpha) as *const f32 as *const c_void,
                w_ptr as *const c_void,
                data_type,
                cols_i,
                x_ptr as *const c_void,
                data_type,
                cols_i,
                (&beta) as *const f32 as *const c_void,
                y_ptr as *mut c_void,
                cudaDataType::CUDA_R_32F,
                rows_i,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Cublas {
            context: format!("GemmEx {inputs:?} M={m} N={rows} K={cols}"),
            message: format!("{e:?}"),
        })
    })
}
