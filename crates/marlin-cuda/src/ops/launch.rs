//! Kernel launches with programmatic dependent launch (PDL, sm_90+).
//!
//! In a decode step every kernel depends on the one before it, and each
//! dependent launch in a CUDA graph costs ~5-6 µs whatever the kernel does
//! (docs/CUDA.md, change 23): the grid is launched and its blocks
//! distributed only after the predecessor has drained. Launched with the
//! programmatic-stream-serialization attribute (`cuLaunchKernelEx`), a
//! kernel's grid may start as soon as every block of its predecessor has
//! executed `griddepcontrol.launch_dependents`; its blocks then wait in
//! `griddepcontrol.wait` until the predecessor has completed and its
//! memory is visible. The launch and the block distribution overlap the
//! predecessor's run instead of following it.
//!
//! Contract of a kernel launched by [`KernelLaunch::launch_pdl`]: every
//! block executes `griddepcontrol.wait` before its first access to memory
//! another kernel writes or reads (only constants and the host-copied
//! sequence ids / positions may be read before it) and before any early
//! return, so that a kernel never completes before its predecessor and the
//! chain stays transitive. The decode-path kernels (`ops.cu`,
//! `attention.cu`) execute `griddepcontrol.launch_dependents` first thing,
//! before their wait: the next kernel's grid (a GEMM) becomes resident and
//! runs its own pre-wait prologue while this one waits and runs; its wait
//! still waits for this grid's completion. A kernel without the wait must be
//! launched by [`KernelLaunch::launch`] (plain, full serialisation). On
//! devices below sm_90, or with `MARLIN_CUDA_PDL=0` (measuring the
//! difference), `launch_pdl` is a plain launch; the instructions are
//! compiled only for sm_90+ (`__CUDA_ARCH__ >= 900`) and are no-ops for a
//! plain launch.
//!
//! The builder mirrors cudarc's `LaunchArgs` (`.arg(x)` per parameter, in
//! the kernel's order), so a launch site switches by changing two lines.

use std::ffi::c_void;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig};

use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use std::sync::Mutex;

/// Whether PDL launches are enabled in this process: not when
/// `MARLIN_CUDA_PDL=0` (read once).
pub fn pdl_enabled() -> bool {
    static ON: crate::knobs::Switch = crate::knobs::Switch::new("MARLIN_CUDA_PDL", true);
    ON.get()
}

/// Whether [`KernelLaunch::launch_pdl`] sets the attribute on `dev`
/// (sm_90 or newer, and [`pdl_enabled`]).
pub fn pdl_active(dev: &CudaDevice) -> bool {
    dev.compute_capability().0 >= 9 && pdl_enabled()
}

/// One kernel parameter, its bytes at the start of an 8-byte aligned slot
/// (the driver reads the parameter's own size from the slot's address).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct ParamSlot([u8; 8]);

/// A value that can be passed as one kernel parameter.
pub trait KernelArg {
    /// The parameter's bytes (a device pointer for buffers).
    fn slot(&self, dev: &CudaDevice) -> ParamSlot;
}

fn slot_of(bytes: &[u8]) -> ParamSlot {
    let mut s = [0u8; 8];
    s[..bytes.len()].copy_from_slice(bytes);
    ParamSlot(s)
}

macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn slot(&self, _dev: &CudaDevice) -> ParamSlot {
                slot_of(&self.to_ne_bytes())
            }
        }
    )*};
}
scalar_arg!(i32, u32, i64, u64, f32, f64);

// Event tracking is off on the device's context (one stream), so the
// `SyncOnDrop` guards below record nothing and may drop at once.
impl<T> KernelArg for CudaSlice<T> {
    fn slot(&self, dev: &CudaDevice) -> ParamSlot {
        let (p, _sync) = self.device_ptr(dev.stream());
        slot_of(&p.to_ne_bytes())
    }
}

impl<T> KernelArg for CudaView<'_, T> {
    fn slot(&self, dev: &CudaDevice) -> ParamSlot {
        let (p, _sync) = self.device_ptr(dev.stream());
        slot_of(&p.to_ne_bytes())
    }
}

impl<T> KernelArg for CudaViewMut<'_, T> {
    fn slot(&self, dev: &CudaDevice) -> ParamSlot {
        let (p, _sync) = DevicePtr::device_ptr(self, dev.stream());
        slot_of(&p.to_ne_bytes())
    }
}

/// A kernel launch under construction: the function and its parameters.
pub struct KernelLaunch<'a> {
    dev: &'a CudaDevice,
    func: &'a CudaFunction,
    /// The kernel's name, for errors.
    name: &'a str,
    params: Vec<ParamSlot>,
}

impl<'a> KernelLaunch<'a> {
    pub fn new(dev: &'a CudaDevice, func: &'a CudaFunction, name: &'a str) -> Self {
        Self {
            dev,
            func,
            name,
            params: Vec::with_capacity(24),
        }
    }

    /// Appends the next parameter (in the kernel's order).
    pub fn arg<A: KernelArg + ?Sized>(&mut self, a: &A) -> &mut Self {
        self.params.push(a.slot(self.dev));
        self
    }

    /// Plain launch (the kernel need not have `griddepcontrol.wait`).
    ///
    /// # Safety
    /// The parameters must match the kernel's signature in number, order
    /// and type, and every buffer must be large enough for what the kernel
    /// accesses with this configuration.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        self.launch_with(cfg, false, (1, 1, 1))
    }

    /// Launch with programmatic dependent launch where the device supports
    /// it (see the module doc).
    ///
    /// # Safety
    /// As [`KernelLaunch::launch`], and every block of the kernel executes
    /// `griddepcontrol.wait` before touching memory shared with other
    /// kernels.
    pub unsafe fn launch_pdl(&mut self, cfg: LaunchConfig) -> Result<()> {
        self.launch_with(cfg, pdl_active(self.dev), (1, 1, 1))
    }

    /// [`KernelLaunch::launch_pdl`] with the grid's x dimension in
    /// thread-block clusters of `cluster_x` blocks (sm_90+; `cfg.grid_dim.0`
    /// a multiple of it; above 8 the function must allow non-portable
    /// cluster sizes). `cluster_x` = 1 is a plain PDL launch.
    ///
    /// # Safety
    /// As [`KernelLaunch::launch_pdl`].
    pub unsafe fn launch_pdl_cluster(&mut self, cfg: LaunchConfig, cluster_x: u32) -> Result<()> {
        self.launch_with(cfg, pdl_active(self.dev), (cluster_x, 1, 1))
    }

    /// [`KernelLaunch::launch_pdl`] in thread-block clusters of `cluster`
    /// (x, y, z) blocks (sm_90+; each grid dimension a multiple of the
    /// cluster's, at most 8 blocks unless the function allows more).
    ///
    /// # Safety
    /// As [`KernelLaunch::launch_pdl`].
    pub unsafe fn launch_pdl_cluster_dims(
        &mut self,
        cfg: LaunchConfig,
        cluster: (u32, u32, u32),
    ) -> Result<()> {
        self.launch_with(cfg, pdl_active(self.dev), cluster)
    }

    unsafe fn launch_with(
        &mut self,
        cfg: LaunchConfig,
        pdl: bool,
        cluster: (u32, u32, u32),
    ) -> Result<()> {
        let mut ptrs: Vec<*mut c_void> = self
            .params
            .iter_mut()
            .map(|s| s.0.as_mut_ptr().cast::<c_void>())
            .collect();
        let (mut config, mut attrs, n_attrs) =
            launch_config(&cfg, self.dev.stream().cu_stream(), pdl, cluster);
        if n_attrs > 0 {
            config.attrs = attrs.as_mut_ptr();
            config.numAttrs = n_attrs as u32;
        }
        self.dev
            .context()
            .bind_to_thread()
            .map_err(|e| driver_err("bind context", e))?;
        // SAFETY: `ptrs` points at one slot per parameter, alive until the
        // call returns (the driver copies them); the caller guarantees that
        // they match the kernel; `attrs`, which `config` points at, outlives
        // the call.
        sys::cuLaunchKernelEx(
            &config,
            self.func.cu_function(),
            ptrs.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(|e| driver_err(&format!("launch {}", self.name), e))
    }
}

/// The driver's launch configuration of `cfg` on `stream`, and its
/// attributes: programmatic stream serialisation when `pdl`, clusters of
/// `cluster` (x, y, z) blocks when that is more than one block (the first
/// `n` of the array are set). `config.attrs` is left null and `numAttrs` 0: the
/// caller points them at the returned array once it has its final address.
pub(crate) fn launch_config(
    cfg: &LaunchConfig,
    stream: sys::CUstream,
    pdl: bool,
    cluster: (u32, u32, u32),
) -> (sys::CUlaunchConfig, [sys::CUlaunchAttribute; 2], usize) {
    // SAFETY (zeroed): all-zero is a valid value of every variant of the
    // value union, and of the attribute (id 0: CU_LAUNCH_ATTRIBUTE_IGNORE).
    let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
    let mut n_attrs = 0usize;
    if pdl {
        // SAFETY: as above.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        attrs[n_attrs] = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        n_attrs += 1;
    }
    if cluster != (1, 1, 1) {
        // SAFETY: as above.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.clusterDim.x = cluster.0;
        value.clusterDim.y = cluster.1;
        value.clusterDim.z = cluster.2;
        attrs[n_attrs] = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
            pad: [0; 4],
            value,
        };
        n_attrs += 1;
    }
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream,
        attrs: std::ptr::null_mut(),
        numAttrs: 0,
    };
    (config, attrs, n_attrs)
}

/// How many clusters of `cluster` (x, y, z) blocks of `func` with `cfg`
/// the device holds at once (`cuOccupancyMaxActiveClusters`), asked once
/// per device, loaded function, kernel name and cluster shape (a device or
/// module loaded again, e.g. by another test of the same process, has a
/// new function). Above 8 blocks the function is first allowed
/// non-portable cluster sizes (an attribute of the loaded function, so set
/// every time). Any driver refusal: 0.
pub(crate) fn max_active_clusters(
    dev: &CudaDevice,
    func: &CudaFunction,
    name: &'static str,
    cluster: (u32, u32, u32),
    cfg: &LaunchConfig,
) -> Result<usize> {
    let blocks = u64::from(cluster.0) * u64::from(cluster.1) * u64::from(cluster.2);
    let size_allowed = blocks <= 8
        || func
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
            .is_ok();
    if !size_allowed {
        return Ok(0);
    }
    type Key = (usize, usize, &'static str, (u32, u32, u32));
    static SEEN: Mutex<Vec<(Key, usize)>> = Mutex::new(Vec::new());
    let key: Key = (dev.ordinal(), func.cu_function() as usize, name, cluster);
    let mut seen = SEEN
        .lock()
        .map_err(|_| CudaError::NotAvailable("cluster occupancy cache lock poisoned".into()))?;
    if let Some(&(_, n)) = seen.iter().find(|(k, _)| *k == key) {
        return Ok(n);
    }
    let n = {
        let (mut config, mut attrs, n_attrs) =
            launch_config(cfg, dev.stream().cu_stream(), false, cluster);
        config.attrs = attrs.as_mut_ptr();
        config.numAttrs = n_attrs as u32;
        let mut n: std::ffi::c_int = 0;
        // SAFETY: a valid function, and a config whose attributes (`attrs`)
        // outlive the call; `n` outlives the call.
        let r = unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, func.cu_function(), &config) };
        if r == sys::CUresult::CUDA_SUCCESS {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    };
    seen.push((key, n));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_slots_hold_the_native_bytes_first() {
        assert_eq!(&slot_of(&7i32.to_ne_bytes()).0[..4], &7i32.to_ne_bytes());
        assert_eq!(&slot_of(&1.5f32.to_ne_bytes()).0[4..], &[0u8; 4]);
        assert_eq!(slot_of(&u64::MAX.to_ne_bytes()).0, [0xffu8; 8]);
        assert_eq!(std::mem::align_of::<ParamSlot>(), 8);
    }
}
