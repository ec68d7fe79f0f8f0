//! Rotary position embeddings on the GPU, mirroring `marlin_cpu::ops::Rope`.

use cudarc::driver::{CudaSlice, PushKernelArg};
use marlin_cpu::ops::{Rope, RopeStyle};

use super::{check_len, grid_stride, mul, to_i32, OPS_MODULE, OPS_SOURCE};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

/// A CPU [`Rope`]'s frequency table on the device, uploaded once. Scaling
/// (linear, Llama 3, GGUF `rope_freqs`) is already folded into the table by
/// the CPU `Rope`, so the GPU op has one form.
pub struct GpuRope {
    head_dim: usize,
    n_rot: usize,
    style: RopeStyle,
    /// (n_rot / 2) f64: angle per position of each rotation pair. f64 like
    /// the CPU op, so that large positions keep full f32 accuracy.
    pub(crate) inv_freq: CudaSlice<f64>,
}

impl GpuRope {
    pub fn new(dev: &CudaDevice, rope: &Rope) -> Result<Self> {
        let n_rot = rope.n_rot();
        if rope.inv_freq().len() * 2 != n_rot {
            return Err(CudaError::Shape(format!(
                "rope: {} frequencies for n_rot {n_rot}",
                rope.inv_freq().len()
            )));
        }
        to_i32("rope head_dim", rope.head_dim())?;
        Ok(Self {
            head_dim: rope.head_dim(),
            n_rot,
            style: rope.style(),
            inv_freq: dev.upload("rope inverse frequencies", rope.inv_freq())?,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn n_rot(&self) -> usize {
        self.n_rot
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }
}

/// Rotate `x` (rows, n_heads, head_dim) in place; row `r` sits at position
/// `positions[r]` (a device buffer of at least `rows` values).
pub fn rope_inplace(
    dev: &CudaDevice,
    x: &mut CudaSlice<f32>,
    rows: usize,
    n_heads: usize,
    rope: &GpuRope,
    positions: &CudaSlice<i32>,
) -> Result<()> {
    let pairs = check_rope(
        x.len(),
        rows,
        n_heads,
        rope.head_dim,
        rope.n_rot,
        positions.len(),
    )?;
    if pairs == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_rope", 0)?;
    let (rows_i, heads_i) = (rows as i32, n_heads as i32);
    let (hd_i, n_rot_i) = (rope.head_dim as i32, rope.n_rot as i32);
    let neox = i32::from(rope.style == RopeStyle::Neox);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x)
        .arg(&rope.inv_freq)
        .arg(positions)
        .arg(&rows_i)
        .arg(&heads_i)
        .arg(&hd_i)
        .arg(&n_rot_i)
        .arg(&neox);
    // SAFETY: argument order and types match mops_rope; x holds
    // rows*n_heads*head_dim values, positions rows, inv_freq n_rot/2.
    unsafe { b.launch(grid_stride(dev, pairs)) }.map_err(|e| driver_err("launch mops_rope", e))?;
    Ok(())
}

/// Returns the number of rotation pairs (rows * n_heads * n_rot / 2).
pub(crate) fn check_rope(
    x_len: usize,
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    n_rot: usize,
    positions_len: usize,
) -> Result<usize> {
    let per_row = mul("rope", n_heads, head_dim)?;
    check_len("rope x", x_len, mul("rope", rows, per_row)?)?;
    check_len("rope positions", positions_len, rows)?;
    to_i32("rope rows", rows)?;
    to_i32("rope n_heads", n_heads)?;
    mul("rope", rows * n_heads, n_rot / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_shapes() {
        assert_eq!(check_rope(2 * 3 * 8, 2, 3, 8, 4, 2).unwrap(), 2 * 3 * 2);
        assert!(check_rope(2 * 3 * 8 - 1, 2, 3, 8, 4, 2).is_err(), "short x");
        assert!(
            check_rope(2 * 3 * 8, 2, 3, 8, 4, 1).is_err(),
            "short positions"
        );
        assert!(check_rope(usize::MAX, usize::MAX, 3, 8, 4, usize::MAX).is_err());
    }
}
