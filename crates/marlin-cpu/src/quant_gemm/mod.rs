//! Kernels for dense-packed `QuantTensor` schemes (`Layout::KMajorDense`).
//!
//! [`PreparedQuant::new`] checks the tensor once and repacks it into one of
//! three paths (details in `docs/CPU_KERNELS.md`):
//!
//! - **integer dot** (INT2..INT8 with or without zero points, FP4 E2M1 with
//!   E8M0 / E4M3 / any scales, so MXFP4 and NVFP4): codes in interleaved
//!   superblocks of 256, activations quantized to int8 per 32 once per call,
//!   `maddubs` dot products, one scale vector per superblock. A decode
//!   kernel (M < [`BATCHED_MIN_M`]: every weight row streamed once) and a
//!   batched kernel (tiles of 16 rows unpacked once into L2, 1x4 register
//!   blocks over (rows, activations)).
//! - **FP8** (E4M3 / E5M2, per-channel, per-group or 2D blocks): codes
//!   decoded 16 at a time through F16C, f32 FMA with up to 4 activation rows
//!   per decode.
//! - **generic** (everything else, e.g. NF4 or act-order whose groups are
//!   not all of one size): rows dequantized to f32, then dot products.
//!
//! Batch invariance: every path computes each output element with one
//! reduction order whatever M is and whichever rows share the batch (the
//! decode and batched int-dot kernels apply the same f32 operations per
//! superblock; the f32 paths use one dot per element), so row i of a
//! product equals the M = 1 product of activation row i bitwise.
//!
//! Each path has a scalar version; AVX2+FMA+F16C versions are chosen once,
//! at `new`, with `is_x86_feature_detected!`. Work is split over output rows
//! on [`crate::pool`].

mod actq;
mod codes;
mod intdot;
#[cfg(target_arch = "x86_64")]
mod intdot_avx2;
#[cfg(target_arch = "x86_64")]
mod intdot_vnni;
mod lanegrid;
mod rowdec;

use crate::CpuError;
use actq::QuantActs;
use intdot::IntDotWeights;
use marlin_quant::QuantTensor;
use rowdec::{Fp8Weights, GenericWeights};

/// Activation rows from which the integer-dot path uses its batched kernel.
pub const BATCHED_MIN_M: usize = 8;

/// Instruction set of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelIsa {
    /// Portable scalar code (the fallback, and the reference for the SIMD
    /// kernels: same algorithm, same int8 activations).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 + FMA + F16C + AVX-512 F/BW/VNNI: the integer-dot kernels use
    /// `vpdpbusd` on 64-byte registers (bitwise the AVX2 kernels' results);
    /// the FP8 and generic paths run their AVX2 / f32 code.
    Avx512Vnni,
}

impl KernelIsa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        *Self::available().last().unwrap_or(&KernelIsa::Scalar)
    }

    /// Every instruction set this CPU runs, from `Scalar` to the best.
    pub fn available() -> Vec<Self> {
        let mut isas = vec![KernelIsa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            isas.push(KernelIsa::Avx2);
            if intdot_vnni::available() {
                isas.push(KernelIsa::Avx512Vnni);
            }
        }
        isas
    }

    /// Short name, as in [`PreparedQuant::kernel_name`].
    pub fn name(self) -> &'static str {
        match self {
            KernelIsa::Scalar => "scalar",
            KernelIsa::Avx2 => "avx2",
            KernelIsa::Avx512Vnni => "avx512vnni",
        }
    }
}

type RowsKernel = fn(&IntDotWeights, &QuantActs, std::ops::Range<usize>, &mut [f32]);

fn intdot_rows_scalar(
    w: &IntDotWeights,
    a: &QuantActs,
    rows: std::ops::Range<usize>,
    yt: &mut [f32],
) {
    w.rows_scalar(a, rows, yt)
}

#[derive(Clone)]
enum Path {
    IntDot {
        w: IntDotWeights,
        decode: RowsKernel,
        batched: RowsKernel,
    },
    Fp8(Fp8Weights),
    Generic(GenericWeights),
}

/// A `QuantTensor` repacked once for the CPU kernels: `matmul` computes
/// `y (m, N) = x (m, K) · Wᵀ` for f32 activations. `Clone` copies the
/// repacked weights (the benchmark rotates through copies so that every
/// timed call streams them from DRAM).
#[derive(Clone)]
pub struct PreparedQuant {
    rows: usize,
    cols: usize,
    isa: KernelIsa,
    /// Boxed: keeps `CpuWeight` small.
    path: Box<Path>,
}

impl PreparedQuant {
    /// Checks `t` (`QuantTensor::validate`, plus finite zeros, FP8 NaN /
    /// infinity codes, group size dividing K) and repacks it for the best kernels of
    /// this CPU.
    pub fn new(t: &QuantTensor) -> Result<Self, CpuError> {
        Self::with_isa(t, KernelIsa::detect())
    }

    /// As [`PreparedQuant::new`] with a chosen instruction set; asking for
    /// one this CPU lacks is an error.
    pub fn with_isa(t: &QuantTensor, isa: KernelIsa) -> Result<Self, CpuError> {
        if !KernelIsa::available().contains(&isa) {
            return Err(CpuError::Unsupported(format!(
                "{} kernels on this CPU",
                isa.name()
            )));
        }
        // The reference's own rules (scales non-negative and representable
        // in their dtype, zero points in range...), then the kernel's.
        t.validate()?;
        let ct = codes::CheckedTensor::new(t)?;
        let path = if let Some(w) = IntDotWeights::new(&ct) {
            let (decode, batched) = intdot_kernels(&w, isa);
            Path::IntDot { w, decode, batched }
        } else if let Some(w) = Fp8Weights::new(&ct) {
            Path::Fp8(w)
        } else {
            Path::Generic(GenericWeights::new(&ct))
        };
        Ok(PreparedQuant {
            rows: t.rows,
            cols: t.cols,
            isa,
            path: Box::new(path),
        })
    }

    /// N: output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// K: input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The kernel family and instruction set in use, e.g. `"int-dot Nibble avx2"`.
    pub fn kernel_name(&self) -> String {
        let isa = self.isa.name();
        match self.path.as_ref() {
            Path::IntDot { w, .. } => format!("int-dot {:?} {isa}", w.fmt),
            Path::Fp8(_) if self.isa == KernelIsa::Avx512Vnni => "fp8 avx512".to_string(),
            Path::Fp8(_) => format!("fp8 {isa}"),
            Path::Generic(_) => "generic f32".to_string(),
        }
    }

    /// Whether a SIMD/integer fast path (not the generic one) is in use.
    pub fn is_fast_path(&self) -> bool {
        !matches!(self.path.as_ref(), Path::Generic(_))
    }

    /// Bytes of weight data (codes, scales, zeros) one matmul streams.
    pub fn stream_bytes(&self) -> usize {
        match self.path.as_ref() {
            Path::IntDot { w, .. } => w.stream_bytes(),
            Path::Fp8(w) => w.stream_bytes(),
            Path::Generic(w) => w.stream_bytes(),
        }
    }

    /// `y (m, N) = x (m, K) · Wᵀ`, multi-threaded on [`crate::pool`].
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k) = (self.rows, self.cols);
        crate::check_matmul_shapes(x.len(), y.len(), m, n, k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            y.fill(0.0);
            return Ok(());
        }
        match self.path.as_ref() {
            Path::IntDot { w, decode, batched } => {
                let simd = self.isa != KernelIsa::Scalar;
                let mut acts = QuantActs::new(x, m, k, w.perm.as_deref(), simd)?;
                #[cfg(target_arch = "x86_64")]
                if self.isa == KernelIsa::Avx512Vnni && m < BATCHED_MIN_M {
                    acts.reorder_vectors(intdot_vnni::decode_vector_order(w.fmt.id()));
                }
                let (kernel, chunk) = if m >= BATCHED_MIN_M {
                    (*batched, 16)
                } else {
                    (*decode, decode_chunk(n))
                };
                for_row_chunks(n, m, chunk, y, |rows, yt| kernel(w, &acts, rows, yt))?;
            }
            Path::Fp8(w) => {
                #[cfg(target_arch = "x86_64")]
                if self.isa != KernelIsa::Scalar {
                    // xp (m, kp): x with rows zero padded to whole 16-code steps.
                    let mut xp = vec![0f32; m * w.kp];
                    for (dst, src) in xp.chunks_mut(w.kp).zip(x.chunks(k)) {
                        dst[..k].copy_from_slice(src);
                    }
                    if self.isa == KernelIsa::Avx512Vnni && m >= BATCHED_MIN_M {
                        // Same f32 operations per element as the AVX2
                        // kernels, two weight rows per register.
                        for_row_chunks(n, m, 16, y, |rows, yt| {
                            rowdec::fp8_avx512::rows(w, &xp, m, rows, yt)
                        })?;
                        return Ok(());
                    }
                    if self.isa == KernelIsa::Avx512Vnni {
                        // Decode: the AVX2 kernel's operations on 64-byte
                        // registers, several rows' FMA chains at once.
                        for_row_chunks(n, m, decode_chunk(n), y, |rows, yt| {
                            rowdec::fp8_avx512::decode_rows(w, &xp, m, rows, yt)
                        })?;
                        return Ok(());
                    }
                    for_row_chunks(n, m, decode_chunk(n), y, |rows, yt| {
                        rowdec::fp8_avx2::rows(w, &xp, m, rows, yt)
                    })?;
                    return Ok(());
                }
                for_row_chunks(n, m, decode_chunk(n), y, |rows, yt| {
                    rowdec::rows_by_dot(w, x, m, rows, yt)
                })?;
            }
            Path::Generic(w) => {
                for_row_chunks(n, m, decode_chunk(n), y, |rows, yt| {
                    rowdec::rows_by_dot(w, x, m, rows, yt)
                })?;
            }
        }
        Ok(())
    }
}

fn intdot_kernels(w: &IntDotWeights, isa: KernelIsa) -> (RowsKernel, RowsKernel) {
    #[cfg(target_arch = "x86_64")]
    {
        let k = match isa {
            KernelIsa::Avx512Vnni => intdot_vnni::kernels(w.fmt.id(), w.scales.halves),
            KernelIsa::Avx2 => intdot_avx2::kernels(w.fmt.id(), w.scales.halves),
            KernelIsa::Scalar => None,
        };
        if let Some(k) = k {
            return k;
        }
    }
    let _ = (w, isa);
    (intdot_rows_scalar, intdot_rows_scalar)
}

/// Rows per task of the decode paths: about 16 tasks per thread (claimed
/// from a shared counter, so the last one bounds the idle tail), at least 8
/// rows.
fn decode_chunk(n: usize) -> usize {
    let threads = crate::pool::current().threads().max(1);
    n.div_ceil(threads * 16).max(8)
}

/// Runs `f(rows, yt)` over chunks of output rows on [`crate::pool`] (the
/// caller works too; idle workers spin briefly, so a decode step's many
/// short products do not pay a thread wake-up each), `yt` being the
/// chunk's (rows, m) block of the transposed output; each task then writes
/// its block into y (m, N) (one 64-byte run per activation row for a
/// 16-row chunk, instead of a whole-matrix transpose afterwards).
fn for_row_chunks<F>(n: usize, m: usize, chunk: usize, y: &mut [f32], f: F) -> Result<(), CpuError>
where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    let pool = crate::pool::current();
    if m == 1 {
        // yᵀ of one row is y itself.
        return pool.try_for_each_chunk_mut(y, chunk, |c, yc| {
            let start = c * chunk;
            f(start..(start + chunk).min(n), yc);
            Ok(())
        });
    }
    debug_assert!(y.len() >= m * n);
    let y_out = OutPtr(y.as_mut_ptr());
    pool.try_for_each(n.div_ceil(chunk), |c| {
        let rows = c * chunk..((c + 1) * chunk).min(n);
        let mut yt = vec![0f32; rows.len() * m];
        f(rows.clone(), &mut yt);
        for mi in 0..m {
            for (ri, r) in rows.clone().enumerate() {
                // SAFETY: r < n and mi < m, inside y (m * n values, checked
                // by the caller); tasks own disjoint row ranges, so no two
                // write the same element, and y stays borrowed until every
                // task has returned.
                unsafe { *y_out.get().add(mi * n + r) = yt[ri * m + mi] };
            }
        }
        Ok(())
    })
}

/// y's pointer, shared by the tasks of [`for_row_chunks`] (disjoint columns).
struct OutPtr(*mut f32);
// SAFETY: only used by `for_row_chunks`, whose tasks write disjoint elements.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}
