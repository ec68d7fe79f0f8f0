//! Column splits of a fused projection's output: one strided 2-D copy per
//! part (cuMemcpy2DAsync), enqueued on the device's stream, capture-safe.

use cudarc::driver::sys::{self, CUmemorytype, CUDA_MEMCPY2D};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use marlin_cuda::CudaDevice;

use super::{GpuError, Result};

/// Copies columns `offset..offset + width` of `src` (rows, src_width) f32
/// into `dst` (rows, width), row-major.
pub fn copy_columns(
    dev: &CudaDevice,
    src: &CudaSlice<f32>,
    rows: usize,
    src_width: usize,
    offset: usize,
    width: usize,
    dst: &mut CudaSlice<f32>,
) -> Result<()> {
    let end = offset
        .checked_add(width)
        .filter(|&e| e <= src_width)
        .ok_or_else(|| {
            GpuError::Invalid(format!(
                "columns {offset}..+{width} of a {src_width}-wide matrix"
            ))
        })?;
    let need_src = rows.checked_mul(src_width);
    let need_dst = rows.checked_mul(width);
    if rows == 0 || end == offset {
        return Ok(());
    }
    if need_src.is_none_or(|n| n > src.len()) || need_dst.is_none_or(|n| n > dst.len()) {
        return Err(GpuError::Invalid(format!(
            "column copy of {rows} rows: source {} / destination {} elements too short",
            src.len(),
            dst.len()
        )));
    }
    const F: usize = std::mem::size_of::<f32>();
    let stream = dev.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let copy = CUDA_MEMCPY2D {
        srcXInBytes: offset * F,
        srcY: 0,
        srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src_ptr,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_width * F,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst_ptr,
        dstArray: std::ptr::null_mut(),
        dstPitch: width * F,
        WidthInBytes: width * F,
        Height: rows,
    };
    // SAFETY: both regions were bounds-checked above (rows x pitch within
    // each buffer); the copy is ordered on the device's one stream.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }
        .result()
        .map_err(|e| super::driver_err("cuMemcpy2DAsync (column split)", e))
}
