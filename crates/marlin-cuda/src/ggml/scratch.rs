//! Scratch buffers shared by every ggml weight of one device.
//!
//! One set per device (not per weight): the decode activations' int8 codes,
//! the prefill f16 activations and the dequantized f16 weight are used by
//! one matmul at a time. Every use holds the set's lock from the first
//! enqueue to the last of one matmul, and all work runs on the device's one
//! stream, so two matmuls never interleave on the same scratch.

use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::f16;

use crate::device::CudaDevice;
use crate::error::{CudaError, Result};

/// The scratch buffers; each grows on demand (`prepare` grows them ahead so
/// that later calls allocate nothing).
#[derive(Default)]
pub struct Scratch {
    /// (m, K) int8 codes of the decode activations.
    pub act_qs: Option<CudaSlice<i8>>,
    /// (m, K/32, 2) {d, s} of the decode activations.
    pub act_ds: Option<CudaSlice<f32>>,
    /// (m, K) prefill activations as f16, each row times a power of two.
    pub x_f16: Option<CudaSlice<f16>>,
    /// (m) the inverse of those powers of two.
    pub inv_scale: Option<CudaSlice<f32>>,
    /// (rows, cols) the weight dequantized for cuBLAS.
    pub w_f16: Option<CudaSlice<f16>>,
}

/// `buf` holding at least `len` elements (reallocated, zeroed, when shorter).
pub fn ensure<'a, T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    buf: &'a mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<&'a mut CudaSlice<T>> {
    if buf.as_ref().is_none_or(|b| b.len() < len) {
        // Free first: the old buffer is not needed, and the peak stays lower.
        *buf = None;
        *buf = Some(dev.alloc_zeros::<T>(what, len.max(1))?);
    }
    buf.as_mut()
        .ok_or_else(|| CudaError::Shape(format!("{what} scratch missing")))
}

type Registry = Mutex<Vec<(Weak<CudaDevice>, Arc<Mutex<Scratch>>)>>;

static REGISTRY: Registry = Mutex::new(Vec::new());

/// The scratch set of `dev` (created at first use).
pub fn for_device(dev: &Arc<CudaDevice>) -> Result<Arc<Mutex<Scratch>>> {
    let mut reg = REGISTRY
        .lock()
        .map_err(|_| CudaError::NotAvailable("ggml scratch registry lock poisoned".into()))?;
    // Forget the sets of devices that are gone.
    reg.retain(|(d, _)| d.strong_count() > 0);
    if let Some((_, s)) = reg
        .iter()
        .find(|(d, _)| std::ptr::eq(d.as_ptr(), Arc::as_ptr(dev)))
    {
        return Ok(s.clone());
    }
    let s = Arc::new(Mutex::new(Scratch::default()));
    reg.push((Arc::downgrade(dev), s.clone()));
    Ok(s)
}
