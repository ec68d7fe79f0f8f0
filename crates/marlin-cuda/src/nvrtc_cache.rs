//! NVRTC compilation of the embedded `.cu` sources to CUBIN for the device's
//! architecture, cached on disk under `$MARLIN_KERNEL_CACHE` or
//! `~/.cache/marlin/kernels`, keyed by a hash of (source, shared header,
//! options, arch, driver version, NVRTC version). A cache that cannot be read
//! or written is skipped, never an error.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{CudaError, Result};

/// Options shared by every kernel (keep in sync with
/// `scripts/check_kernels_nvrtc.py`).
pub const NVRTC_OPTIONS: &[&str] = &["-std=c++17", "--use_fast_math", "-default-device"];

/// Name under which the kernel sources `#include` the shared device helpers.
pub const COMMON_HEADER_NAME: &str = "marlin_common.cuh";
/// The shared device helpers (f16 conversions, f16x2 arithmetic, cp.async,
/// mbarrier, PDL, ...). Every program gets it as an in-memory NVRTC header,
/// so no include search path is needed (keep in sync with
/// `scripts/check_kernels_nvrtc.py`).
pub const COMMON_HEADER: &str = include_str!("kernels/marlin_common.cuh");

/// FNV-1a, 64 bit: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MARLIN_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("marlin").join("kernels"));
    }
    std::env::var_os("HOME").map(|h| {
        PathBuf::from(h)
            .join(".cache")
            .join("marlin")
            .join("kernels")
    })
}

/// (major, minor) of the loaded NVRTC.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    // SAFETY: dlopen check only.
    if !unsafe { nvrtc_sys::is_culib_present() } {
        return Err(CudaError::NotAvailable("libnvrtc.so was not found".into()));
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: two out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::NotAvailable(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// Compile `source` (module `name`) for `arch` (e.g. `sm_90a`) to CUBIN, or
/// read it from the disk cache.
pub fn compile_cached(
    name: &str,
    source: &str,
    arch: &str,
    driver_version: i32,
) -> Result<Vec<u8>> {
    let (nv_major, nv_minor) = nvrtc_version()?;
    let versions = format!("driver {driver_version} nvrtc {nv_major}.{nv_minor}");
    let options = NVRTC_OPTIONS.join(" ");
    let key = fnv1a(&[
        source.as_bytes(),
        COMMON_HEADER.as_bytes(),
        options.as_bytes(),
        arch.as_bytes(),
        versions.as_bytes(),
    ]);
    let path = cache_dir().map(|d| d.join(format!("{name}-{arch}-{key:016x}.cubin")));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile(name, source, arch)?;
    if let Some(p) = &path {
        // Write to a unique temporary name, then rename: concurrent processes
        // never see a half-written file.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &cubin).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok(cubin)
}

/// Compile without the cache. Returns the CUBIN image.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    let compile_err = |log: String| CudaError::Compile {
        kernel: name.to_string(),
        arch: arch.to_string(),
        log,
    };
    let src = CString::new(source).map_err(|_| compile_err("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| compile_err("name contains a NUL byte".into()))?;
    let header = CString::new(COMMON_HEADER)
        .map_err(|_| compile_err("marlin_common.cuh contains a NUL byte".into()))?;
    let header_name = CString::new(COMMON_HEADER_NAME)
        .map_err(|_| compile_err("header name contains a NUL byte".into()))?;
    let prog = create_program_with_header(&src, &cname, &header, &header_name)
        .map_err(|e| compile_err(format!("nvrtcCreateProgram: {e:?}")))?;
    let mut options: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    options.extend(NVRTC_OPTIONS.iter().map(|s| s.to_string()));
    // SAFETY: prog is live until destroy_program below.
    let compiled = unsafe { nvrtc::compile_program(prog, &options) };
    let result = match compiled {
        Err(e) => {
            // SAFETY: prog is live.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|chars| {
                    let bytes: Vec<u8> = chars
                        .iter()
                        .map(|&c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            Err(compile_err(format!("{e:?}\n{log}")))
        }
        // SAFETY: prog is live and compiled.
        Ok(()) => {
            unsafe { get_cubin(prog) }.map_err(|e| compile_err(format!("nvrtcGetCUBIN: {e:?}")))
        }
    };
    // SAFETY: prog was created above and is destroyed once.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// `nvrtc::create_program` with one in-memory header (cudarc's wrapper passes
/// none).
fn create_program_with_header(
    src: &CStr,
    name: &CStr,
    header: &CStr,
    header_name: &CStr,
) -> std::result::Result<nvrtc_sys::nvrtcProgram, nvrtc::NvrtcError> {
    let mut prog = MaybeUninit::uninit();
    let headers = [header.as_ptr()];
    let include_names = [header_name.as_ptr()];
    // SAFETY: every pointer is a NUL-terminated string that outlives the call
    // (NVRTC copies the sources); the arrays hold one element each, as
    // numHeaders says; prog is written on success only.
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            include_names.as_ptr(),
        )
        .result()?;
        Ok(prog.assume_init())
    }
}

/// # Safety
/// `prog` must be a live, successfully compiled program for a real `sm_` arch.
unsafe fn get_cubin(
    prog: nvrtc_sys::nvrtcProgram,
) -> std::result::Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size: usize = 0;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut cubin = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()).result()?;
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn hash_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
