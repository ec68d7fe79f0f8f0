//! RMSNorm variants, gated activations, add / scale / soft-cap, f16 <-> f32
//! and the embedding gather (kernels in `kernels/ops.cu`).

use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};
use half::f16;

use super::{check_len, grid_stride, mul, to_i32, to_i64, to_u32, OPS_MODULE, OPS_SOURCE};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

/// Threads per block of the row kernels (one block per row).
const ROW_THREADS: u32 = 256;

/// Shapes of a row-wise norm: `x`, `out` hold `rows * dim`, `w` holds `dim`.
pub(crate) fn check_norm(
    what: &str,
    x_len: usize,
    w_len: usize,
    rows: usize,
    dim: usize,
    out_len: usize,
) -> Result<usize> {
    if dim == 0 {
        return Err(CudaError::Shape(format!("{what}: dim must be positive")));
    }
    let n = mul(what, rows, dim)?;
    check_len(&format!("{what} x"), x_len, n)?;
    check_len(&format!("{what} out"), out_len, n)?;
    check_len(&format!("{what} weight"), w_len, dim)?;
    to_i32(&format!("{what} dim"), dim)?;
    to_u32(&format!("{what} rows"), rows)?;
    Ok(n)
}

fn row_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `out (rows, dim) = x / rms(x) * (w + w_offset)`; `w` is `(dim)`.
/// `w_offset` is 1.0 for checkpoints that store Gemma's `w - 1`, else 0.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    w_offset: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    check_norm("rms_norm", x.len(), w.len(), rows, dim, out.len())?;
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_rms_norm", 0)?;
    let dim_i = dim as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x)
        .arg(w)
        .arg(out)
        .arg(&dim_i)
        .arg(&eps)
        .arg(&w_offset);
    // SAFETY: argument order and types match mops_rms_norm; x and out hold
    // rows*dim values, w holds dim (checked above).
    unsafe { b.launch(row_config(rows)) }.map_err(|e| driver_err("launch mops_rms_norm", e))?;
    Ok(())
}

/// `resid += delta; out = rms_norm(resid)`, all `(rows, dim)`.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm(
    dev: &CudaDevice,
    resid: &mut CudaSlice<f32>,
    delta: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    w_offset: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n = check_norm("add_rms_norm", resid.len(), w.len(), rows, dim, out.len())?;
    check_len("add_rms_norm delta", delta.len(), n)?;
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_add_rms_norm", 0)?;
    let dim_i = dim as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(resid)
        .arg(delta)
        .arg(w)
        .arg(out)
        .arg(&dim_i)
        .arg(&eps)
        .arg(&w_offset);
    // SAFETY: argument order and types match mops_add_rms_norm; resid, delta
    // and out hold rows*dim values, w holds dim (checked above).
    unsafe { b.launch(row_config(rows)) }.map_err(|e| driver_err("launch mops_add_rms_norm", e))?;
    Ok(())
}

/// QK-norm: RMSNorm of each of the `n_vectors` head vectors of `x`
/// `(n_vectors, head_dim)` in place, with the shared weight `w` `(head_dim)`.
pub fn rms_norm_heads_inplace(
    dev: &CudaDevice,
    x: &mut CudaSlice<f32>,
    w: &CudaSlice<f32>,
    n_vectors: usize,
    head_dim: usize,
    eps: f32,
    w_offset: f32,
) -> Result<()> {
    check_norm(
        "rms_norm_heads_inplace",
        x.len(),
        w.len(),
        n_vectors,
        head_dim,
        x.len(),
    )?;
    let n_vec_i = to_i32("rms_norm_heads_inplace vectors", n_vectors)?;
    if n_vectors == 0 {
        return Ok(());
    }
    const WARPS: usize = 8;
    let cfg = LaunchConfig {
        grid_dim: (n_vectors.div_ceil(WARPS) as u32, 1, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_rms_norm_heads", 0)?;
    let hd = head_dim as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x)
        .arg(w)
        .arg(&n_vec_i)
        .arg(&hd)
        .arg(&eps)
        .arg(&w_offset);
    // SAFETY: argument order and types match mops_rms_norm_heads; x holds
    // n_vectors*head_dim values, w holds head_dim (checked above).
    unsafe { b.launch(cfg) }.map_err(|e| driver_err("launch mops_rms_norm_heads", e))?;
    Ok(())
}

/// `n` elements of each buffer; returns n as the kernels' i64.
pub(crate) fn check_elementwise(what: &str, n: usize, lens: &[usize]) -> Result<i64> {
    for (i, &len) in lens.iter().enumerate() {
        check_len(&format!("{what} operand {i}"), len, n)?;
    }
    to_i64(&format!("{what} n"), n)
}

/// Launch the grid-stride kernel `b` over `n` (> 0) elements.
///
/// # Safety
/// `b` holds the arguments of `func_name` in the order and types of
/// kernels/ops.cu, and its buffers hold at least `n` values.
unsafe fn launch_elementwise(
    dev: &CudaDevice,
    mut b: LaunchArgs<'_>,
    func_name: &str,
    n: usize,
) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    unsafe { b.launch(grid_stride(dev, n)) }
        .map_err(|e| driver_err(&format!("launch {func_name}"), e))?;
    Ok(())
}

/// SwiGLU: `out = silu(gate) * up`, `n` elements.
pub fn silu_mul(
    dev: &CudaDevice,
    gate: &CudaSlice<f32>,
    up: &CudaSlice<f32>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n64 = check_elementwise("silu_mul", n, &[gate.len(), up.len(), out.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_silu_mul", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(gate).arg(up).arg(out).arg(&n64);
    // SAFETY: arguments in the order and types of mops_silu_mul; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_silu_mul", n) }
}

/// GeGLU with the tanh GELU (Gemma): `out = gelu_tanh(gate) * up`.
pub fn gelu_tanh_mul(
    dev: &CudaDevice,
    gate: &CudaSlice<f32>,
    up: &CudaSlice<f32>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n64 = check_elementwise("gelu_tanh_mul", n, &[gate.len(), up.len(), out.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_gelu_tanh_mul", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(gate).arg(up).arg(out).arg(&n64);
    // SAFETY: arguments in the order and types of mops_gelu_tanh_mul; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_gelu_tanh_mul", n) }
}

/// `x += y`, `n` elements.
pub fn add_inplace(
    dev: &CudaDevice,
    x: &mut CudaSlice<f32>,
    y: &CudaSlice<f32>,
    n: usize,
) -> Result<()> {
    let n64 = check_elementwise("add_inplace", n, &[x.len(), y.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_add_inplace", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(y).arg(&n64);
    // SAFETY: arguments in the order and types of mops_add_inplace; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_add_inplace", n) }
}

/// `x *= s`, `n` elements.
pub fn scale_inplace(dev: &CudaDevice, x: &mut CudaSlice<f32>, n: usize, s: f32) -> Result<()> {
    let n64 = check_elementwise("scale_inplace", n, &[x.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_scale_inplace", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(&n64).arg(&s);
    // SAFETY: arguments in the order and types of mops_scale_inplace; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_scale_inplace", n) }
}

/// `x = cap * tanh(x / cap)`, `n` elements (Gemma's logit soft-capping).
pub fn softcap_inplace(dev: &CudaDevice, x: &mut CudaSlice<f32>, n: usize, cap: f32) -> Result<()> {
    if !(cap.is_finite() && cap > 0.0) {
        return Err(CudaError::Shape(format!(
            "softcap_inplace: cap {cap} must be positive"
        )));
    }
    let n64 = check_elementwise("softcap_inplace", n, &[x.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_softcap_inplace", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(&n64).arg(&cap);
    // SAFETY: arguments in the order and types of mops_softcap_inplace; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_softcap_inplace", n) }
}

/// Round `n` values to f16 (round to nearest even).
pub fn f32_to_f16(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    n: usize,
    out: &mut CudaSlice<f16>,
) -> Result<()> {
    let n64 = check_elementwise("f32_to_f16", n, &[x.len(), out.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_f32_to_f16", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(out).arg(&n64);
    // SAFETY: arguments in the order and types of mops_f32_to_f16; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_f32_to_f16", n) }
}

/// Widen `n` f16 values to f32 (exact).
pub fn f16_to_f32(
    dev: &CudaDevice,
    x: &CudaSlice<f16>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n64 = check_elementwise("f16_to_f32", n, &[x.len(), out.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_f16_to_f32", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x).arg(out).arg(&n64);
    // SAFETY: arguments in the order and types of mops_f16_to_f32; every buffer
    // holds n values (checked above).
    unsafe { launch_elementwise(dev, b, "mops_f16_to_f32", n) }
}

/// `out (n, dim) = table[ids[i]] * scale` from `table (vocab, dim)`; an id
/// `>= vocab` gives a zero row (no fault).
#[allow(clippy::too_many_arguments)]
pub fn embedding_rows(
    dev: &CudaDevice,
    table: &CudaSlice<f32>,
    vocab: usize,
    dim: usize,
    ids: &CudaSlice<u32>,
    n: usize,
    scale: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    if dim == 0 {
        return Err(CudaError::Shape(
            "embedding_rows: dim must be positive".into(),
        ));
    }
    check_len(
        "embedding_rows table",
        table.len(),
        mul("embedding table", vocab, dim)?,
    )?;
    check_len("embedding_rows ids", ids.len(), n)?;
    check_len(
        "embedding_rows out",
        out.len(),
        mul("embedding out", n, dim)?,
    )?;
    let vocab_u = to_u32("embedding_rows vocab", vocab)?;
    let dim_i = to_i32("embedding_rows dim", dim)?;
    to_u32("embedding_rows n", n)?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_embedding_rows", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(table)
        .arg(ids)
        .arg(out)
        .arg(&vocab_u)
        .arg(&dim_i)
        .arg(&scale);
    // SAFETY: argument order and types match mops_embedding_rows; table holds
    // vocab*dim values, ids n, out n*dim; the kernel checks ids < vocab.
    unsafe { b.launch(row_config(n)) }.map_err(|e| driver_err("launch mops_embedding_rows", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_shapes() {
        assert_eq!(check_norm("n", 12, 4, 3, 4, 12).unwrap(), 12);
        assert!(
            check_norm("n", 16, 4, 3, 4, 12).is_ok(),
            "longer buffers are fine"
        );
        assert!(check_norm("n", 11, 4, 3, 4, 12).is_err(), "short x");
        assert!(check_norm("n", 12, 3, 3, 4, 12).is_err(), "short weight");
        assert!(check_norm("n", 12, 4, 3, 4, 11).is_err(), "short out");
        assert!(check_norm("n", 0, 0, 0, 0, 0).is_err(), "dim 0");
        assert!(check_norm("n", usize::MAX, 4, usize::MAX, 4, usize::MAX).is_err());
    }

    #[test]
    fn elementwise_shapes() {
        assert_eq!(check_elementwise("e", 5, &[5, 6, 7]).unwrap(), 5);
        assert!(check_elementwise("e", 5, &[5, 4, 7]).is_err());
        assert!(check_elementwise("e", 0, &[0]).is_ok());
    }
}
