//! MR-GPTQ: GPTQ in a block-Hadamard-rotated basis, with a scale search
//! adapted to the FP4 grid (MXFP4 / NVFP4).
//!
//! The rotation spreads outlier input channels over their block, so each
//! quantization group sees a flatter distribution; GPTQ then runs on
//! `W·Rᵀ` with the Hessian of the rotated inputs `R·H·Rᵀ`.

use marlin_quant::{QuantScheme, QuantTensor};

use crate::gptq::{check_inputs, gptq_quantize_with_stats, GptqOptions, GptqStats};
use crate::grid::{ScaleSearch, SearchWeight};
use crate::hadamard::Rotation;
use crate::hessian::Hessian;
use crate::QuantizeError;

/// A quantized matrix in a rotated basis: `tensor` is (N, padded_k) and
/// approximates `W·Rᵀ`; inference computes `y = rotation.rotate_rows(x) ·
/// tensorᵀ`.
#[derive(Clone, Debug, PartialEq)]
pub struct RotatedQuantTensor {
    pub tensor: QuantTensor,
    pub rotation: Rotation,
}

impl RotatedQuantTensor {
    /// The dequantized weights in the original basis, (N, K) row-major
    /// (`Ŵ = Ŵr·R`, padding dropped): for evaluation, or for backends that
    /// cannot rotate activations.
    pub fn dequantize_unrotated(&self) -> Result<Vec<f32>, QuantizeError> {
        let rotated = self.tensor.dequantize()?;
        self.rotation.unrotate_rows(&rotated, self.tensor.rows)
    }
}

/// Options of [`mr_gptq_quantize`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrGptqOptions {
    /// The GPTQ pass in the rotated basis.
    pub gptq: GptqOptions,
    /// Largest Hadamard block (a power of two); see [`Rotation::for_dim`]
    /// for how the block is chosen for K.
    pub max_rotation_block: usize,
}

impl Default for MrGptqOptions {
    /// Hadamard blocks of up to 128, GPTQ with the FP4 scale search
    /// weighted by diag(H).
    fn default() -> Self {
        Self {
            gptq: GptqOptions {
                scale_search: ScaleSearch::fp4(),
                search_weight: SearchWeight::HessianDiag,
                ..GptqOptions::default()
            },
            max_rotation_block: 128,
        }
    }
}

/// Rotates `w` (N, K) and the Hessian along K, then runs GPTQ. The group
/// size of `scheme` must divide the padded K (`Rotation::for_dim(k,
/// opts.max_rotation_block)`). Errors: those of [`crate::gptq_quantize`],
/// plus a bad rotation block.
pub fn mr_gptq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    hessian: &Hessian,
    scheme: &QuantScheme,
    opts: &MrGptqOptions,
) -> Result<RotatedQuantTensor, QuantizeError> {
    mr_gptq_quantize_with_stats(w, n, k, hessian, scheme, opts).map(|(t, _)| t)
}

/// [`mr_gptq_quantize`], also returning the GPTQ pass's statistics.
pub fn mr_gptq_quantize_with_stats(
    w: &[f32],
    n: usize,
    k: usize,
    hessian: &Hessian,
    scheme: &QuantScheme,
    opts: &MrGptqOptions,
) -> Result<(RotatedQuantTensor, GptqStats), QuantizeError> {
    // Cheap checks first, so bad input fails before the rotation work.
    check_inputs(w, n, k, hessian, scheme)?;
    let rotation = Rotation::for_dim(k, opts.max_rotation_block)?;
    let w_rot = rotation.rotate_rows(w, n)?; // (N, padded_k)
    let h_rot = rotation.rotate_hessian(hessian)?; // (padded_k, padded_k)
    let (tensor, stats) =
        gptq_quantize_with_stats(&w_rot, n, rotation.padded_k, &h_rot, scheme, &opts.gptq)?;
    Ok((RotatedQuantTensor { tensor, rotation }, stats))
}
