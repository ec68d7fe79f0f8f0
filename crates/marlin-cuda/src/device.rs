//! One CUDA device: context, stream, kernel modules, checked allocations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    ValidAsZeroBits,
};

use crate::error::{CudaError, Result};
use crate::nvrtc_cache;

pub(crate) fn driver_err(context: &str, e: DriverError) -> CudaError {
    CudaError::Driver {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Whether libcuda can be loaded and reports at least one device. Never
/// panics; the error says what is missing.
pub fn probe() -> Result<usize> {
    // SAFETY: only tries to dlopen the library, no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NotAvailable(
            "libcuda.so (the NVIDIA driver library) was not found".into(),
        ));
    }
    cudarc::driver::result::init().map_err(|e| {
        CudaError::NotAvailable(format!("cuInit failed ({e}): no usable NVIDIA driver/GPU"))
    })?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| CudaError::NotAvailable(format!("cuDeviceGetCount failed: {e}")))?;
    if count <= 0 {
        return Err(CudaError::NotAvailable("no CUDA device found".into()));
    }
    Ok(count as usize)
}

/// A CUDA device with one stream on which every kernel of this crate runs.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    sm_count: usize,
    driver_version: i32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Loaded functions by (module, entry): the bf16 modules (crate::act)
    /// hold entries of the same names as their f16 modules.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    blas: Mutex<Option<CudaBlas>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("sm_count", &self.sm_count)
            .finish()
    }
}

impl CudaDevice {
    /// Open device `ordinal` (0-based). Errors when no driver, no device, or
    /// NVRTC is missing (kernels could not be compiled).
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        let count = probe()?;
        if ordinal >= count {
            return Err(CudaError::NotAvailable(format!(
                "cuda:{ordinal} requested but only {count} device(s) exist"
            )));
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NotAvailable(
                "libnvrtc.so (CUDA runtime compiler) was not found; add the CUDA lib64 \
                 directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("cuCtx create", e))?;
        // One stream only: cudarc's per-buffer event tracking (for ordering
        // across streams) would add several driver calls to every launch.
        // SAFETY: every buffer of this crate is used on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        // A created (non-blocking) stream, not the legacy NULL stream: CUDA
        // graphs cannot be captured on the NULL stream (the GPU decoder
        // captures its decode step).
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("cuStreamCreate", e))?;
        let name = ctx.name().map_err(|e| driver_err("cuDeviceGetName", e))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| driver_err("compute capability", e))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("multiprocessor count", e))?;
        let mut driver_version = 0i32;
        // SAFETY: plain out-parameter call into a loaded libcuda.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| driver_err("cuDriverGetVersion", e))?;
        if compute_capability.0 < 8 {
            return Err(CudaError::Unsupported(format!(
                "{name} has compute capability {}.{}; marlin's kernels need sm_80 or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        Ok(Arc::new(Self {
            ctx,
            stream,
            ordinal,
            name,
            compute_capability,
            sm_count: sm_count.max(1) as usize,
            driver_version,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// NVRTC target: `sm_90a` on Hopper (arch-specific features), else the
    /// plain `sm_XY` of the device.
    pub fn nvrtc_arch(&self) -> String {
        let (major, minor) = self.compute_capability;
        if major == 9 && minor == 0 {
            "sm_90a".to_string()
        } else {
            format!("sm_{major}{minor}")
        }
    }

    /// Function `func` of module `module`, compiled (or read from the disk
    /// cache) and loaded at first use, then kept.
    /// `max_dynamic_smem` (bytes, 0 = default 48 KiB limit) is set once at load.
    pub(crate) fn function(
        &self,
        module: &'static str,
        source: &str,
        func: &'static str,
        max_dynamic_smem: u32,
    ) -> Result<CudaFunction> {
        let mut functions = self
            .functions
            .lock()
            .map_err(|_| CudaError::NotAvailable("function cache lock poisoned".into()))?;
        if let Some(f) = functions.get(&(module, func)) {
            return Ok(f.clone());
        }
        let f = self.load_function(module, source, func)?;
        if max_dynamic_smem > 0 {
            let bytes = i32::try_from(max_dynamic_smem).map_err(|_| {
                CudaError::Shape(format!("{max_dynamic_smem} bytes of shared memory"))
            })?;
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )
            .map_err(|e| driver_err(&format!("{func}: {max_dynamic_smem} bytes of dynamic shared memory"), e))?;
        }
        functions.insert((module, func), f.clone());
        Ok(f)
    }

    /// Run `f` with this device's cuBLAS handle (created at first use).
    pub(crate) fn with_blas<T>(&self, f: impl FnOnce(&CudaBlas) -> Result<T>) -> Result<T> {
        let mut blas = self
            .blas
            .lock()
            .map_err(|_| CudaError::NotAvailable("cuBLAS handle lock poisoned".into()))?;
        if blas.is_none() {
            // SAFETY: dlopen check only.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err(CudaError::NotAvailable("libcublas.so was not found".into()));
            }
            let handle = CudaBlas::new(self.stream.clone()).map_err(|e| CudaError::Cublas {
                context: "cublasCreate".into(),
                message: format!("{e:?}"),
            })?;
            *blas = Some(handle);
        }
        match blas.as_ref() {
            Some(b) => f(b),
            None => Err(CudaError::NotAvailable("cuBLAS handle missing".into())),
        }
    }

    fn load_function(
        &self,
        module: &'static str,
        source: &str,
        func: &str,
    ) -> Result<CudaFunction> {
        let module_arc = {
            let mut modules = self
                .modules
                .lock()
                .map_err(|_| CudaError::NotAvailable("module cache lock poisoned".into()))?;
            match modules.get(module) {
                Some(m) => m.clone(),
                None => {
                    let cubin = nvrtc_cache::compile_cached(
                        module,
                        source,
                        &self.nvrtc_arch(),
                        self.driver_version,
                    )?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                        .map_err(|e| driver_err(&format!("cuModuleLoadData({module})"), e))?;
                    modules.insert(module, m.clone());
                    m
                }
            }
        };
        module_arc
            .load_function(func)
            .map_err(|e| driver_err(&format!("cuModuleGetFunction({func})"), e))
    }

    /// The bytes of the `__device__` variable `name` of module `module`,
    /// which must be loaded already (a function of it used); None if not.
    pub(crate) fn module_global_bytes(
        &self,
        module: &'static str,
        name: &str,
    ) -> Result<Option<Vec<u8>>> {
        let module_arc = {
            let modules = self
                .modules
                .lock()
                .map_err(|_| CudaError::NotAvailable("module cache lock poisoned".into()))?;
            match modules.get(module) {
                Some(m) => m.clone(),
                None => return Ok(None),
            }
        };
        let view = module_arc
            .get_global(name, &self.stream)
            .map_err(|e| driver_err(&format!("cuModuleGetGlobal({module}, {name})"), e))?;
        let bytes = self
            .stream
            .clone_dtoh(&view)
            .map_err(|e| driver_err(&format!("{module}.{name} to the host"), e))?;
        Ok(Some(bytes))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| driver_err("cuMemGetInfo", e))
    }

    fn oom(&self, what: &str, bytes: usize) -> CudaError {
        let (free, total) = self.mem_info().unwrap_or((0, 0));
        CudaError::OutOfMemory {
            what: what.to_string(),
            requested_bytes: bytes,
            free_bytes: free,
            total_bytes: total,
        }
    }

    fn map_alloc_err(&self, what: &str, bytes: usize, e: DriverError) -> CudaError {
        if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            self.oom(what, bytes)
        } else {
            driver_err(&format!("allocating {bytes} bytes for {what}"), e)
        }
    }

    fn check_fits<T>(&self, what: &str, len: usize) -> Result<usize> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| CudaError::Shape(format!("{what}: {len} elements overflow usize")))?;
        let (free, _) = self.mem_info()?;
        if bytes > free {
            return Err(self.oom(what, bytes));
        }
        Ok(bytes)
    }

    /// Zero-filled device buffer of `len` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        what: &str,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        let bytes = self.check_fits::<T>(what, len)?;
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| self.map_alloc_err(what, bytes, e))
    }

    /// Device copy of a host slice.
    pub fn upload<T: DeviceRepr>(&self, what: &str, host: &[T]) -> Result<CudaSlice<T>> {
        let bytes = self.check_fits::<T>(what, host.len())?;
        self.stream
            .clone_htod(host)
            .map_err(|e| self.map_alloc_err(what, bytes, e))
    }

    /// Copy a device buffer to the host (synchronises the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| driver_err("device-to-host copy", e))
    }

    /// Overwrite a device buffer from the host.
    pub fn write<T: DeviceRepr>(&self, dev: &mut CudaSlice<T>, host: &[T]) -> Result<()> {
        if host.len() != dev.len() {
            return Err(CudaError::Shape(format!(
                "host slice of {} elements into a device buffer of {}",
                host.len(),
                dev.len()
            )));
        }
        self.stream
            .memcpy_htod(host, dev)
            .map_err(|e| driver_err("host-to-device copy", e))
    }

    /// Wait for all work on the stream; reports asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("stream synchronize", e))
    }
}
