//! Mixed-input GEMMs for the other weight formats: FP4 E2M1 (MXFP4 and NVFP4
//! scales), INT8 and FP8 E4M3 (per channel, per group, 2-D blocks such as
//! DeepSeek's 128 x 128), f16 activations, fp32 accumulation.
//!
//! [`pack::pack_wx`] repacks a KMajorDense [`marlin_quant::QuantTensor`]
//! once into the fragment-ordered layout of `kernels/wxa16_gemm.cu` (the
//! INT4 decode kernel's layout with 8-bit or FP4 codes); with the `cuda`
//! feature, [`gemm::WxWeight`] holds it on the device and [`gemm::wx_gemm`]
//! runs it (fused kernel below 64 rows, dequantize + cuBLAS from 128 on,
//! by weight size in between: `int4::gemm::auto_fused`).

#[cfg(feature = "cuda")]
pub mod gemm;
pub mod pack;
pub mod random;
pub mod reference;
#[cfg(feature = "cuda")]
pub mod wgmma_ws;

#[cfg(test)]
mod tests;
