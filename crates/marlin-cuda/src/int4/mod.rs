//! INT4 weight-only GEMM (W4A16).
//!
//! [`pack::pack_int4`] repacks a KMajorDense [`marlin_quant::QuantTensor`]
//! once into tensor-core fragment order; with the `cuda` feature,
//! [`gemm::Int4Weight`] holds it on the device and [`gemm::int4_gemm`]
//! launches `kernels/w4a16_gemm.cu`.

pub mod act_order;
#[cfg(feature = "cuda")]
pub mod bulk;
#[cfg(feature = "cuda")]
mod device_fill;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod layers;
pub mod pack;
pub mod random;
pub mod reference;
#[cfg(feature = "cuda")]
pub mod wgmma;
#[cfg(feature = "cuda")]
pub mod wgmma_ws;

#[cfg(test)]
mod tests;
