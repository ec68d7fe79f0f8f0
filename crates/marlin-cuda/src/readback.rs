//! Page-locked host buffers for what the host reads back every step (the
//! logits the serving engine samples from). A device-to-host copy into
//! pageable memory (a `Vec`) goes through the driver's own staging buffer
//! and then a CPU copy; into page-locked memory it is one DMA at the link's
//! rate. The serving pass of an 8B-shaped model at 32 sequences reads back
//! 16 MB of logits per step, which cost more than its kernels (docs/CUDA.md
//! change 80).

use cudarc::driver::{CudaView, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

/// A page-locked host buffer, grown to the longest copy asked of it and
/// reused (allocating page-locked memory is slow: it is pinned page by page).
pub struct Readback<T> {
    what: &'static str,
    buf: Option<PinnedHostSlice<T>>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Readback<T> {
    /// An empty buffer; `what` names it in errors.
    pub fn new(what: &'static str) -> Self {
        Self { what, buf: None }
    }

    /// Copies `src` to the host once the stream's work queued so far has
    /// run, and returns it (the stream is synchronised, so a fault of an
    /// earlier kernel is reported here).
    pub fn fetch(&mut self, dev: &CudaDevice, src: &CudaView<'_, T>) -> Result<&[T]> {
        let len = src.len();
        if len == 0 {
            return Ok(&[]);
        }
        if self.buf.as_ref().is_some_and(|b| b.len() < len) {
            // Freed first: the old and the new buffer need not both be pinned.
            self.buf = None;
        }
        let what = self.what;
        let buf = match &mut self.buf {
            Some(buf) => buf,
            empty => empty.insert(alloc_pinned(dev, what, len)?),
        };
        dev.stream()
            .memcpy_dtoh(src, buf)
            .map_err(|e| driver_err(&format!("{} to the host", self.what), e))?;
        dev.synchronize()?;
        let host = buf
            .as_slice()
            .map_err(|e| driver_err(&format!("{} to the host", self.what), e))?;
        Ok(&host[..len])
    }
}

/// `len` elements of page-locked host memory.
fn alloc_pinned<T: DeviceRepr>(
    dev: &CudaDevice,
    what: &str,
    len: usize,
) -> Result<PinnedHostSlice<T>> {
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| CudaError::Shape(format!("{what}: {len} elements overflow")))?;
    // SAFETY: flags 0 is plain page-locked, cacheable memory (not
    // write-combined: the host reads it); its contents are not initialised,
    // and only the prefix a copy has written is ever read (`fetch`).
    unsafe { dev.context().alloc_pinned_with_flags::<T>(len, 0) }.map_err(|e| {
        driver_err(
            &format!("allocating {bytes} page-locked bytes for {what}"),
            e,
        )
    })
}
