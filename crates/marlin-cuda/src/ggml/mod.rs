//! GGUF (ggml) block types on the GPU.
//!
//! [`GgmlGpuWeight::upload`] splits every block losslessly into a 16-byte
//! aligned "codes" plane and a "meta" plane ([`layout`]); F32 and BF16
//! weights become dense f32 (BF16 widened exactly), F16 stays f16.
//!
//! - Decode (m <= 8; block types of at most 2^21 elements up to m = 16): x
//!   is quantized on the device to int8 blocks of 32
//!   with an f32 scale d = max|x|/127 and s = d·Σq (the CPU's arithmetic,
//!   marlin-cpu `ggml::act`); one warp per output row reads the blocks with
//!   16-byte loads and dots them with `dp4a`, fp32 accumulation. Error of the
//!   activation rounding: |Δy| <= Σ_i |w_i| d_blk(i) / 2 (as on the CPU, with
//!   32-blocks for the K-quants too). More than 8 rows run as launches of
//!   8 rows (and the rest), each reading the small weight again (from L2),
//!   and every row gets the bits it would get in a launch of its own. Dense
//!   weights use an f32 GEMV on the exact activations.
//! - Prefill (larger m): the weight is dequantized into a shared f16 scratch,
//!   x is copied to f16 with a per-row power-of-two scale (max|x| of each row
//!   lands in [2^14, 2^15): large activations cannot overflow f16, small ones
//!   keep full f16 precision; the scale is undone exactly on the f32 output),
//!   then cuBLAS GemmEx with fp32 accumulation. Relative error per product is
//!   about 2^-11 (f16 rounding of weight and activation). F32/BF16 weights
//!   use fp32 SGEMM on the exact activations.
//! - [`GgmlGpuWeight::get_rows`] dequantizes embedding rows bit-identically
//!   to the reference (`GgmlTensor::dequantize`), then multiplies by a scale.

mod launch;
pub mod layout;
pub mod random;
mod scratch;

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_quant::{GgmlTensor, GgmlType};

use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use launch::{GemmInputs, DECODE_MAX_M};
pub use layout::is_supported;
use scratch::{ensure, Scratch};

/// Largest m that takes the decode kernels for every weight (larger m
/// dequantizes + cuBLAS, except small block-type weights:
/// [`block_decode_max_rows`]).
pub const DECODE_MAX_ROWS: usize = DECODE_MAX_M;
/// Block-type weights of at most this many elements take the decode
/// kernels up to [`SMALL_DECODE_MAX_ROWS`] rows, in launches of 8 rows,
/// and keep an f16 copy for more rows once prepared for them
/// ([`GgmlGpuWeight::prepare`]).
pub const SMALL_WEIGHT_ELEMS: usize = 1 << 21;
/// See [`SMALL_WEIGHT_ELEMS`].
pub const SMALL_DECODE_MAX_ROWS: usize = 16;

/// Largest m that takes the decode kernels for a block-type weight of
/// `rows x cols` (docs/CUDA.md change 90, H100: on SmolLM2's and Gemma 3
/// 270M's weights, 576 x 576 .. 2048 x 640, the prefill path costs 22-36 µs
/// whatever m (dequantize, cuBLAS, launches), two decode launches 12-16 µs
/// at m = 9..16, three 16-22 µs at m = 17..24 (but SmolLM2's serving pass at
/// 24 sequences was 5% slower with them, at 12 and 16 13-16% faster); on
/// 4096 x 4096 and larger weights two or more launches of the K-quants cost
/// more than the prefill path from m = 16 on).
pub fn block_decode_max_rows(rows: usize, cols: usize) -> usize {
    if rows.saturating_mul(cols) <= SMALL_WEIGHT_ELEMS {
        SMALL_DECODE_MAX_ROWS
    } else {
        DECODE_MAX_M
    }
}

/// Where the weight lives on the device.
enum Storage {
    /// Split blocks: codes (rows * blocks_per_row * code_bytes) and meta
    /// (rows * blocks_per_row * meta_bytes).
    Blocks {
        codes: CudaSlice<u8>,
        meta: CudaSlice<u8>,
    },
    /// (rows, cols) f32 (from F32 or, widened, BF16).
    DenseF32(CudaSlice<f32>),
    /// (rows, cols) f16.
    DenseF16(CudaSlice<f16>),
}

/// A ggml-typed (rows, cols) weight resident on one device.
pub struct GgmlGpuWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    storage: Storage,
    device_bytes: usize,
    /// The device the weight lives on (compared by address with `dev` at
    /// every call).
    device: std::sync::Weak<CudaDevice>,
    scratch: Arc<Mutex<Scratch>>,
    /// A small block-type weight's (<= [`SMALL_WEIGHT_ELEMS`]) f16 copy,
    /// made by `prepare` for m past the decode kernels: the prefill path
    /// then skips its dequantization launch (bit-identical: the same
    /// kernel's output, once). Large weights dequantize per call into the
    /// shared scratch instead (an f16 copy of them would cost 2 bytes a
    /// weight of device memory).
    f16_copy: std::sync::OnceLock<CudaSlice<f16>>,
}

impl std::fmt::Debug for GgmlGpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgmlGpuWeight")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("device_bytes", &self.device_bytes)
            .finish()
    }
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl GgmlGpuWeight {
    /// Raw blocks uploaded as they are (or repacked losslessly); F32/F16/BF16 become dense.
    pub fn upload(dev: &Arc<CudaDevice>, t: &GgmlTensor) -> Result<Self> {
        layout::check_tensor(t)?;
        let what = format!("{} weight {}x{}", t.ty.name(), t.rows, t.cols);
        let storage = match t.ty {
            GgmlType::F32 => Storage::DenseF32(dev.upload(&what, &le_f32(&t.data))?),
            GgmlType::BF16 => {
                let wide: Vec<f32> = t
                    .data
                    .chunks_exact(2)
                    .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                    .collect();
                Storage::DenseF32(dev.upload(&what, &wide)?)
            }
            GgmlType::F16 => {
                let h: Vec<f16> = t
                    .data
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect();
                Storage::DenseF16(dev.upload(&what, &h)?)
            }
            ty => {
                let split = layout::block_split(ty).ok_or_else(|| layout::unsupported(ty))?;
                let planes = layout::split(t, &split)?;
                Storage::Blocks {
                    codes: dev.upload(&format!("{what} codes"), &planes.codes)?,
                    meta: dev.upload(&format!("{what} scales"), &planes.meta)?,
                }
            }
        };
        let device_bytes = match &storage {
            Storage::Blocks { codes, meta } => codes.len() + meta.len(),
            Storage::DenseF32(w) => 4 * w.len(),
            Storage::DenseF16(w) => 2 * w.len(),
        };
        Ok(Self {
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            storage,
            device_bytes,
            device: Arc::downgrade(dev),
            scratch: scratch::for_device(dev)?,
            f16_copy: std::sync::OnceLock::new(),
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// N: output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// K: input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes the weight occupies on the device (and one decode matmul reads).
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    fn check_device(&self, dev: &CudaDevice) -> Result<()> {
        if std::ptr::eq(self.device.as_ptr(), dev) {
            Ok(())
        } else {
            Err(CudaError::Shape(format!(
                "{} weight used with a device it was not uploaded to",
                self.ty.name()
            )))
        }
    }

    fn lock_scratch(&self) -> Result<std::sync::MutexGuard<'_, Scratch>> {
        self.scratch
            .lock()
            .map_err(|_| CudaError::NotAvailable("ggml scratch lock poisoned".into()))
    }

    /// y (m, rows) = x (m, cols) · Wᵀ, f32 in/out. Buffers may be longer than needed.
    pub fn matmul(
        &self,
        dev: &CudaDevice,
        x: &CudaSlice<f32>,
        m: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.check_device(dev)?;
        layout::check_matmul(self.rows, self.cols, m, x.len(), y.len())?;
        if m == 0 {
            return Ok(());
        }
        let (rows, cols) = (self.rows, self.cols);
        let mut s = self.lock_scratch()?;
        let s = &mut *s;
        match &self.storage {
            Storage::DenseF32(w) if m <= DECODE_MAX_ROWS => {
                return launch::gemv_dense(dev, false, w, x, y, m, rows, cols)
            }
            Storage::DenseF16(w) if m <= DECODE_MAX_ROWS => {
                return launch::gemv_dense(dev, true, w, x, y, m, rows, cols)
            }
            Storage::Blocks { codes, meta } if m <= block_decode_max_rows(rows, cols) => {
                let qs = ensure(dev, &mut s.act_qs, m * cols, "ggml activation codes")?;
                let ds = ensure(
                    dev,
                    &mut s.act_ds,
                    2 * m * cols / 32,
                    "ggml activation scales",
                )?;
                launch::quantize_q8x32(dev, x, m, cols, qs, ds)?;
                // Launches of at most DECODE_MAX_M rows; row r's activation
                // codes, scales and outputs start at r * cols, r * cols / 16
                // (the {d, s} pairs of cols / 32 blocks) and r * rows.
                for r0 in (0..m).step_by(DECODE_MAX_M) {
                    let n = (m - r0).min(DECODE_MAX_M);
                    launch::mmvq(
                        dev,
                        self.ty,
                        codes,
                        meta,
                        &qs.slice(r0 * cols..),
                        &ds.slice(r0 * cols / 16..),
                        &mut y.slice_mut(r0 * rows..),
                        n,
                        rows,
                        cols,
                    )?;
                }
                return Ok(());
            }
            _ => {}
        }
        // An f16 weight to multiply as it is: an F16 tensor, or a small
        // block weight's copy (`prepare`).
        let f16_weight = match &self.storage {
            Storage::DenseF16(w) => Some(w),
            Storage::Blocks { .. } => self.f16_copy.get(),
            Storage::DenseF32(_) => None,
        };
        match (&self.storage, f16_weight) {
            (Storage::DenseF32(w), _) => {
                launch::gemm_ex(dev, GemmInputs::F32, w, x, y, m, rows, cols)
            }
            (_, Some(w16)) => {
                let (xh, inv) = prefill_x(dev, s, x, m, cols)?;
                launch::gemm_ex(dev, GemmInputs::F16, w16, xh, y, m, rows, cols)?;
                launch::scale_rows(dev, y, inv, m, rows)
            }
            (Storage::Blocks { codes, meta }, None) => {
                let w16 = ensure(dev, &mut s.w_f16, rows * cols, "ggml dequantized weight")?;
                launch::dequant_f16(dev, self.ty, codes, meta, w16, rows, cols)?;
                let w16 = s
                    .w_f16
                    .take()
                    .ok_or_else(|| CudaError::Shape("dequant scratch missing".into()))?;
                let result = prefill_x(dev, s, x, m, cols).and_then(|(xh, inv)| {
                    launch::gemm_ex(dev, GemmInputs::F16, &w16, xh, y, m, rows, cols)?;
                    launch::scale_rows(dev, y, inv, m, rows)
                });
                s.w_f16 = Some(w16);
                result
            }
            (Storage::DenseF16(_), None) => Err(CudaError::Shape("f16 weight missing".into())),
        }
    }

    /// Embedding lookup: out (n, cols) = dequantized rows ids[..n] times `scale`; ids out of range -> error-free zero rows.
    pub fn get_rows(
        &self,
        dev: &CudaDevice,
        ids: &CudaSlice<u32>,
        n: usize,
        scale: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.check_device(dev)?;
        layout::check_get_rows(self.cols, n, ids.len(), out.len())?;
        if n == 0 {
            return Ok(());
        }
        let (rows, cols) = (self.rows, self.cols);
        match &self.storage {
            Storage::Blocks { codes, meta } => {
                launch::get_rows_blocks(dev, self.ty, codes, meta, ids, n, scale, out, rows, cols)
            }
            Storage::DenseF32(w) => {
                launch::get_rows_dense(dev, false, w, ids, n, scale, out, rows, cols)
            }
            Storage::DenseF16(w) => {
                launch::get_rows_dense(dev, true, w, ids, n, scale, out, rows, cols)
            }
        }
    }

    /// Allocates every scratch buffer `matmul` needs for m <= max_m, so that later calls allocate nothing
    /// and do not synchronise (G4 captures the decode step in a CUDA graph).
    ///
    /// Also compiles and loads every kernel those calls launch (and creates
    /// the cuBLAS handle when max_m passes the decode kernels' rows). Growing the shared scratch
    /// reallocates it: prepare every weight before capturing a graph.
    pub fn prepare(&self, dev: &CudaDevice, max_m: usize) -> Result<()> {
        self.check_device(dev)?;
        let (rows, cols) = (self.rows, self.cols);
        let decode_m = max_m.min(DECODE_MAX_M);
        let mut s = self.lock_scratch()?;
        let s = &mut *s;
        let blocks = matches!(self.storage, Storage::Blocks { .. });
        // Rows up to which this weight takes its decode kernels.
        let decode_limit = if blocks {
            block_decode_max_rows(rows, cols)
        } else {
            DECODE_MAX_ROWS
        };
        if blocks && decode_m > 0 {
            let rows_q = max_m.min(decode_limit);
            ensure(dev, &mut s.act_qs, rows_q * cols, "ggml activation codes")?;
            ensure(
                dev,
                &mut s.act_ds,
                2 * rows_q * cols / 32,
                "ggml activation scales",
            )?;
            launch::load(dev, launch::QUANTIZE)?;
        }
        for m in 1..=decode_m {
            let name = match &self.storage {
                Storage::Blocks { .. } => launch::mmvq_name(self.ty, m),
                Storage::DenseF32(_) => launch::gemv_name(false, m),
                Storage::DenseF16(_) => launch::gemv_name(true, m),
            };
            let name = name.ok_or_else(|| layout::unsupported(self.ty))?;
            launch::load(dev, name)?;
        }
        if blocks {
            if let Some((dequant, get_rows)) = launch::block_kernel_names(self.ty) {
                launch::load(dev, get_rows)?;
                if max_m > decode_limit {
                    launch::load(dev, dequant)?;
                }
            }
        } else {
            launch::load(dev, launch::GET_ROWS_DENSE)?;
        }
        if max_m > decode_limit {
            if !matches!(self.storage, Storage::DenseF32(_)) {
                ensure(dev, &mut s.x_f16, max_m * cols, "ggml f16 activations")?;
                ensure(dev, &mut s.inv_scale, max_m, "ggml activation row scales")?;
                launch::load(dev, launch::X_TO_F16)?;
                launch::load(dev, launch::SCALE_ROWS)?;
            }
            if let Storage::Blocks { codes, meta } = &self.storage {
                if rows.saturating_mul(cols) <= SMALL_WEIGHT_ELEMS {
                    if self.f16_copy.get().is_none() {
                        let mut w16 =
                            dev.alloc_zeros::<f16>("ggml f16 weight copy", rows * cols)?;
                        launch::dequant_f16(dev, self.ty, codes, meta, &mut w16, rows, cols)?;
                        // A racing prepare of the same weight made the same copy.
                        let _ = self.f16_copy.set(w16);
                    }
                } else {
                    ensure(dev, &mut s.w_f16, rows * cols, "ggml dequantized weight")?;
                }
            }
            dev.with_blas(|_| Ok(()))?;
        }
        Ok(())
    }
}

/// x (m, cols) as row-scaled f16 in the scratch, and the inverse scales.
fn prefill_x<'a>(
    dev: &CudaDevice,
    s: &'a mut Scratch,
    x: &CudaSlice<f32>,
    m: usize,
    cols: usize,
) -> Result<(&'a CudaSlice<f16>, &'a CudaSlice<f32>)> {
    ensure(dev, &mut s.x_f16, m * cols, "ggml f16 activations")?;
    ensure(dev, &mut s.inv_scale, m, "ggml activation row scales")?;
    let (Some(xh), Some(inv)) = (s.x_f16.as_mut(), s.inv_scale.as_mut()) else {
        return Err(CudaError::Shape("prefill scratch missing".into()));
    };
    launch::x_to_f16_scaled(dev, x, m, cols, xh, inv)?;
    Ok((xh, inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model code shares weights across threads (e.g. behind an `Arc`).
    #[test]
    fn weight_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GgmlGpuWeight>();
    }

    #[test]
    fn kernel_names_cover_every_supported_block_type_and_m() {
        for id in 0..64 {
            let Some(ty) = GgmlType::from_id(id) else {
                continue;
            };
            let blocks = layout::block_split(ty).is_some();
            assert_eq!(launch::block_kernel_names(ty).is_some(), blocks, "{ty:?}");
            for m in 1..=DECODE_MAX_M {
                assert_eq!(launch::mmvq_name(ty, m).is_some(), blocks, "{ty:?} m={m}");
            }
            assert!(launch::mmvq_name(ty, 0).is_none());
            assert!(launch::mmvq_name(ty, DECODE_MAX_M + 1).is_none());
        }
        // Every kernel family the host launches is instantiated in the source
        // (names are pasted together by the source's macros).
        let has_line = |prefix: &str, suffix: &str| {
            launch::SOURCE
                .lines()
                .any(|l| l.starts_with(prefix) && l.trim_end().ends_with(suffix))
        };
        for id in 0..64 {
            if let Some(s) = GgmlType::from_id(id).and_then(layout::block_split) {
                let suffix = format!(", {})", s.kernel_name);
                assert!(has_line("MMVQ_ALL_M(", &suffix), "{suffix}");
                assert!(has_line("BLOCK_ENTRIES(", &suffix), "{suffix}");
            }
        }
        assert!(has_line("GEMV_ALL_M(false", "f32)") && has_line("GEMV_ALL_M(true", "f16)"));
        for name in [
            launch::QUANTIZE,
            launch::GET_ROWS_DENSE,
            launch::X_TO_F16,
            launch::SCALE_ROWS,
        ] {
            assert!(launch::SOURCE.contains(name), "{name}");
        }
    }
}
