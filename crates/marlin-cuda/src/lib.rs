//! CUDA backend of marlin.
//!
//! Without the `cuda` feature this crate only holds the host-side repack of
//! weights into the kernels' layouts (pure Rust, tested on any machine) and
//! [`is_available`] returns `false`. With it, kernels are `.cu` sources
//! embedded in the binary, compiled by NVRTC at first use for the device's
//! architecture (sm_90a on Hopper) and cached on disk; libcuda, libnvrtc and
//! libcublas are loaded at run time, so one binary runs with or without a GPU
//! and every entry point returns [`CudaError::NotAvailable`] when they are
//! missing.
//!
//! - [`int4`]: W4A16 GEMM (INT4 symmetric / asymmetric, per-group or
//!   per-channel scales, f16 or bf16 activations (`act`), fp32
//!   accumulation).
//! - [`knobs`]: the environment variables that switch an optimisation off
//!   for same-run comparisons.
//! - `readback` (feature `cuda`): page-locked host buffers for what the
//!   host reads back every step (logits).
//! - `bench` (feature `cuda`): the GEMM benchmark against cuBLAS fp16 and the
//!   device's copy bandwidth, used by `marlin bench gemm --device cuda`.

#[cfg(feature = "cuda")]
pub mod act;
pub mod error;
pub mod int4;
pub mod knobs;
pub mod wgemm;

#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda")]
pub mod bench_read;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod ggml;
#[cfg(feature = "cuda")]
pub mod hadamard;
#[cfg(feature = "cuda")]
mod nvrtc_cache;
#[cfg(feature = "cuda")]
pub mod ops;
#[cfg(feature = "cuda")]
pub mod readback;

#[cfg(feature = "cuda")]
pub use device::{probe, CudaDevice};
pub use error::{CudaError, Result};

/// True when this build has the `cuda` feature, libcuda loads and at least
/// one device is present. Never panics.
pub fn is_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        device::probe().is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Why CUDA is not usable, or the number of devices.
pub fn device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        device::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(CudaError::NotAvailable(
            "this binary was built without the `cuda` feature".into(),
        ))
    }
}
