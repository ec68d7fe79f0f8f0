//! Device side of the W4A16 GEMM: weights uploaded once, the split-K
//! workspace, and the checked launch.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::GemmConfig;
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};
use marlin_quant::QuantTensor;

use super::pack::{pack_int4, Int4Packed, N_TILE};
use super::{bulk, wgmma, wgmma_ws};
use crate::act::{Act, ActDtype};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::knobs;
use crate::ops::launch::{KernelArg, KernelLaunch};
use crate::ops::to_i32;

pub(super) const MODULE: &str = "w4a16_gemm";
pub(super) const SOURCE: &str = include_str!("../kernels/w4a16_gemm.cu");
/// The same source with bf16 activations (`MARLIN_ACT_BF16`, crate::act):
/// the decode, stream-K and general kernels and the dequantizer
/// (`w4_dequant_bf16`) under the f16 module's entry names.
const BF16_MODULE: &str = "w4a16_gemm_bf16";
const BF16_SOURCE: &str = concat!(
    "#define MARLIN_ACT_BF16 1\n",
    include_str!("../kernels/w4a16_gemm.cu")
);

/// Module name and source of the plain kernels for activation type `act`.
fn gemm_module(act: Act) -> (&'static str, &'static str) {
    match (act, kernel_probe()) {
        (Act::F16, Some(probe)) => (probe.plain.0.as_str(), probe.plain.1.as_str()),
        (Act::F16, None) => (MODULE, SOURCE),
        (Act::Bf16, _) => (BF16_MODULE, BF16_SOURCE),
    }
}

/// A timing probe of the f16 INT4 kernels (`MARLIN_INT4_DEC_PROBE`, sessions
/// 19-20): the source compiled with defines that remove one part of the
/// work each, so that a benchmark shows what that part costs. Every kernel
/// of a probe module computes wrong products (see the source's comment).
/// The value is `+`-separated parts, in any order:
/// - `no-offset` (`W4_DQ_PROBE 1`): only the lop3 with the magic number of
///   the dequantisation;
/// - `raw` (`W4_DQ_PROBE 2`): the code words as fragments, no
///   dequantisation;
/// - `no-act` (`W4_PROBE_NO_ACT`): the decode kernels neither copy their
///   activation tile nor wait for it;
/// - `no-scale` (`W4_PROBE_NO_SCALE`): the decode kernels' quad loops fold
///   with 1.0 (no scale loads, no group bookkeeping);
/// - `no-store` (`W4_PROBE_NO_STORE`): the decode kernels' split-free
///   epilogue stores nothing (unless a sum is exactly 1e-30);
/// - `no-scale-tile` (`W4_PROBE_NO_SCALE_TILE`): the decode kernels do not
///   copy their scale rows in the prologue.
///
/// Module names and prefixes are canonical (parts in the order above;
/// `scripts/gpu_prewarm_kernels.py` reads [`PROBE_PARTS`] from this file
/// and builds the same ones).
struct KernelProbe {
    /// (module name, source) of the plain kernels.
    plain: (String, String),
    /// (module name, source) of the fused decode-step kernels.
    fused: (String, String),
}

/// The probe parts in canonical order: (name, define).
const PROBE_PARTS: [(&str, &str); 6] = [
    ("no-offset", "#define W4_DQ_PROBE 1\n"),
    ("raw", "#define W4_DQ_PROBE 2\n"),
    ("no-act", "#define W4_PROBE_NO_ACT 1\n"),
    ("no-scale", "#define W4_PROBE_NO_SCALE 1\n"),
    ("no-store", "#define W4_PROBE_NO_STORE 1\n"),
    ("no-scale-tile", "#define W4_PROBE_NO_SCALE_TILE 1\n"),
];

/// Parses a `MARLIN_INT4_DEC_PROBE` value into its canonical part flags
/// (None: not a module probe, e.g. `skip-loop` or an unknown part).
fn parse_kernel_probe(value: &str) -> Option<[bool; 6]> {
    let mut on = [false; 6];
    for part in value.split('+').map(str::trim) {
        let i = PROBE_PARTS.iter().position(|(name, _)| *name == part)?;
        on[i] = true;
    }
    // no-offset and raw are two forms of one define.
    (!(on[0] && on[1])).then_some(on)
}

/// Module name suffix and source prefix of the parts `on`.
fn probe_module_parts(on: &[bool; 6]) -> (String, String) {
    let mut suffix = String::from("_probe");
    let mut prefix = String::new();
    for ((name, define), _) in PROBE_PARTS.iter().zip(on).filter(|(_, on)| **on) {
        suffix.push('_');
        suffix.push_str(&name.replace('-', "_"));
        prefix.push_str(define);
    }
    (suffix, prefix)
}

/// The kernel probe of `MARLIN_INT4_DEC_PROBE` (read once). The first read
/// says on stderr that the INT4 GEMMs return wrong values.
fn kernel_probe() -> Option<&'static KernelProbe> {
    static PROBE: OnceLock<Option<KernelProbe>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let value = std::env::var("MARLIN_INT4_DEC_PROBE").ok()?;
            let on = parse_kernel_probe(value.trim())?;
            let (suffix, prefix) = probe_module_parts(&on);
            eprintln!(
                "marlin: MARLIN_INT4_DEC_PROBE={}: the f16 INT4 GEMM kernels run a timing \
                 probe (module {MODULE}{suffix}) and return wrong values",
                value.trim()
            );
            Some(KernelProbe {
                plain: (format!("{MODULE}{suffix}"), format!("{prefix}{SOURCE}")),
                fused: (
                    format!("{FUSED_MODULE}{suffix}"),
                    format!("#define W4_FUSED_ENTRIES 1\n{prefix}{SOURCE}"),
                ),
            })
        })
        .as_ref()
}

/// The dequantizer entry of `gemm_module(act)`.
fn dequant_kernel(act: Act) -> &'static str {
    match act {
        Act::F16 => "w4_dequant_f16",
        Act::Bf16 => "w4_dequant_bf16",
    }
}
const THREADS: u32 = 128;
/// Chunks of 64 along K each split must get at least, so that the weight
/// pipeline (8 loads deep) fills before the epilogue.
const MIN_CHUNKS_PER_SPLIT: usize = 4;
/// Preferred chunks of 64 along K per split (see `plan`).
const TARGET_CHUNKS_PER_SPLIT: usize = 16;
/// Decode kernel (`w4a16_dec_*`, M <= 32): cp.async ring depth per warp of
/// the M <= 4 variants (`w4a16_dec_m4*`; keep in sync with W4A16_DEC_ENTRY
/// in the source): the chunks a warp issues before its PDL wait.
const DEC_STAGES_M4: usize = 16;
/// Ring depth of the other decode variants (M = 5..32).
const DEC_STAGES: usize = 8;
/// Decode kernel: largest M of the 16-stage variants.
const DEC_M4_MAX_M: usize = 4;
/// Decode kernel: activation tile budget of a block with up to 16 token rows
/// (16 rows x 2048 halves: 32 chunks of 64 per split), which bounds its
/// chunks per split. Forced split factors with longer splits take the
/// `w4a16_gemm_*` kernels.
const DEC_TILE_BUDGET_16: usize = 64 * 1024;
/// Decode kernel: activation tile budget of the 32-row variant (two blocks
/// per SM).
const DEC_TILE_BUDGET: usize = 88 * 1024;
/// Decode kernel: most warps per block (column blocks x K slices).
const DEC_MAX_WARPS: usize = 16;
/// Decode kernel: warps per SM the small-N plan aims for, rounded up to a
/// power-of-two number of K slices (H100 sweep, docs/CUDA.md change 19:
/// 4 K slices at N = 4096-6144, K = 4096-14336 beat 8 by 5-14%; more
/// warps with shorter K ranges pay more per-warp prologue and epilogue).
const DEC_WARPS_PER_SM: usize = 7;
/// Decode kernel, small-N plan at M <= 4: fewest chunks per warp of the
/// deeper K-slice candidate ([`small_candidates`], change 50 (e); with 16,
/// 4096x8192 M = 1 took 8 slices and was 0.5 us slower back to back).
const DEC_DEEP_MIN_CHUNKS: usize = 24;
/// Decode kernel, small-N plan: most K slices of the deeper candidate.
const DEC_DEEP_MAX_SLICES: usize = 8;
/// Decode kernel: from this many n16 column blocks on (N >= 16384) the plan
/// keeps 4 column blocks per block and global splits.
const DEC_LARGE_N16: usize = 1024;
/// Decode kernel: narrowest weight (n16 column blocks, N >= 14336) for the
/// whole-column plan ([`whole_column_shape`]) at K <= 4096 and M <= 8.
const DEC_WHOLE_COLUMN_MIN_N16: usize = 896;
/// Decode kernel: the whole-column plan's grid must keep at least this many
/// per mille of the SMs busy (one block per SM, no second wave).
const DEC_WHOLE_COLUMN_MIN_FILL: usize = 900;
/// Decode kernel: dynamic shared memory attribute (fits sm_80's 163 KiB);
/// plans that need more take more splits.
const DEC_SMEM_LIMIT: usize = 150 * 1024;
/// Decode kernel on sm_90 (227 KiB per block): the shared memory limit of
/// the plain (not fused) calls and their function attribute, which only the
/// whole-column plan (where [`DEC_SMEM_LIMIT`] gives it no shape), the
/// 2 x 4 plan at M <= 4 and forced benchmark shapes use beyond
/// [`DEC_SMEM_LIMIT`] (docs/CUDA.md change 48). 224 KiB leaves room for the
/// kernel's static shared memory (the 4-byte ticket flag) and is one block
/// per SM with its 1 KiB reserve (228 KiB per SM).
const DEC_SMEM_LIMIT_WIDE: usize = 224 * 1024;
// Within sm_90's 227 KiB block limit with room for the static shared memory.
const _: () = assert!(DEC_SMEM_LIMIT_WIDE + 1024 <= 227 * 1024);
/// Whole-column plan under [`DEC_SMEM_LIMIT_WIDE`]: most 64-chunks of K
/// (K <= 8192: 28672x8192 at M = 5..8 in one pass, at M = 9..16 in two
/// K splits).
const DEC_WIDE_MAX_KC: usize = 128;
/// Decode kernel: largest M (4 token tiles of 8). A 64-row variant (8
/// tiles, several blocks beyond 64 rows) measured 1.3-1.5x slower than the
/// general kernel at M = 64 (docs/CUDA.md, change 14) and was removed.
const DEC_MAX_M: usize = 32;
/// Decode kernel: default split-K factor (see `decode_plan`).
const DEC_SPLITS: usize = 8;
/// Stream-K decode kernel (`w4a16_sk_*`): ring depth per warp (a power of
/// two; keep in sync with W4A16_SK_ENTRY in the source).
const SK_STAGES: usize = 8;
/// Stream-K: warps per SM by default (one block of 16 warps: 64 KiB of
/// code words in flight per SM, twice the ~24-32 KiB that 3 TB/s x ~1-1.5
/// us of loaded DRAM latency / 132 SMs needs).
const SK_WARPS_PER_SM: usize = 16;
/// Stream-K: most warps per block (the kernel's launch bound).
const SK_MAX_BLOCK_WARPS: usize = 16;
/// Stream-K: fewest (column block, chunk) units per warp; smaller weights
/// take fewer warps.
const SK_MIN_UNITS_PER_WARP: usize = 4;
/// Stream-K: largest M (two token tiles; the whole A sits in shared memory).
pub const SK_MAX_M: usize = 16;
/// Narrowest weight (N) for which `GemmPath::Auto` takes the stream-K kernel
/// without `MARLIN_INT4_STREAMK` set. Measured on the H100 (docs/CUDA.md,
/// change 27 outcome): faster than the split-K decode kernel at N = 14336
/// and 28672 (28672x8192 M = 1: 49.0 vs 53.9 us; M = 8: 50.7 vs 66.0 us;
/// 14336x4096 M = 16: 22.0 vs 27.0 us), slower at N = 4096 (4096x4096
/// M = 1: 14.1 vs 7.6 us; 4096x14336 M = 1: 22.5 vs 15.7 us).
pub const SK_AUTO_MIN_N: usize = 14336;

/// An INT4 weight matrix resident on the device in the kernel's layout.
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    pub(super) n_pad: usize,
    pub(super) k_chunks: usize,
    /// Scale group size in units of 32 along K (1 = groups of 32; even
    /// otherwise; per channel: k_pad / 32).
    pub(super) group_k32: usize,
    pub(super) weight_bytes: usize,
    pub(super) words: CudaSlice<u32>, // (n_pad/64, k_pad/64, 4, 32, 4): pack::word_index
    pub(super) scales: CudaSlice<u32>, // (groups, n_pad/16, 8) f16x2
    pub(super) neg_zero_scales: Option<CudaSlice<u32>>,
    /// Shift m of the warp-specialised kernel's subnormal dequantisation
    /// (`wgmma_ws::subnormal_shift`): Some where every scale (and
    /// `-zero*scale`) lets it round exactly as the two-step form.
    pub(super) subnormal_shift: Option<i32>,
}

impl Int4Weight {
    /// Repack on the host and upload.
    pub fn from_quant(dev: &CudaDevice, w: &QuantTensor) -> Result<Self> {
        Self::from_packed(dev, &pack_int4(w)?)
    }

    pub fn from_packed(dev: &CudaDevice, p: &Int4Packed) -> Result<Self> {
        to_i32("N", p.n_pad)?;
        to_i32("K", p.k_pad)?;
        if p.group_size == 0
            || !(p.group_size == 32 || p.group_size.is_multiple_of(64))
            || p.groups != p.k_pad.div_ceil(p.group_size)
        {
            return Err(CudaError::Shape(format!(
                "packed INT4 weight with group size {} and {} groups for K = {}",
                p.group_size, p.groups, p.k_pad
            )));
        }
        let subnormal_shift =
            super::wgmma_ws::subnormal_shift(&p.scales, p.neg_zero_scales.as_deref());
        Ok(Self {
            subnormal_shift,
            n: p.n,
            k: p.k,
            n_pad: p.n_pad,
            k_chunks: p.k_chunks(),
            group_k32: p.group_size / 32,
            weight_bytes: p.weight_bytes(),
            words: dev.upload("INT4 weight codes", &p.words)?,
            scales: dev.upload("INT4 weight scales", &p.scales)?,
            neg_zero_scales: match &p.neg_zero_scales {
                Some(z) => Some(dev.upload("INT4 weight zero points", z)?),
                None => None,
            },
        })
    }

    /// Bytes one GEMM call streams from the weight (codes, scales, zeros).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Scale group size along K (per channel: K rounded up to 64).
    pub fn group_size(&self) -> usize {
        32 * self.group_k32
    }

    /// The shift m of the warp-specialised kernel's subnormal
    /// dequantisation (docs/CUDA.md change 51), or None where the weight's
    /// scales fall outside its exact range (the kernel then dequantises
    /// as before).
    pub fn subnormal_shift(&self) -> Option<i32> {
        self.subnormal_shift
    }
}

/// Scratch of the split-K reduction. Reuse one per stream: the tickets
/// return to zero at the end of every launch, so launches on one stream can
/// share it; concurrent streams need their own.
///
/// For CUDA graph capture, call [`GemmWorkspace::prepare`] once per (weight
/// shape, M, options) before capturing, then use [`int4_gemm_prepared`]
/// inside the capture: it never allocates, compiles, loads a module or
/// synchronises, and fails instead of doing so.
pub struct GemmWorkspace {
    pub(crate) partials: CudaSlice<f32>,
    pub(crate) tickets: CudaSlice<u32>,
    /// (N, K) f16 scratch of the large-M path, allocated at first use.
    pub(crate) dense: Option<CudaSlice<f16>>,
    /// The same for bf16 activations.
    pub(crate) dense_bf16: Option<CudaSlice<bf16>>,
    /// Staged activation image of the warp-specialised wgmma path
    /// ([`super::wgmma_ws`]), allocated by `prepare`: raw 16-bit
    /// activation words (bf16 calls stage bf16 bits; the kernels only
    /// copy them).
    pub(crate) staged_act: Option<CudaSlice<f16>>,
    /// Kernels loaded by `prepare` (checked by `int4_gemm_prepared`), by
    /// activation type (the bf16 module's entries have the f16 names).
    prepared: Vec<(Act, &'static str)>,
    /// How many times a buffer above was replaced by a larger one
    /// ([`GemmWorkspace::generation`]).
    generation: u64,
}

impl GemmWorkspace {
    /// Errors unless the split-K scratch holds `partials` floats and
    /// `tickets` counters (needed only when `splits > 1`); `prepare` names the
    /// call that sizes it.
    pub(crate) fn check_split_k(
        &self,
        splits: usize,
        partials: usize,
        tickets: usize,
        (m, n): (usize, usize),
        prepare: &str,
    ) -> Result<()> {
        if splits > 1 && (self.partials.len() < partials || self.tickets.len() < tickets) {
            return Err(CudaError::Shape(format!(
                "split-K workspace too small for M={m} N={n} ({splits} splits): call GemmWorkspace::{prepare}"
            )));
        }
        Ok(())
    }

    pub fn new(dev: &CudaDevice) -> Result<Self> {
        Ok(Self {
            partials: dev.alloc_zeros("split-K partials", 1)?,
            tickets: dev.alloc_zeros("split-K tickets", 1)?,
            dense: None,
            dense_bf16: None,
            staged_act: None,
            prepared: Vec::new(),
            generation: 0,
        })
    }

    /// Changes whenever `prepare` replaced one of the workspace's buffers
    /// by a larger one (a larger M, another weight). A CUDA graph captured
    /// before holds the old addresses: its owner must capture again (the
    /// old buffer is freed, and its memory may serve another allocation).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Grows the staged activation image of the warp-specialised kernels
    /// (INT4 and the `wgemm` formats share it) to at least `elems` halves
    /// (the old one is freed first: it is only scratch).
    pub(crate) fn reserve_staged_act(&mut self, dev: &CudaDevice, elems: usize) -> Result<()> {
        if self.staged_act.as_ref().is_none_or(|s| s.len() < elems) {
            self.staged_act = None;
            self.generation += 1;
            self.staged_act = Some(dev.alloc_zeros("staged activations (wgmma ws)", elems)?);
        }
        Ok(())
    }

    pub(crate) fn reserve(
        &mut self,
        dev: &CudaDevice,
        partials: usize,
        tickets: usize,
    ) -> Result<()> {
        if self.partials.len() < partials {
            self.generation += 1;
            self.partials = dev.alloc_zeros("split-K partials", partials)?;
        }
        if self.tickets.len() < tickets {
            self.generation += 1;
            self.tickets = dev.alloc_zeros("split-K tickets", tickets)?;
        }
        Ok(())
    }

    /// Makes the dequantize + cuBLAS path's dense (N, K) scratch of the
    /// activation type `act` hold at least N*K values (the INT4 and `wgemm`
    /// preparations share it). A scratch that is too small is freed before
    /// the larger one is allocated.
    pub(crate) fn ensure_dense(
        &mut self,
        dev: &CudaDevice,
        act: Act,
        n: usize,
        k: usize,
    ) -> Result<()> {
        fn grow<T: DeviceRepr + ValidAsZeroBits>(
            slot: &mut Option<CudaSlice<T>>,
            generation: &mut u64,
            dev: &CudaDevice,
            what: &str,
            elems: usize,
        ) -> Result<()> {
            if slot.as_ref().is_none_or(|d| d.len() < elems) {
                *slot = None;
                *generation += 1;
                *slot = Some(dev.alloc_zeros(what, elems)?);
            }
            Ok(())
        }
        let elems = n
            .checked_mul(k)
            .ok_or_else(|| CudaError::Shape("N*K overflows".into()))?;
        match act {
            Act::F16 => grow(
                &mut self.dense,
                &mut self.generation,
                dev,
                "f16 dequantized weight scratch",
                elems,
            ),
            Act::Bf16 => grow(
                &mut self.dense_bf16,
                &mut self.generation,
                dev,
                "bf16 dequantized weight scratch",
                elems,
            ),
        }
    }

    /// Make a later [`int4_gemm_prepared`] call of `m` rows with weight `w`
    /// and `opts` allocation- and synchronisation-free: compiles and loads
    /// its kernel, sizes the split-K scratch (and the dense f16 scratch and
    /// cuBLAS handle of the dequantize + cuBLAS path). Returns the plan that
    /// call will use. Call it for every (weight shape, M) to be captured.
    /// f16 activations; [`GemmWorkspace::prepare_for`] takes the type.
    pub fn prepare(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &Int4Weight,
        m: usize,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        self.prepare_for(dev, w, m, opts, Act::F16)
    }

    /// [`GemmWorkspace::prepare`] for activation type `act` (the bf16
    /// kernels are a module of their own, the dense scratch a buffer of
    /// its own).
    pub fn prepare_for(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &Int4Weight,
        m: usize,
        opts: GemmOptions,
        act: Act,
    ) -> Result<GemmPlan> {
        let (module, source) = gemm_module(act);
        match resolve_call(dev, m, w, opts, act)? {
            Call::Dequant => {
                self.ensure_dense(dev, act, w.n, w.k)?;
                dev.function(module, source, dequant_kernel(act), 0)?;
                dev.with_blas(|_| Ok(()))?;
                self.mark_prepared(act, dequant_kernel(act));
                Ok(dequant_plan())
            }
            Call::Wgmma(wc) => {
                wgmma::prepare(dev, &wc, self)?;
                self.mark_prepared(act, wc.plan.kernel);
                Ok(wc.plan)
            }
            Call::WgmmaWs(wc) => {
                wgmma_ws::prepare(dev, &wc, self)?;
                self.mark_prepared(act, wc.plan.kernel);
                Ok(wc.plan)
            }
            Call::Bulk(bc) => {
                bulk::prepare(dev, &bc, self)?;
                self.mark_prepared(act, bc.plan.kernel);
                Ok(bc.plan)
            }
            Call::StreamK(sc) => {
                self.reserve(dev, sc.partials, sc.tickets)?;
                dev.function(module, source, sc.plan.kernel, sc.max_smem)?;
                self.mark_prepared(act, sc.plan.kernel);
                Ok(sc.plan)
            }
            Call::Fused(fc) => {
                if fc.grid_splits > 1 {
                    self.reserve(dev, fc.partials, fc.tickets)?;
                }
                dev.function(module, source, fc.plan.kernel, fc.max_smem)?;
                self.mark_prepared(act, fc.plan.kernel);
                Ok(fc.plan)
            }
        }
    }

    /// Make a later [`int4_gemm_glu_prepared`] call of `m` rows with the
    /// stacked gate|up weight `w` load-free: compiles and loads its
    /// GLU-epilogue kernel (no scratch: the launch has no split-K). Errors,
    /// naming the constraint, where [`glu_epilogue_supported`] is false.
    pub fn prepare_glu(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &Int4Weight,
        m: usize,
    ) -> Result<&'static str> {
        let call = glu_call(m, w, dev).map_err(glu_unsupported)?;
        let (module, source) = fused_module();
        // The plain entry and its deferred-norm twin (same launch).
        for kernel in [call.kernel, glu_normed_kernel(call.kernel)] {
            dev.function(module, source, kernel, to_u32_smem(call.attr)?)?;
            self.mark_prepared(Act::F16, kernel);
        }
        Ok(call.kernel)
    }

    /// Loads the deferred-norm kernels of `m` rows of `w` (both roles:
    /// [`Int4Prologue::DeferredNorm`] and
    /// [`Int4Epilogue::AddToResidualNormed`]) and sizes the split-K
    /// workspace for them, so that a CUDA graph capture of those calls
    /// neither loads a module nor allocates. Errors where
    /// [`deferred_norm_supported`] is false.
    pub fn prepare_deferred_norm(
        &mut self,
        dev: &Arc<CudaDevice>,
        w: &Int4Weight,
        m: usize,
    ) -> Result<()> {
        for kind in [FusedKind::Nrm, FusedKind::ResNrm] {
            if let FusedResolved::Decode(fc, _) = resolve_fused(dev, m, w, kind)? {
                if fc.grid_splits > 1 {
                    self.reserve(dev, fc.partials, fc.tickets)?;
                }
                let (module, source) = fused_module();
                dev.function(module, source, fc.plan.kernel, fc.max_smem)?;
            }
        }
        Ok(())
    }

    fn mark_prepared(&mut self, act: Act, kernel: &'static str) {
        if !self.prepared.contains(&(act, kernel)) {
            self.prepared.push((act, kernel));
        }
    }

    fn check_prepared(&self, act: Act, kernel: &'static str) -> Result<()> {
        if self.prepared.contains(&(act, kernel)) {
            Ok(())
        } else {
            Err(CudaError::Unsupported(format!(
                "int4_gemm_prepared: {} kernel {kernel} was not loaded by GemmWorkspace::prepare \
                 (prepare_for for bf16, prepare_glu for int4_gemm_glu_prepared)",
                act.name()
            )))
        }
    }
}

/// Which implementation computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemmPath {
    /// The fused kernel or dequantize + cuBLAS, by [`auto_fused`].
    #[default]
    Auto,
    /// The fused dequant-GEMM kernel: `w4a16_dec_*` for M <= 16, else
    /// `w4a16_gemm_*`.
    Fused,
    /// The general fused kernel `w4a16_gemm_*` at every M (the decode
    /// kernel's predecessor, kept for comparison and as the fallback of
    /// forced split factors with long splits).
    FusedGeneral,
    /// Dequantize to an f16 scratch (N x K), then cuBLAS fp16 GEMM.
    DequantCublas,
    /// The Hopper wgmma kernel `w4a16_wgmma_*` (compute capability 9.0
    /// only, K even; see [`super::wgmma`]). `Auto` takes it from
    /// [`super::wgmma::WGMMA_MIN_M`] rows on such devices. INT4 only: the
    /// `wgemm` formats treat it as `Fused`.
    Wgmma,
    /// The Hopper bulk-copy decode kernel `w4a16_bulk_m8` (M <= 8,
    /// compute capability 9.0+, symmetric codes with groups >= 64; see
    /// [`super::bulk`]). Opt-in: measured slower than the decode kernel,
    /// `Auto` never takes it. INT4 only: the `wgemm` formats treat it as
    /// `Fused`.
    Bulk,
    /// The warp-specialised Hopper wgmma kernel `w4a16_ws_*` (compute
    /// capability 9.0 only; see [`super::wgmma_ws`]): a staging launch
    /// for the activations, then a producer warpgroup with bulk copies and
    /// two consumer warpgroups. The `wgemm` formats FP4, INT8 and FP8 with
    /// one K group of column scales have their own entries
    /// ([`crate::wgemm::wgmma_ws`]); forcing it on another `wgemm` weight
    /// is an `Unsupported` error.
    WgmmaWs,
    /// The stream-K decode kernel `w4a16_sk_*` (M <= 16, the whole A in
    /// shared memory; see [`stream_k_plan`]): a grid of the SM count, every
    /// warp streaming an equal share of the weight. `Auto` takes it at
    /// M <= 16 where it fits when [`stream_k_auto`] says so. A forced
    /// `GemmOptions::splits` is the number of warps per SM. INT4 only: the
    /// `wgemm` formats treat it as `Fused`.
    StreamK,
    /// The shared-activation kernel `w4a16_sa_*` (any M, K a multiple of 8;
    /// see [`shared_a_variant`]): 8 warps share each chunk's activation
    /// tile through a ring with one block barrier per chunk, every warp
    /// multiplying it with 1-2 n16 column blocks. Built for M = 17..64
    /// (docs/CUDA.md change 77); `Auto` takes it only with
    /// `MARLIN_INT4_SHARED_A=1`. INT4 only: the `wgemm` formats treat it as
    /// `Fused`.
    SharedA,
}

/// From this many rows on, `GemmPath::Auto` dequantizes and calls cuBLAS:
/// the fused kernel's mma.sync main loop (A re-read per warp from L1/L2) is
/// slower than that there (docs/CUDA.md has the measurements).
pub const DEQUANT_MIN_M: usize = 64;

/// Weights of at least this many elements keep the fused kernel up to
/// M = 127 under `GemmPath::Auto`.
pub const LARGE_WEIGHT_ELEMS: usize = 1 << 25;

/// `GemmPath::Auto`'s choice for INT4 and the `wgemm` formats: the fused
/// kernel below [`DEQUANT_MIN_M`] rows, and for M = 64..127 when the weight
/// has >= 2^25 elements; else dequantize + cuBLAS. Measured on an H100
/// (docs/CUDA.md, change 17): at M = 64 the fused kernels beat dequantize +
/// cuBLAS on 14336x4096, 4096x14336 and 28672x8192 (INT4 305.9 vs 424.7 us
/// at 28672x8192) but not on 4096x4096 (50.1 vs 32.9 us); at M = 128
/// dequantize + cuBLAS won on every shape and format.
pub fn auto_fused(m: usize, n: usize, k: usize) -> bool {
    m < DEQUANT_MIN_M || (m < 2 * DEQUANT_MIN_M && n.saturating_mul(k) >= LARGE_WEIGHT_ELEMS)
}

/// Per-call options.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmOptions {
    pub path: GemmPath,
    /// Split-K factor of the fused kernel; None chooses from the shape.
    pub splits: Option<usize>,
}

/// One compiled variant of the fused kernel (W4A16_ENTRY in the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVariant {
    pub name: &'static str,
    /// m16 tiles per warp.
    pub m_tiles: usize,
    /// Row halves (of 8) per m16 tile that are copied: 1 when M <= 8.
    pub row_halves: usize,
    /// cp.async ring depth.
    pub stages: usize,
    /// Resident blocks per SM (bounded by the rings' shared memory).
    pub blocks_per_sm: usize,
}

impl KernelVariant {
    /// Dynamic shared memory of one block: 4 warps x `WarpRing` (per stage
    /// and lane: 16 B codes, m_tiles*row_halves*32 B activations, 4 B scale,
    /// 4 B zero).
    pub fn smem_bytes(&self) -> u32 {
        let per_stage = 32 * (16 + 32 * self.m_tiles * self.row_halves + 4 + 4);
        (4 * self.stages * per_stage) as u32
    }
}

/// The kernel variant for M rows.
pub fn variant(m: usize) -> KernelVariant {
    let (name, m_tiles, row_halves, stages, blocks_per_sm) = match m {
        0..=8 => ("w4a16_gemm_m8", 1, 1, 6, 5),
        9..=16 => ("w4a16_gemm_mt1", 1, 2, 6, 3),
        17..=32 => ("w4a16_gemm_mt2", 2, 2, 4, 2),
        _ => ("w4a16_gemm_mt4", 4, 2, 3, 1),
    };
    KernelVariant {
        name,
        m_tiles,
        row_halves,
        stages,
        blocks_per_sm,
    }
}

/// One compiled variant of the shared-activation kernel (W4A16_SA_ENTRY in
/// the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedAVariant {
    pub name: &'static str,
    /// m16 tiles per block (rows 16 * m_tiles).
    pub m_tiles: usize,
    /// n16 column blocks per warp (8 warps per block).
    pub nb_per_warp: usize,
    /// Ring depth in chunks of 64.
    pub stages: usize,
}

/// Warps per block of the shared-activation kernel (W4_SA_WARPS).
const SA_WARPS: usize = 8;
/// Fewest chunks of 64 per split the shared-activation plan makes.
const SA_MIN_CHUNKS: usize = 4;

impl SharedAVariant {
    /// Dynamic shared memory of one block: `stages` x SaStage (activation
    /// rows of 128 B, and per warp and n16 block 32 lanes x (16 B codes,
    /// 4 B scale, 4 B zero point)).
    pub fn smem_bytes(&self) -> u32 {
        let per_stage = 16 * self.m_tiles * 128 + SA_WARPS * self.nb_per_warp * 32 * (16 + 4 + 4);
        (self.stages * per_stage) as u32
    }
}

/// n16 column blocks per warp of the shared-activation kernel:
/// `MARLIN_INT4_SA_NBW=1|2` (read once), else 1 (faster at M = 32 on five
/// of the six step shapes in session 23's call 8; 2 at M = 64 on the
/// widest weights).
fn shared_a_nb_per_warp() -> usize {
    static KNOB: knobs::Count = knobs::Count::new("MARLIN_INT4_SA_NBW", 1..=2);
    KNOB.get().unwrap_or(1)
}

/// The shared-activation kernel's variant for M rows: 32-row blocks up to
/// M = 32, else 64-row blocks; `_z` entries read zero points.
pub fn shared_a_variant(m: usize, nb_per_warp: usize, zero_points: bool) -> SharedAVariant {
    let m_tiles = if m <= 32 { 2 } else { 4 };
    let name = match (m_tiles, nb_per_warp, zero_points) {
        (2, 1, false) => "w4a16_sa_mt2_n1",
        (2, _, false) => "w4a16_sa_mt2_n2",
        (_, 1, false) => "w4a16_sa_mt4_n1",
        (_, _, false) => "w4a16_sa_mt4_n2",
        (2, 1, true) => "w4a16_sa_mt2_n1_z",
        (2, _, true) => "w4a16_sa_mt2_n2_z",
        (_, 1, true) => "w4a16_sa_mt4_n1_z",
        (_, _, true) => "w4a16_sa_mt4_n2_z",
    };
    SharedAVariant {
        name,
        m_tiles,
        nb_per_warp: nb_per_warp.clamp(1, 2),
        stages: 8,
    }
}

/// Whether `GemmPath::Auto` takes the shared-activation kernel: M = 17..64
/// with `MARLIN_INT4_SHARED_A=1` (read once; a measurement knob until the
/// kernel has been timed against the wgmma kernels there).
fn auto_shared_a(m: usize, w: &Int4Weight) -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_INT4_SHARED_A", false);
    (17..=64).contains(&m) && w.k.is_multiple_of(8) && ON.get()
}

/// The shared-activation kernel's variant and plan for `m` rows of a
/// weight with `n_pad` columns and `k_chunks` chunks of 64: a grid of (row
/// blocks, column blocks of 8 x `nb_per_warp` n16 blocks, splits) with the
/// splits that bring the grid to about one block per SM (each split at
/// least [`SA_MIN_CHUNKS`] chunks), or `forced` splits (at most one per
/// chunk).
fn shared_a_plan(
    m: usize,
    n_pad: usize,
    k_chunks: usize,
    zero_points: bool,
    nb_per_warp: usize,
    sm_count: usize,
    forced: Option<usize>,
) -> (SharedAVariant, GemmPlan) {
    let v = shared_a_variant(m, nb_per_warp, zero_points);
    let m_blocks = m.div_ceil(16 * v.m_tiles).max(1);
    let col_blocks = (n_pad / 16).div_ceil(SA_WARPS * v.nb_per_warp).max(1);
    let max_splits = (k_chunks / SA_MIN_CHUNKS).max(1);
    let splits = match forced {
        Some(s) => s.clamp(1, k_chunks.max(1)),
        None => (sm_count / (m_blocks * col_blocks)).clamp(1, max_splits),
    };
    let plan = GemmPlan {
        path: GemmPath::SharedA,
        kernel: v.name,
        m_tiles: v.m_tiles,
        m_blocks,
        n_tiles: col_blocks,
        splits,
    };
    (v, plan)
}

/// The shared-activation kernel's call for `m` rows ([`shared_a_plan`]);
/// K must be a multiple of 8 (16-byte activation copies).
fn shared_a_call(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    forced: Option<usize>,
) -> Result<FusedCall> {
    if !w.k.is_multiple_of(8) {
        return Err(CudaError::Unsupported(format!(
            "INT4 shared-activation kernel: K = {} is not a multiple of 8 (its activation rows are copied in 16-byte units)",
            w.k
        )));
    }
    let (v, plan) = shared_a_plan(
        m,
        w.n_pad,
        w.k_chunks,
        w.neg_zero_scales.is_some(),
        shared_a_nb_per_warp(),
        sm_count,
        forced,
    );
    let partials = plan
        .splits
        .checked_mul(m)
        .and_then(|x| x.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    let smem = v.smem_bytes();
    Ok(FusedCall {
        plan,
        smem,
        max_smem: smem,
        partials,
        tickets: plan.n_tiles * plan.m_blocks,
        grid_splits: plan.splits,
        block_threads: (32 * SA_WARPS) as u32,
        decode: None,
    })
}

/// Token tiles of 8 per block of the decode kernel for M rows.
fn decode_token_tiles(m: usize) -> usize {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Activation rows a decode block copies: min(M, 8 * tiles) (lanes of
/// tokens >= M read 64 zero halves after the tile).
fn decode_tile_rows(m: usize) -> usize {
    m.min(8 * decode_token_tiles(m))
}

/// Most chunks of 64 per split the decode kernel takes at M rows (the
/// activation tile budget).
fn decode_max_chunks(m: usize) -> usize {
    let rows = decode_tile_rows(m);
    let budget = if rows <= 16 {
        DEC_TILE_BUDGET_16
    } else {
        DEC_TILE_BUDGET
    };
    ((budget / (2 * rows)).saturating_sub(8) / 64).max(1)
}

/// Bytes of one warp's code ring for M rows (16 B per lane and stage).
fn decode_ring_bytes(m: usize) -> usize {
    let stages = if m <= DEC_M4_MAX_M {
        DEC_STAGES_M4
    } else {
        DEC_STAGES
    };
    stages * 32 * 16
}

/// `MARLIN_INT4_DEC_SHORT_RING=bits` (0..=7; unset: [`SHORT_RING_DEFAULT`]):
/// the plain decode calls at M <= 4 of the classes whose bit is set take
/// the 8-stage entry (`w4a16_dec_m8*`, half the shared memory of the
/// 16-stage ring) instead of `w4a16_dec_m4*`, so that the next GEMM's
/// blocks fit beside theirs in the PDL graph (a measurement knob: every
/// class made the batch-1 step slower, docs/CUDA.md change 43):
/// [`SHORT_RING_WIDE`] the whole-column plan (gate|up 28672x4096: 136 ->
/// 80 KiB, then two down blocks fit beside it instead of one),
/// [`SHORT_RING_LONG`] small-N plans whose warps stream more chunks than
/// the 16-stage ring holds (down 4096x14336: 64 -> 48 KiB, then three
/// q|k|v blocks fit beside two down blocks instead of two),
/// [`SHORT_RING_SHORT`] small-N plans whose ring holds every chunk (q|k|v,
/// o: room for the third q|k|v block beside two down blocks and for the
/// second o block beside attention, at the price of half their weights
/// streamed before the wait).
static SHORT_RING: knobs::Count = knobs::Count::new("MARLIN_INT4_DEC_SHORT_RING", 0..=7);
/// Default of [`SHORT_RING`]: no class (every M <= 4 call keeps the
/// 16-stage ring). Measured (H100, same-run interleaved A/B, docs/CUDA.md
/// change 43): batch-1 decode step 2408.5 / 2413.0 us with 0 against
/// 2701.8 / 2709.4 (1), 2658.7 / 2658.9 (2), 2855.0 / 2854.6 (3), 2577.2 /
/// 2576.8 (4); batch 8 unchanged (+11 us with 4). The default is the
/// measured 0.
const SHORT_RING_DEFAULT: usize = 0;

/// The [`SHORT_RING`] class bits in effect.
fn short_ring_bits() -> usize {
    SHORT_RING.get().unwrap_or(SHORT_RING_DEFAULT)
}

/// [`SHORT_RING`] class bit: whole-column plans (n16 >= 896).
const SHORT_RING_WIDE: usize = 1;
/// [`SHORT_RING`] class bit: narrower plans with more chunks per warp than
/// the 16-stage ring.
const SHORT_RING_LONG: usize = 2;
/// [`SHORT_RING`] class bit: narrower plans whose 16-stage ring holds all
/// of a warp's chunks.
const SHORT_RING_SHORT: usize = 4;

/// Whether a plain decode call of `m` rows (n16 column blocks, kc chunks,
/// block shape) takes the 8-stage entry under [`SHORT_RING`] bits `bits`.
fn short_ring_for(bits: usize, m: usize, n16: usize, kc: usize, shape: DecodeShape) -> bool {
    if m > DEC_M4_MAX_M || bits == 0 {
        return false;
    }
    let class = if n16 >= DEC_WHOLE_COLUMN_MIN_N16 {
        SHORT_RING_WIDE
    } else if kc.div_ceil((shape.splits * shape.k_slices).max(1)) > DEC_STAGES_M4 {
        SHORT_RING_LONG
    } else {
        SHORT_RING_SHORT
    };
    bits & class != 0
}

/// Ring bytes per warp of a plain (non-fused) decode call: the 8-stage ring
/// where [`short_ring_for`] takes the 8-stage entry, else
/// [`decode_ring_bytes`].
fn plain_decode_ring_bytes(m: usize, n16: usize, kc: usize, shape: DecodeShape) -> usize {
    if short_ring_for(short_ring_bits(), m, n16, kc, shape) {
        DEC_STAGES * 32 * 16
    } else {
        decode_ring_bytes(m)
    }
}

/// Launch shape of the decode kernel: `nbpb` n16 column blocks x `k_slices`
/// K slices per block (one warp each), `splits` blocks along K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DecodeShape {
    nbpb: usize,
    k_slices: usize,
    splits: usize,
}

/// Scale rows (groups) a decode split of `cps` chunks can touch, for groups
/// of 32 * group_k32 (`dec_scale_rows` in the source).
fn decode_scale_rows(cps: usize, group_k32: usize) -> usize {
    (2 * cps.max(1) - 1) / group_k32.max(1) + 2
}

/// Dynamic shared memory attribute of the fused and GLU-epilogue decode
/// kernels (each launch's `decode_smem_bytes` is kept below it by
/// `decode_launch` with [`DEC_SMEM_LIMIT`]).
fn decode_smem_attr() -> usize {
    DEC_SMEM_LIMIT
}

/// `MARLIN_INT4_DEC_WIDE_SMEM=0` keeps the plain decode calls on sm_90 at
/// [`DEC_SMEM_LIMIT`] (session 7's plans: the whole-column plan at M <= 8
/// and K <= 4096 only, no 2 x 4 plan at M <= 4), for same-run comparisons
/// of change 48.
static DEC_WIDE_SMEM: knobs::Switch = knobs::Switch::new("MARLIN_INT4_DEC_WIDE_SMEM", true);

/// Shared memory limit (and function attribute) of the plain decode calls
/// on a device of compute capability `cc`: [`DEC_SMEM_LIMIT_WIDE`] on sm_90
/// (227 KiB per block), else [`DEC_SMEM_LIMIT`] (sm_80's 163 KiB and the
/// 99 KiB parts keep the portable limit; `decode_launch` refuses larger
/// shapes there).
fn decode_smem_limit_for(cc: (i32, i32), wide_knob: bool) -> usize {
    if wide_knob && cc == (9, 0) {
        DEC_SMEM_LIMIT_WIDE
    } else {
        DEC_SMEM_LIMIT
    }
}

/// [`decode_smem_limit_for`] of `dev` with the `MARLIN_INT4_DEC_WIDE_SMEM`
/// knob.
fn decode_smem_limit(dev: &CudaDevice) -> usize {
    decode_smem_limit_for(dev.compute_capability(), DEC_WIDE_SMEM.get())
}

/// Dynamic shared memory of a decode block for M rows: one code ring per
/// warp, the split's scale rows (and zero-point rows) of nbpb x 8 column
/// pairs x 4 B, the activation tile (min(M, 8 * tiles) rows of
/// ceil(k_chunks/splits)*64 + 8 halves) and 64 zero halves.
fn decode_smem_bytes(
    m: usize,
    k_chunks: usize,
    shape: DecodeShape,
    group_k32: usize,
    has_zeros: bool,
) -> usize {
    decode_smem_bytes_ring(
        m,
        k_chunks,
        shape,
        group_k32,
        has_zeros,
        decode_ring_bytes(m),
    )
}

/// [`decode_smem_bytes`] with `ring_bytes` per warp (the GLU-epilogue
/// kernels pick their ring depth themselves: [`glu_call`]).
fn decode_smem_bytes_ring(
    m: usize,
    k_chunks: usize,
    shape: DecodeShape,
    group_k32: usize,
    has_zeros: bool,
    ring_bytes: usize,
) -> usize {
    let cps = k_chunks.div_ceil(shape.splits.max(1));
    let a_stride = cps * 64 + 8;
    let scale_tiles = 1 + usize::from(has_zeros);
    shape.nbpb * shape.k_slices * ring_bytes
        + scale_tiles * shape.nbpb * 32 * decode_scale_rows(cps, group_k32)
        + decode_tile_rows(m) * a_stride * 2
        + 128
}

/// Launch shape chosen for one call (exposed for benchmarks and notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub path: GemmPath,
    /// Kernel launched (`w4a16_dec_*`, `w4a16_gemm_*`, or "dequant+cublas").
    pub kernel: &'static str,
    /// m16 tiles per warp: 1, 2 or 4.
    pub m_tiles: usize,
    pub m_blocks: usize,
    /// Column tiles of the grid (stream-K: the number of blocks).
    pub n_tiles: usize,
    /// K partitions per output column (stream-K: warps per SM).
    pub splits: usize,
}

/// A launch grid of `(x, y, z)` blocks, checked against CUDA's limits
/// (x < 2^31, y and z <= 65535).
pub(crate) fn launch_grid(x: usize, y: usize, z: usize) -> Result<(u32, u32, u32)> {
    let dim = |v: usize, max: u32| u32::try_from(v).ok().filter(|&v| v <= max);
    match (dim(x, i32::MAX as u32), dim(y, 65_535), dim(z, 65_535)) {
        (Some(x), Some(y), Some(z)) => Ok((x, y, z)),
        _ => Err(CudaError::Shape(format!(
            "grid ({x}, {y}, {z}) exceeds CUDA limits"
        ))),
    }
}

/// Choose the kernel variant and split-K factor (each split with at least
/// `MIN_CHUNKS_PER_SPLIT` chunks of K) of the fused path on `dev`.
pub fn plan(m: usize, w: &Int4Weight, dev: &CudaDevice, splits: Option<usize>) -> GemmPlan {
    plan_for(m, w, dev.sm_count(), splits, Some(decode_smem_limit(dev)))
}

fn plan_for(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    splits: Option<usize>,
    decode_smem: Option<usize>,
) -> GemmPlan {
    // decode_smem: the decode kernel's shared memory limit, None: not the
    // decode kernel.
    if let (Some(limit), true) = (decode_smem, m <= DEC_MAX_M) {
        if let Some((p, _)) = decode_launch(m, w, sm_count, splits, limit) {
            return p;
        }
    }
    let v = variant(m);
    let m_tiles = v.m_tiles;
    let m_blocks = m.div_ceil(16 * m_tiles).max(1);
    let n_tiles = w.n_pad / N_TILE;
    let max_splits = (w.k_chunks / MIN_CHUNKS_PER_SPLIT).max(1);
    let blocks_per_sm = v.blocks_per_sm;
    // Measured on an H100 (docs/CUDA.md): about 16 chunks (1024 of K) per
    // split is best; beyond ~4 waves of blocks the partial sums cost more
    // than the shorter streams gain; below half a wave SMs idle.
    let slots = sm_count * blocks_per_sm;
    let base = n_tiles * m_blocks;
    let mut want = w.k_chunks.div_ceil(TARGET_CHUNKS_PER_SPLIT);
    if base * want > 4 * slots {
        want = (4 * slots / base).max(1);
    }
    if base * want < slots / 2 {
        want = (slots / 2).div_ceil(base);
    }
    let splits = splits.unwrap_or(want).clamp(1, max_splits);
    GemmPlan {
        path: GemmPath::Fused,
        kernel: v.name,
        m_tiles,
        m_blocks,
        n_tiles,
        splits,
    }
}

/// The decode kernel's plan and launch shape, or None when a forced split
/// factor cannot be run by it (splits longer than the activation tile
/// allows, or shared memory beyond [`DEC_SMEM_LIMIT`]).
///
/// `GemmPlan::splits` is the number of K partitions per output column
/// (K slices per block x blocks along K); a forced factor is taken as that.
/// N >= 16384 or M > 4 keeps 4 column blocks per block, one K slice and
/// global splits (sweeps of changes 10-12, 19); smaller N at M <= 4 takes
/// one column block per block and enough K slices for about
/// [`DEC_WARPS_PER_SM`] warps per SM, so that the K partitions are reduced
/// in shared memory instead of through fp32 partials and a ticket.
fn decode_launch(
    m: usize,
    w: &Int4Weight,
    sm_count: usize,
    forced: Option<usize>,
    smem_limit: usize,
) -> Option<(GemmPlan, DecodeShape)> {
    decode_launch_for(
        m,
        (w.n_pad, w.k_chunks, w.group_k32),
        w.neg_zero_scales.is_some(),
        sm_count,
        forced,
        smem_limit,
    )
}

/// (K slices, splits) of the small-N decode plan (one column block per
/// block): about [`DEC_WARPS_PER_SM`] warps per SM, a power of two of K
/// partitions, at least 8 chunks per warp, splits only as the activation
/// tile requires.
fn small_slices(
    n16: usize,
    kc: usize,
    m_blocks: usize,
    splits_min: usize,
    sm_count: usize,
) -> (usize, usize) {
    let want = (DEC_WARPS_PER_SM * sm_count)
        .div_ceil(n16 * m_blocks)
        .next_power_of_two()
        .clamp(1, (kc / 8).max(1));
    let k_slices = want.div_ceil(splits_min).clamp(1, DEC_MAX_WARPS);
    (k_slices, splits_min.max(want.div_ceil(k_slices)))
}

/// `MARLIN_INT4_DEC_DEEP_SLICES=0` (read once): the small-N M <= 4 decode
/// plan keeps session 4's warps-per-SM rule ([`small_slices`]) instead of
/// trying more K slices first ([`small_candidates`]).
static DEEP_SLICES: knobs::Switch = knobs::Switch::new("MARLIN_INT4_DEC_DEEP_SLICES", true);

/// (K slices, splits) candidates of the small-N decode plan at M <= 4, in
/// order of preference; the caller takes the first whose blocks fit one
/// wave. First, where the activation tile needs no split: as many K slices
/// (a power of two, at most [`DEC_DEEP_MAX_SLICES`]) as keep
/// [`DEC_DEEP_MIN_CHUNKS`] chunks per warp, when that is more than the
/// warps-per-SM rule gives; then the rule. Why (change 50 (e), H100,
/// per-block timestamps in a decode-like PDL chain: GEMM, a one-block
/// kernel, the GEMM): what a small-N M = 1 call adds after its predecessor
/// is mostly its main loop, so more warps with fewer chunks each shorten
/// it where the grid still fits one wave: 4096x14336 M = 1 with 8 K slices
/// 10.24 us against 14.59 with the rule's 4 there, 14.8-15.0 against
/// 15.9 back to back, and the Llama-3.1-8B decode step at batch 1
/// 2355.8 / 2359.9 against 2375.3 / 2375.7 us (down projection). K <= 8192
/// keeps the rule (8 slices of 4096x8192 M = 1: 0.5 us slower back to back;
/// of 4096x4096: 0.3-0.5 us slower in the timestamp chain).
fn small_candidates(
    n16: usize,
    kc: usize,
    m_blocks: usize,
    splits_min: usize,
    sm_count: usize,
) -> Vec<(usize, usize)> {
    let rule = small_slices(n16, kc, m_blocks, splits_min, sm_count);
    let mut out = Vec::with_capacity(2);
    if DEEP_SLICES.get() && splits_min <= 1 {
        let by_chunks = (kc / DEC_DEEP_MIN_CHUNKS).clamp(1, DEC_DEEP_MAX_SLICES);
        let deep = 1 << by_chunks.ilog2();
        if deep > rule.0 && rule.1 == 1 {
            out.push((deep, 1));
        }
    }
    out.push(rule);
    out
}

/// Resident decode blocks per SM (sm_90: 228 KiB of shared memory with
/// 1 KiB per block reserved, 64 warps, 64 K registers at <= 64 per thread).
fn decode_blocks_per_sm(smem: usize, warps: usize) -> usize {
    let by_smem = 228 * 1024 / (smem + 1024);
    let by_warps = 64 / warps.max(1);
    let by_regs = 65_536 / (64 * 32 * warps.max(1));
    by_smem.min(by_warps).min(by_regs)
}

thread_local! {
    /// Decode block shape forced by [`set_decode_shape_override`] on this
    /// thread.
    static DECODE_SHAPE_OVERRIDE: Cell<Option<DecodeShape>> = const { Cell::new(None) };
}

/// Tuning hook of the GEMM benchmark (`marlin-cuda-bench --dec-shapes`) and
/// its GPU test: while set, every decode-kernel call made by this thread
/// without a forced split factor takes the block shape `(nbpb column
/// blocks, k_slices K slices, splits)` where the kernel can run it (nbpb
/// divides the weight's n16 column blocks, at most 16 warps, each K
/// partition at least 4 chunks, shared memory within the limit); shapes it
/// cannot run keep the rule. `None` restores the rule. Thread-local, so
/// that it never changes another thread's calls.
pub fn set_decode_shape_override(shape: Option<(usize, usize, usize)>) {
    let shape = shape.map(|(nbpb, k_slices, splits)| DecodeShape {
        nbpb,
        k_slices,
        splits,
    });
    DECODE_SHAPE_OVERRIDE.with(|o| o.set(shape));
}

fn decode_shape_override() -> Option<DecodeShape> {
    DECODE_SHAPE_OVERRIDE.with(Cell::get)
}

/// The decode kernel's block shape (column blocks, K slices, splits) for a
/// `GemmPath::Fused` call of `m` rows of `w` without a forced split factor
/// (the rule, or this thread's [`set_decode_shape_override`] where the
/// kernel can run it) on `dev`; None where the decode kernel does not take
/// the call.
pub fn decode_shape(m: usize, w: &Int4Weight, dev: &CudaDevice) -> Option<(usize, usize, usize)> {
    if m > DEC_MAX_M {
        return None;
    }
    decode_launch(m, w, dev.sm_count(), None, decode_smem_limit(dev))
        .map(|(_, s)| (s.nbpb, s.k_slices, s.splits))
}

/// The decode kernel entry for M rows in token tiles of 8, zero points,
/// groups of 32.
fn decode_kernel_name(m: usize, tiles: usize, has_zeros: bool, group32: bool) -> &'static str {
    // Symmetric weights with groups >= 64 apply the scales to the fp32
    // group sums; zero points or groups of 32 dequantize with the scale.
    // M <= 4: the 16-stage variants.
    if m <= DEC_M4_MAX_M {
        return match (has_zeros, group32) {
            (true, _) => "w4a16_dec_m4z",
            (false, true) => "w4a16_dec_m4s",
            (false, false) => "w4a16_dec_m4",
        };
    }
    match (tiles, has_zeros, group32) {
        (1, true, _) => "w4a16_dec_m8z",
        (2, true, _) => "w4a16_dec_m16z",
        (_, true, _) => "w4a16_dec_m32z",
        (1, false, true) => "w4a16_dec_m8s",
        (2, false, true) => "w4a16_dec_m16s",
        (_, false, true) => "w4a16_dec_m32s",
        (1, false, false) => "w4a16_dec_m8",
        (2, false, false) => "w4a16_dec_m16",
        (_, false, false) => "w4a16_dec_m32",
    }
}

/// Whole-column plan of the decode kernel (docs/CUDA.md, change 36): for
/// wide weights at K <= 4096 and M <= 8 (gate|up, 14336x4096), one block
/// per SM, each warp streaming whole column blocks (or one of 2-4 K slices
/// of one, added in shared memory): no split-K partials, no tickets, no
/// column blocks shared between warps. `nbpb` is the smallest divisor of
/// the column blocks (at most 16) whose grid fits one block per SM, and
/// that grid must keep 90% of the SMs busy; then the most K slices (a
/// power of two, at most 16 warps, at least 16 chunks each) whose shared
/// memory fits. H100 sweep (change 36, run 1), back to back / after a
/// PDL predecessor: 28672x4096 M = 1 14x1x1 24.7 / 24.4 us against 28.3 /
/// 26.5 for stream-K, M = 8 26.7 / 25.3 against 28.8 / 27.5; 14336x4096
/// M = 8 7x2x1 15.5 / 13.8 against 18.7 / 16.5.
///
/// With `smem_limit` above [`DEC_SMEM_LIMIT`] (plain calls on sm_90,
/// change 48), where session 6's plan has no shape, the plan also takes
/// M = 9..16 (two token tiles), M = 3..4 at N = 28672 (K = 4096), and
/// M = 5..16 at K up to [`DEC_WIDE_MAX_KC`] chunks, with two K splits
/// where one pass's activation tile does not fit (M = 9..16 at K = 8192:
/// two rounds of the same blocks, the fp32 partials + ticket), three where
/// two do not either (the scale rows of groups of 32 or of groups of 64
/// with zero points at 28672x8192 M = 16; docs/CUDA.md change 61: groups
/// of 32 74 us against 97 for the 16 column blocks x 8 splits those cases
/// took before). H100, same
/// run against session 6's plans (change 48, back to back / after a PDL
/// predecessor): 28672x8192 M = 8 48.0-48.3 / 46.8-47.1 us against
/// stream-K 50.7-50.8 / 49.5, M = 16 67.2-67.6 against 73.1-74.1 for 16
/// column blocks x 4 splits; 14336x4096 M = 16 17.6 / 15.4-15.5 against
/// stream-K 21.8 / 19.9; 28672x4096 M = 4 26.2 / 26.4 against stream-K
/// 28.2 / 26.9. Not taken (measured slower after a PDL predecessor):
/// M <= 4 at K > 4096 (28672x8192 M = 1: 48.0-49.4 / 50.5-52.1 against
/// stream-K 48.9-49.0 / 47.8) and more K slices where session 6's plan
/// fits (14336x4096 M = 4 7x2x1: 15.6 / 13.8 against 7x1x1's 16.7-16.9 /
/// 12.5-12.7).
fn whole_column_shape(
    m: usize,
    (n16, kc, group_k32): (usize, usize, usize),
    has_zeros: bool,
    sm_count: usize,
    smem_limit: usize,
) -> Option<DecodeShape> {
    let dims = (n16, kc, group_k32);
    if m <= 8 && kc <= 64 {
        let shape = whole_column_within(m, dims, has_zeros, sm_count, DEC_SMEM_LIMIT, 1);
        if shape.is_some() || smem_limit <= DEC_SMEM_LIMIT {
            return shape;
        }
    }
    if smem_limit <= DEC_SMEM_LIMIT
        || m > 16
        || kc > DEC_WIDE_MAX_KC
        || (kc > 64 && m <= DEC_M4_MAX_M)
    {
        return None;
    }
    whole_column_within(m, dims, has_zeros, sm_count, smem_limit, 3)
}

/// The whole-column shape of [`whole_column_shape`] within `smem_limit`
/// and at most `max_splits` K splits (the fewest that fit), or None.
fn whole_column_within(
    m: usize,
    (n16, kc, group_k32): (usize, usize, usize),
    has_zeros: bool,
    sm_count: usize,
    smem_limit: usize,
    max_splits: usize,
) -> Option<DecodeShape> {
    if n16 < DEC_WHOLE_COLUMN_MIN_N16 || sm_count == 0 {
        return None;
    }
    let nbpb = (1..=DEC_MAX_WARPS).find(|&d| n16 % d == 0 && n16 / d <= sm_count)?;
    if (n16 / nbpb) * 1000 < sm_count * DEC_WHOLE_COLUMN_MIN_FILL {
        return None;
    }
    for splits in 1..=max_splits {
        let chunks = kc.div_ceil(splits);
        let mut k_slices = (DEC_MAX_WARPS / nbpb).min(chunks / 16).max(1);
        k_slices = 1 << k_slices.ilog2();
        loop {
            let shape = DecodeShape {
                nbpb,
                k_slices,
                splits,
            };
            if decode_smem_bytes(m, kc, shape, group_k32, has_zeros) <= smem_limit {
                return Some(shape);
            }
            if k_slices == 1 {
                break;
            }
            k_slices /= 2;
        }
    }
    None
}

/// Whether the decode kernel's whole-column plan ([`whole_column_shape`])
/// takes `m` rows of `w` in a plain call on `dev` (`GemmPath::Auto` then
/// skips stream-K).
pub fn whole_column_plan(m: usize, w: &Int4Weight, dev: &CudaDevice) -> bool {
    whole_column_plan_within(m, w, dev.sm_count(), decode_smem_limit(dev))
}

/// [`whole_column_plan`] under a given shared memory limit.
fn whole_column_plan_within(m: usize, w: &Int4Weight, sm_count: usize, smem_limit: usize) -> bool {
    whole_column_shape(
        m,
        (w.n_pad / 16, w.k_chunks, w.group_k32),
        w.neg_zero_scales.is_some(),
        sm_count,
        smem_limit,
    )
    .is_some()
}

/// [`decode_launch`] of a weight given by (n_pad, k_chunks, group_k32).
fn decode_launch_for(
    m: usize,
    (n_pad, kc, group_k32): (usize, usize, usize),
    has_zeros: bool,
    sm_count: usize,
    forced: Option<usize>,
    smem_limit: usize,
) -> Option<(GemmPlan, DecodeShape)> {
    let tiles = decode_token_tiles(m);
    let n16 = n_pad / 16;
    let m_blocks = m.div_ceil(8 * tiles);
    let max_chunks = decode_max_chunks(m);
    let max_parts = (kc / MIN_CHUNKS_PER_SPLIT).max(1);
    let splits_min = kc.div_ceil(max_chunks);
    let plan_of = |shape: DecodeShape| GemmPlan {
        path: GemmPath::Fused,
        kernel: if short_ring_for(short_ring_bits(), m, n16, kc, shape) {
            // The 8-stage entry of the same body (RH = 1 serves 1..8 rows).
            decode_kernel_name(DEC_M4_MAX_M + 1, 1, has_zeros, group_k32 == 1)
        } else {
            decode_kernel_name(m, tiles, has_zeros, group_k32 == 1)
        },
        m_tiles: 1,
        m_blocks,
        n_tiles: n16 / shape.nbpb,
        splits: shape.splits * shape.k_slices,
    };
    if let (None, Some(shape)) = (forced, decode_shape_override()) {
        let runnable = shape.nbpb >= 1
            && shape.k_slices >= 1
            && shape.splits >= 1
            && n16 % shape.nbpb == 0
            && shape.nbpb * shape.k_slices <= DEC_MAX_WARPS
            && shape.splits * shape.k_slices <= max_parts
            && decode_smem_bytes(m, kc, shape, group_k32, has_zeros) <= smem_limit;
        if runnable {
            return Some((plan_of(shape), shape));
        }
    }
    if forced.is_none() && WHOLE_COLUMN.get() {
        if let Some(shape) =
            whole_column_shape(m, (n16, kc, group_k32), has_zeros, sm_count, smem_limit)
        {
            return Some((plan_of(shape), shape));
        }
    }
    // M > 4 keeps 4 column blocks per block (the activation tile shared by
    // 4 warps): 1-2 column blocks with K slices measured 10-25% slower at
    // M = 8 and 16 (change 19).
    // The K-slice plan must fit one wave of blocks (it has no split-K to
    // spread a second wave over): 4096x14336 at M = 4 took 31.9 us with two
    // waves against 19.7 us for the split-K plan (change 19).
    let small_choice = if n16 < DEC_LARGE_N16 && m <= 4 {
        small_candidates(n16, kc, m_blocks, splits_min, sm_count)
            .into_iter()
            .find(|&(ks, sp)| {
                let shape = DecodeShape {
                    nbpb: 1,
                    k_slices: ks,
                    splits: sp,
                };
                let smem = decode_smem_bytes(m, kc, shape, group_k32, has_zeros);
                n16 * m_blocks * sp <= sm_count * decode_blocks_per_sm(smem, ks)
            })
    } else {
        None
    };
    let small = small_choice.is_some();
    // M = 5..8 at small N: 2 column blocks x 4 K slices per block and no
    // split-K where that is one wave and fits (docs/CUDA.md, change 30:
    // 4096x4096 M = 8 7.83 against 10.05 us for the split-K plan, 6144x4096
    // 9.12 against 11.81). At M <= 4 the same where the one-column-block
    // plan above needs two waves and the call's limit (sm_90's wider one,
    // change 48) holds the block: 4096x14336 M = 4 15.4 us back to back /
    // 13.6 after a PDL predecessor against 18.2 / 16.2 for 4 column blocks
    // x 8 splits.
    // (Under the portable limit M <= 4 keeps session 7's plans.)
    let pair_limit = if m <= 4 { smem_limit } else { DEC_SMEM_LIMIT };
    let pair_m = m > 4 || smem_limit > DEC_SMEM_LIMIT;
    if forced.is_none() && !small && n16 < DEC_LARGE_N16 && pair_m && m <= 8 && n16 % 2 == 0 {
        let shape = DecodeShape {
            nbpb: 2,
            k_slices: 4,
            splits: 1,
        };
        let smem = decode_smem_bytes(m, kc, shape, group_k32, has_zeros);
        if smem <= pair_limit
            && max_parts >= 4
            && (n16 / 2) * m_blocks <= sm_count * decode_blocks_per_sm(smem, 8)
        {
            return Some((plan_of(shape), shape));
        }
    }
    // M = 9..16 at K <= 4096 below the whole-column plan's N, on sm_90's
    // wider shared memory: 4 K slices per block, no split-K, the fewest
    // column blocks (2, 4 or 8) whose grid fits one block per SM. Session 13
    // (docs/CUDA.md change 64), H100, same call, forced shapes against the
    // rule's 4 column blocks x 4 splits (back to back / after a PDL
    // predecessor): 4096x4096 M = 16 2x4x1 8.57 / 7.24 us against 12.53 /
    // 11.12, M = 12 8.11 / 6.72 against 12.23 / 10.68; 6144x4096 M = 16
    // 4x4x1 10.89 / 8.73 against 14.13 / 12.24, M = 12 10.13 / 8.37
    // against 14.64 / 11.97 (2x4x1 there needs two waves: 14.74-15.34).
    if forced.is_none()
        && tiles == 2
        && kc <= 64
        && n16 < DEC_LARGE_N16
        && smem_limit > DEC_SMEM_LIMIT
        && max_parts >= 4
    {
        for nbpb in [2, 4, 8] {
            if n16 % nbpb != 0 {
                continue;
            }
            let shape = DecodeShape {
                nbpb,
                k_slices: 4,
                splits: 1,
            };
            // One block per SM, as measured (a 2-per-SM grid at M = 9..10
            // is not).
            let smem = decode_smem_bytes(m, kc, shape, group_k32, has_zeros);
            if smem <= smem_limit && (n16 / nbpb) * m_blocks <= sm_count {
                return Some((plan_of(shape), shape));
            }
        }
    }
    let large = !small;
    // M = 9..16 with K >= 8192: 16 column blocks share each block's
    // activation tile (4x fewer activation bytes from L2 than 4; change 30:
    // 4096x14336 M = 16 21.3 against 32.1 us, 28672x8192 74.0 against 87.8
    // with 4 splits); K <= 4096 measured no better.
    let wide = large && forced.is_none() && tiles == 2 && kc >= 128 && n16 % 16 == 0;
    let nbpb = match (large, wide) {
        (true, true) => 16,
        (true, false) => 4,
        _ => 1,
    };
    // 16 column blocks per block: 4 splits where that fits the shared
    // memory limit (its tile may exceed the 64 KiB budget of `splits_min`;
    // 28672x8192 M = 16: 74.0 us against 81.9 at 8 splits), else 8
    // (4096x14336 M = 16: 21.3 us).
    let wide_four = wide && {
        let four = DecodeShape {
            nbpb,
            k_slices: 1,
            splits: DEC_SPLITS / 2,
        };
        DEC_SPLITS / 2 <= max_parts
            && decode_smem_bytes(m, kc, four, group_k32, has_zeros) <= DEC_SMEM_LIMIT
    };
    let max_slices = (DEC_MAX_WARPS / nbpb).max(1);
    let (k_slices, splits) = match forced {
        Some(p) => {
            let p = p.clamp(1, max_parts);
            let k_slices = if large { 1 } else { p.min(max_slices) };
            (k_slices, p.div_ceil(k_slices))
        }
        None if large => {
            // Split sweeps on an H100 (docs/CUDA.md, changes 10-12, 19): 8
            // splits was best or within 3% of best at M = 1, 8 and 16; the
            // fp32 partials grow with M x splits against weights that grow
            // with K, so K <= 4096 takes 4 (28672x4096 M = 1: 32.0 us at 4,
            // 33.5 at 8). Above 16 rows the partials cost as much as the
            // weights: as few splits as the tile allows, at least one wave.
            let base = if kc <= 64 { DEC_SPLITS / 2 } else { DEC_SPLITS };
            let want = if wide_four {
                DEC_SPLITS / 2
            } else if m <= 16 {
                base.max(splits_min)
            } else {
                splits_min.max(sm_count.div_ceil((n16 / 4) * m_blocks))
            };
            (1, want.clamp(1, max_parts))
        }
        None => {
            small_choice.unwrap_or_else(|| small_slices(n16, kc, m_blocks, splits_min, sm_count))
        }
    };
    let mut shape = DecodeShape {
        nbpb,
        k_slices,
        splits,
    };
    // Long splits of groups of 32 with zero points can outgrow the shared
    // memory limit through their scale rows: split further.
    while decode_smem_bytes(m, kc, shape, group_k32, has_zeros) > DEC_SMEM_LIMIT
        && forced.is_none()
        && shape.splits * shape.k_slices < max_parts
    {
        shape.splits += 1;
    }
    if (shape.splits < splits_min && !wide_four)
        || shape.splits * shape.k_slices > max_parts
        || decode_smem_bytes(m, kc, shape, group_k32, has_zeros) > DEC_SMEM_LIMIT
    {
        return None;
    }
    Some((plan_of(shape), shape))
}

/// A fused-kernel call, resolved: plan, shared memory and scratch sizes.
struct FusedCall {
    plan: GemmPlan,
    smem: u32,
    /// Dynamic shared memory attribute set once per function.
    max_smem: u32,
    /// fp32 elements of split-K partials and tickets the launch needs.
    partials: usize,
    tickets: usize,
    /// Blocks along K (grid z) and threads per block.
    grid_splits: usize,
    block_threads: u32,
    /// The decode kernel's block shape (its two extra arguments).
    decode: Option<DecodeShape>,
}

enum Call {
    Dequant,
    Fused(FusedCall),
    Wgmma(wgmma::WgmmaCall),
    WgmmaWs(wgmma_ws::WsCall),
    Bulk(bulk::BulkCall),
    StreamK(StreamKCall),
}

/// Path, kernel and launch shape of one call (no device work).
///
/// bf16 activations (`act`): every kernel has a bf16 build (module of its
/// own, same rules) except the opt-in bulk-copy decode kernel
/// (`GemmPath::Bulk`: an error for bf16; `Auto` never takes it) and the
/// diagnostic wgmma entries that knobs select (an error from their
/// `resolve`).
fn resolve_call(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    opts: GemmOptions,
    act: Act,
) -> Result<Call> {
    if m == 0 {
        return Err(CudaError::Shape("GEMM with M = 0 rows".into()));
    }
    if act == Act::Bf16 && opts.path == GemmPath::Bulk {
        return Err(CudaError::Unsupported(
            "INT4 GEMM path Bulk has f16 activations only".into(),
        ));
    }
    if opts.path == GemmPath::SharedA || (opts.path == GemmPath::Auto && auto_shared_a(m, w)) {
        return Ok(Call::Fused(shared_a_call(
            m,
            w,
            dev.sm_count(),
            opts.splits,
        )?));
    }
    // M = 17..128 (int4-midM, docs/CUDA.md change 40): the wgmma kernel
    // first on narrow long-K weights, the warp-specialised one at M = 65..128
    // elsewhere, then ws_auto / wgmma_auto.
    let wgmma_ok = wgmma::wgmma_supported(dev) && wgmma::wgmma_shape_ok(w);
    let auto_wgmma_first =
        opts.path == GemmPath::Auto && wgmma_ok && wgmma::wgmma_over_ws(m, w.n, w.k);
    // bf16 takes the same rules: the warp-specialised kernel's bf16 build
    // passed its forced-path test on the H100 (tests/gpu_int4_bf16.rs,
    // int4_bf16_hopper_paths_match_reference; session 8's final run) and
    // times within 1% of f16 (docs/CUDA.md, change 45).
    let auto_ws = opts.path == GemmPath::Auto
        && !auto_wgmma_first
        && wgmma_ws::ws_supported(dev)
        && (wgmma_ws::ws_auto(m, w, dev.sm_count()) || wgmma::mid_m_takes_ws(m, w.n, w.k));
    if opts.path == GemmPath::WgmmaWs || auto_ws {
        return Ok(Call::WgmmaWs(wgmma_ws::resolve(
            dev,
            m,
            w,
            opts.splits,
            act,
        )?));
    }
    let auto_wgmma = opts.path == GemmPath::Auto
        && (auto_wgmma_first || (wgmma::wgmma_auto(m, w.n, w.k) && wgmma_ok));
    if opts.path == GemmPath::Wgmma || auto_wgmma {
        return Ok(Call::Wgmma(wgmma::resolve(dev, m, w, opts.splits, act)?));
    }
    if opts.path == GemmPath::Bulk {
        return Ok(Call::Bulk(bulk::resolve(dev, m, w, opts.splits)?));
    }
    // Auto with a forced split factor keeps the split-K decode kernel.
    // The decode kernel's whole-column plan beats stream-K where it applies
    // (change 36), unless MARLIN_INT4_STREAMK forces a choice or
    // MARLIN_INT4_WHOLE_COLUMN=0 turns the plan off for Auto.
    let auto_stream_k = opts.path == GemmPath::Auto
        && opts.splits.is_none()
        && m <= SK_MAX_M
        && auto_takes_stream_k(m, w, dev.sm_count(), decode_smem_limit(dev));
    if opts.path == GemmPath::StreamK || auto_stream_k {
        let forced = if opts.path == GemmPath::StreamK {
            opts.splits
        } else {
            None
        };
        match stream_k_call(dev, m, w, forced)? {
            Some(sc) => return Ok(Call::StreamK(sc)),
            None if opts.path == GemmPath::StreamK => {
                return Err(CudaError::Unsupported(format!(
                    "stream-K INT4 kernel: M = {m} (at most {SK_MAX_M}) with the whole A ({m} x {} halves) \
                     and the warps' rings in one block's shared memory",
                    w.k_chunks * 64
                )))
            }
            None => {}
        }
    }
    let use_dequant = match opts.path {
        GemmPath::Auto => !auto_fused(m, w.n, w.k),
        GemmPath::Fused
        | GemmPath::FusedGeneral
        | GemmPath::Wgmma
        | GemmPath::WgmmaWs
        | GemmPath::StreamK
        | GemmPath::SharedA
        | GemmPath::Bulk => false,
        GemmPath::DequantCublas => true,
    };
    if use_dequant {
        return Ok(Call::Dequant);
    }
    let decode = if opts.path != GemmPath::FusedGeneral && m <= DEC_MAX_M {
        decode_launch(m, w, dev.sm_count(), opts.splits, decode_smem_limit(dev))
    } else {
        None
    };
    let (p, smem, max_smem, grid_splits, block_threads) = match decode {
        Some((p, shape)) => (
            p,
            decode_smem_bytes_ring(
                m,
                w.k_chunks,
                shape,
                w.group_k32,
                w.neg_zero_scales.is_some(),
                plain_decode_ring_bytes(m, w.n_pad / 16, w.k_chunks, shape),
            ),
            // The attribute is set once per function: the limit every
            // plain decode launch on this device stays below.
            decode_smem_limit(dev),
            shape.splits,
            (32 * shape.nbpb * shape.k_slices) as u32,
        ),
        None => {
            let p = plan_for(m, w, dev.sm_count(), opts.splits, None);
            let s = variant(m).smem_bytes() as usize;
            (p, s, s, p.splits, THREADS)
        }
    };
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| CudaError::Shape("shared memory size".into()));
    let partials = grid_splits
        .checked_mul(m)
        .and_then(|v| v.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    Ok(Call::Fused(FusedCall {
        plan: p,
        smem: to_u32(smem)?,
        max_smem: to_u32(max_smem)?,
        partials,
        tickets: p.n_tiles * p.m_blocks,
        grid_splits,
        block_threads,
        decode: decode.map(|(_, shape)| shape),
    }))
}

/// Whether the stream-K decode kernel is a candidate at M <= 16 for a
/// weight of `n` columns: `MARLIN_INT4_STREAMK=1` / `0` forces it on / off
/// for every shape (same-run comparisons of the decode step with and
/// without it), else `n >= SK_AUTO_MIN_N`. Whether `GemmPath::Auto` (and
/// the fused RMSNorm path) then takes it is [`auto_takes_stream_k`].
pub fn stream_k_auto(n: usize) -> bool {
    STREAM_K_FORCED.get().unwrap_or(n >= SK_AUTO_MIN_N)
}

/// Whether the automatic choice (`GemmPath::Auto`, the fused RMSNorm
/// entry) takes the stream-K decode kernel for this call: a candidate
/// ([`stream_k_auto`]) that the decode kernel's whole-column plan does not
/// beat (change 36: 28672x4096 M = 1 24.95 against 26.41 us in the PDL
/// context), unless `MARLIN_INT4_STREAMK` forces the choice. `smem_limit`:
/// the decode kernel's shared memory limit of the call (plain calls:
/// [`decode_smem_limit`], fused ones [`DEC_SMEM_LIMIT`]).
fn auto_takes_stream_k(m: usize, w: &Int4Weight, sm_count: usize, smem_limit: usize) -> bool {
    stream_k_auto(w.n)
        && (STREAM_K_FORCED.get().is_some()
            || !(WHOLE_COLUMN.get() && whole_column_plan_within(m, w, sm_count, smem_limit)))
}

/// `MARLIN_INT4_WHOLE_COLUMN=0` turns the decode kernel's whole-column plan
/// off (Auto then takes stream-K where it did, and the split-K decode plans
/// elsewhere), for same-run comparisons of the decode step.
static WHOLE_COLUMN: knobs::Switch = knobs::Switch::new("MARLIN_INT4_WHOLE_COLUMN", true);

/// `MARLIN_INT4_STREAMK=1` / `0`: the stream-K decode kernel for every
/// shape where it fits / never; unset: by shape ([`stream_k_auto`]).
static STREAM_K_FORCED: knobs::Force = knobs::Force::new("MARLIN_INT4_STREAMK");

/// Whether the split-K INT4 decode kernel streams weights before its PDL
/// wait (W4_DEC_PRE_WAIT of the `flags` argument of `w4a16_dec_*`): it issues its scale rows
/// and its weight ring before `griddepcontrol.wait` (the stream-K kernel
/// always did). `MARLIN_INT4_PREWAIT=0` restores session 4's order (the
/// wait first; read once), for same-run comparisons of the decode step
/// (docs/CUDA.md, change 30).
pub fn int4_prewait() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_INT4_PREWAIT", true);
    ON.get()
}

/// Whether the decode kernels of one token tile with scales after the mma
/// (`w4a16_dec_m4`, `w4a16_dec_m8` and their fused forms) run the paired
/// main loop (two chunks per step, per-chunk fp32 sums; docs/CUDA.md change
/// 36) where the quad loop (change 54) is off. `MARLIN_INT4_PAIR=0` / `1` (read once) for same-run comparisons.
pub fn int4_paired() -> bool {
    static ON: knobs::Switch = knobs::Switch::new("MARLIN_INT4_PAIR", true);
    ON.get()
}

/// Diagnostic probe of the decode kernels: `MARLIN_INT4_DEC_PROBE=skip-loop`
/// (read once) makes them skip their main loop, so that a benchmark times
/// what the rest of a launch costs (the GEMM output is zeros: never a
/// result; docs/CUDA.md change 36). Any binary that inherits the variable
/// computes wrong answers, so the first read says so on stderr.
fn decode_probe_skip_loop() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("MARLIN_INT4_DEC_PROBE").is_ok_and(|v| v.trim() == "skip-loop");
        if on {
            eprintln!(
                "marlin: MARLIN_INT4_DEC_PROBE=skip-loop: INT4 decode GEMMs skip their main \
                 loop and return zeros (a timing probe, not a result)"
            );
        }
        on
    })
}

/// The lean paired main loop of the decode kernels (docs/CUDA.md change 38;
/// reached only with `MARLIN_INT4_DEC_QUAD=0` since change 54, whose quad
/// loop takes precedence):
/// activation loads only in lanes of existing token rows, no refill code
/// when the ring holds a warp's chunks, one scale fold per pair where the
/// pair shares a scale group. By default at M >= [`LEAN_MIN_M`] only: in
/// the final H100 run of session 6 (two interleaved rounds) the batch-8
/// decode step took 2791.6 / 2792.7 us with it against 2844.7 / 2844.1
/// without, but the batch-1 step 2474.9 / 2478.5 against 2414.8 / 2421.5,
/// although every M = 1 GEMM was as fast or faster with it alone.
/// `MARLIN_INT4_DEC_LEAN` (read once) overrides for every M: `1` on, `0`
/// off (the paired loop of change 36), `bcast` on with every lane loading
/// activations (absent token rows read row 0's: a diagnostic of what the
/// predicated-off loads save); any other value is reported once on stderr
/// and ignored. Returns the W4_DEC_LEAN (8) and W4_DEC_LEAN_BCAST (16) bits
/// of the `flags` argument.
fn decode_lean_bits(m: usize) -> i32 {
    static FORCED: knobs::Choice = knobs::Choice::new(
        "MARLIN_INT4_DEC_LEAN",
        &[("0", 0), ("1", 8), ("bcast", 8 | 16)],
    );
    FORCED.get().unwrap_or(if m >= LEAN_MIN_M { 8 } else { 0 })
}

/// Fewest token rows for which the decode kernels take the lean loop by
/// default ([`decode_lean_bits`]): measured faster in the step at M = 8,
/// slower at M = 1, not measured in the step at M = 2..4.
const LEAN_MIN_M: usize = 5;

/// The decode kernels' `flags` argument for `m` token rows (W4_DEC_PRE_WAIT,
/// W4_DEC_PAIRED, W4_DEC_PROBE_SKIP_LOOP, W4_DEC_LEAN, W4_DEC_LEAN_BCAST,
/// W4_DEC_EARLY_TRIGGER, W4_DEC_LATE_TRIGGER in the source).
fn decode_flags(m: usize) -> i32 {
    i32::from(int4_prewait())
        | (i32::from(int4_paired()) << 1)
        | (i32::from(decode_probe_skip_loop()) << 2)
        | decode_lean_bits(m)
        | if EARLY_TRIGGER.get() {
            DEC_EARLY_TRIGGER
        } else {
            0
        }
        | if LATE_TRIGGER.get() {
            DEC_LATE_TRIGGER
        } else {
            0
        }
        | decode_quad_bits()
}

/// The quad main loop of the decode kernels of one or two token tiles
/// (M <= 16): 4 (one tile) or 2 chunks per step in one basic block, their
/// mma over independent accumulator chains; it takes precedence over the
/// paired, lean and single-chunk loops. In the POST kernels (symmetric,
/// groups >= 64; docs/CUDA.md change 54) per tile 2 chains per chunk pair
/// inside one scale group, else 2 per chunk; in the kernels that
/// dequantise with the scale (zero points, groups of 32; change 57) one
/// chain per chunk of the step.
/// `MARLIN_INT4_DEC_QUAD` (read once): `1` on, `0` off, `chains8` on with 2
/// chains per chunk (each chunk scaled by itself) also where pairs share a
/// group, `post` on in the POST kernels only (the scaled kernels run their
/// single-chunk loop, as before change 57); any other value is reported
/// once on stderr and ignored. Returns the W4_DEC_QUAD (256),
/// W4_DEC_QUAD_CHAINS8 (512) and W4_DEC_QUAD_SCALED (1024) bits.
fn decode_quad_bits() -> i32 {
    static FORCED: knobs::Choice = knobs::Choice::new(
        "MARLIN_INT4_DEC_QUAD",
        &[
            ("0", 0),
            ("1", DEC_QUAD | DEC_QUAD_SCALED),
            ("chains8", DEC_QUAD | DEC_QUAD_CHAINS8 | DEC_QUAD_SCALED),
            ("post", DEC_QUAD),
        ],
    );
    FORCED.get().unwrap_or(QUAD_DEFAULT_BITS)
}

/// `flags` bits of [`decode_quad_bits`] (W4_DEC_QUAD, W4_DEC_QUAD_CHAINS8,
/// W4_DEC_QUAD_SCALED in the source).
const DEC_QUAD: i32 = 256;
const DEC_QUAD_CHAINS8: i32 = 512;
const DEC_QUAD_SCALED: i32 = 1024;

/// [`decode_quad_bits`] when `MARLIN_INT4_DEC_QUAD` is unset.
const QUAD_DEFAULT_BITS: i32 = DEC_QUAD | DEC_QUAD_SCALED;

/// `MARLIN_INT4_DEC_LATE_TRIGGER=1`: the decode kernels trigger their
/// dependents after their main loop instead of after the PDL wait, so the
/// next kernels launch (and stream their weight rings) only during this
/// grid's epilogue: the opposite of [`EARLY_TRIGGER`], the next test of
/// docs/CUDA.md change 43 (every earlier overlap measured slower at batch
/// 1). Not yet measured on a GPU; off by default.
static LATE_TRIGGER: knobs::Switch = knobs::Switch::new("MARLIN_INT4_DEC_LATE_TRIGGER", false);
/// `flags` bit of [`LATE_TRIGGER`] (W4_DEC_LATE_TRIGGER in the source).
const DEC_LATE_TRIGGER: i32 = 128;

/// `MARLIN_INT4_DEC_EARLY_TRIGGER=1`: the decode kernels trigger their
/// dependents before the weight ring and the PDL wait instead of after the
/// wait (docs/CUDA.md change 43: one kernel deeper look-ahead in the PDL
/// graph; the dependents still wait for this grid's completion).
static EARLY_TRIGGER: knobs::Switch =
    knobs::Switch::new("MARLIN_INT4_DEC_EARLY_TRIGGER", EARLY_TRIGGER_DEFAULT);
/// Default of [`EARLY_TRIGGER`]: off, the measured variant (H100 A/B,
/// docs/CUDA.md change 43: decode step batch 1 2657.5 / 2650.7 us with it
/// against 2408.5 / 2413.0, batch 8 2798.4 / 2802.8 against 2725.6 /
/// 2726.4).
const EARLY_TRIGGER_DEFAULT: bool = false;
/// `flags` bit of [`EARLY_TRIGGER`] (W4_DEC_EARLY_TRIGGER in the source).
const DEC_EARLY_TRIGGER: i32 = 64;

/// Launch shape of the stream-K decode kernel: `blocks` x `warps` warps,
/// each streaming an equal share of the (column block, chunk) units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StreamKShape {
    blocks: usize,
    warps: usize,
}

/// A stream-K call, resolved.
struct StreamKCall {
    plan: GemmPlan,
    shape: StreamKShape,
    smem: u32,
    /// Dynamic shared memory attribute (the device's per-block limit).
    max_smem: u32,
    /// fp32 partials (two slots of 16 columns x token tiles per warp) and
    /// tickets (one per n16 column block) the launch needs.
    partials: usize,
    tickets: usize,
}

/// Bytes of one warp's stream-K ring (`SkRing` in the source): per stage
/// and lane 16 B of codes and a 4 B scale pair, plus 4 B zero pairs when
/// the weight has zero points (one unused stage otherwise).
fn sk_ring_bytes(has_zeros: bool) -> usize {
    SK_STAGES * 32 * (16 + 4) + 32 * 4 * if has_zeros { SK_STAGES } else { 1 }
}

/// Dynamic shared memory of a stream-K block: the rings, the whole A
/// (M rows of k_chunks*64 + 8 halves) and 64 zero halves.
fn sk_smem_bytes(m: usize, k_chunks: usize, warps: usize, has_zeros: bool) -> usize {
    warps * sk_ring_bytes(has_zeros) + m.min(SK_MAX_M) * (k_chunks * 64 + 8) * 2 + 128
}

/// (most dynamic shared memory of one block, shared memory of one SM) by
/// compute capability: 227 / 228 KiB on sm_90, 163 / 164 on sm_80, and the
/// 99 / 100 KiB of the other sm_8x parts for everything else.
fn sk_smem_limits(cc: (i32, i32)) -> (usize, usize) {
    match cc {
        (9, 0) => (227 * 1024, 228 * 1024),
        (8, 0) => (163 * 1024, 164 * 1024),
        _ => (99 * 1024, 100 * 1024),
    }
}

/// The stream-K decode kernel's plan for a weight given by (n_pad,
/// k_chunks, group_k32), or None when M > 16 or the whole A and 8 warps'
/// rings do not fit one block's shared memory.
///
/// `warps_per_sm` (default [`SK_WARPS_PER_SM`]): blocks of up to 16 warps,
/// as many blocks per SM as that asks and shared memory and registers
/// allow, times the SM count; fewer when the weight has fewer than 4 units
/// (512-byte code words of one column block and chunk) per warp. `GemmPlan::n_tiles` is the
/// number of blocks and `GemmPlan::splits` the warps per SM.
fn stream_k_launch_for(
    m: usize,
    (n_pad, k_chunks, group_k32): (usize, usize, usize),
    has_zeros: bool,
    sm_count: usize,
    cc: (i32, i32),
    warps_per_sm: Option<usize>,
) -> Option<(GemmPlan, StreamKShape)> {
    if m == 0 || m > SK_MAX_M || k_chunks == 0 || n_pad < 16 {
        return None;
    }
    let (block_limit, sm_limit) = sk_smem_limits(cc);
    let per_sm = warps_per_sm
        .unwrap_or(SK_WARPS_PER_SM)
        .clamp(1, 2 * SK_MAX_BLOCK_WARPS);
    let mut warps = per_sm.min(SK_MAX_BLOCK_WARPS);
    // A large A takes 8-warp blocks before it is refused (fewer warps per
    // SM than that would not keep enough code words in flight).
    while warps > 8 && sk_smem_bytes(m, k_chunks, warps, has_zeros) > block_limit {
        warps /= 2;
    }
    let smem = sk_smem_bytes(m, k_chunks, warps, has_zeros);
    if smem > block_limit {
        return None;
    }
    // Registers: the kernels are built for one 512-thread block per SM
    // (__launch_bounds__(512, 1): 72-99 registers), so count 128 per thread.
    let by_regs = 65_536 / (128 * 32 * warps);
    let blocks_per_sm = per_sm
        .div_ceil(warps)
        .min(sm_limit / (smem + 1024))
        .min(by_regs)
        .max(1);
    let units = (n_pad / 16).checked_mul(k_chunks)?;
    let most_warps = (units / SK_MIN_UNITS_PER_WARP).max(1);
    let mut blocks = sm_count.max(1) * blocks_per_sm;
    if blocks * warps > most_warps {
        blocks = (most_warps / warps).max(1);
        warps = warps.min(most_warps);
    }
    let kernel = match (m > 8, has_zeros, group_k32 == 1) {
        (false, true, _) => "w4a16_sk_m8z",
        (true, true, _) => "w4a16_sk_m16z",
        (false, false, true) => "w4a16_sk_m8s",
        (true, false, true) => "w4a16_sk_m16s",
        (false, false, false) => "w4a16_sk_m8",
        (true, false, false) => "w4a16_sk_m16",
    };
    let plan = GemmPlan {
        path: GemmPath::StreamK,
        kernel,
        m_tiles: 1,
        m_blocks: 1,
        n_tiles: blocks,
        splits: (blocks * warps).div_ceil(sm_count.max(1)),
    };
    Some((plan, StreamKShape { blocks, warps }))
}

/// The stream-K plan `GemmPath::StreamK` (or `Auto`) would take for `m`
/// rows of `w` on `dev`, if the kernel can run it.
pub fn stream_k_plan(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    warps_per_sm: Option<usize>,
) -> Option<GemmPlan> {
    stream_k_launch_for(
        m,
        (w.n_pad, w.k_chunks, w.group_k32),
        w.neg_zero_scales.is_some(),
        dev.sm_count(),
        dev.compute_capability(),
        warps_per_sm,
    )
    .map(|(p, _)| p)
}

fn stream_k_call(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    warps_per_sm: Option<usize>,
) -> Result<Option<StreamKCall>> {
    let Some((plan, shape)) = stream_k_launch_for(
        m,
        (w.n_pad, w.k_chunks, w.group_k32),
        w.neg_zero_scales.is_some(),
        dev.sm_count(),
        dev.compute_capability(),
        warps_per_sm,
    ) else {
        return Ok(None);
    };
    let has_zeros = w.neg_zero_scales.is_some();
    let to_u32 = |v: usize| {
        u32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} bytes of shared memory")))
    };
    let token_tiles = if m > 8 { 2 } else { 1 };
    let partials = (2 * shape.blocks * shape.warps)
        .checked_mul(token_tiles * 4 * 32)
        .ok_or_else(|| CudaError::Shape("stream-K partials overflow".into()))?;
    Ok(Some(StreamKCall {
        plan,
        shape,
        smem: to_u32(sk_smem_bytes(m, w.k_chunks, shape.warps, has_zeros))?,
        max_smem: to_u32(sk_smem_limits(dev.compute_capability()).0)?,
        partials,
        tickets: w.n_pad / 16,
    }))
}

/// Pushes the leading parameters every INT4 GEMM kernel takes (the split-K
/// and stream-K decode entries here, W4A16_WGMMA_ENTRY of [`super::wgmma`],
/// W4A16_WS_ENTRY / W4A16_WSK_ENTRY of [`super::wgmma_ws`]): activations,
/// the packed codes and scales, the zero-point scales or a null pointer
/// (symmetric weights), C, the split-K partials and tickets.
pub(super) fn arg_operands<'l, 'k, A: KernelArg + ?Sized, C: KernelArg + ?Sized>(
    launch: &'l mut KernelLaunch<'k>,
    a: &A,
    w: &Int4Weight,
    c: &C,
    (partials, tickets): (&CudaSlice<f32>, &CudaSlice<u32>),
) -> &'l mut KernelLaunch<'k> {
    let null_zeros: u64 = 0;
    launch.arg(a).arg(&w.words).arg(&w.scales);
    match &w.neg_zero_scales {
        Some(z) => launch.arg(z),
        None => launch.arg(&null_zeros),
    };
    launch.arg(c).arg(partials).arg(tickets)
}

fn launch_stream_k<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    sc: &StreamKCall,
) -> Result<()> {
    if ws.partials.len() < sc.partials || ws.tickets.len() < sc.tickets {
        return Err(CudaError::Shape(format!(
            "stream-K workspace too small for M={m} N={}: call GemmWorkspace::prepare",
            w.n
        )));
    }
    let func_name = sc.plan.kernel;
    let (module, source) = gemm_module(T::ACT);
    let func = dev.function(module, source, func_name, sc.max_smem)?;
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(sc.shape.blocks).map_err(|_| CudaError::Shape("stream-K grid".into()))?,
            1,
            1,
        ),
        block_dim: (32 * sc.shape.warps as u32, 1, 1),
        shared_mem_bytes: sc.smem,
    };
    let m_i32 = to_i32("M", m)?;
    let (n_i32, k_i32, n_pad_i32) = (to_i32("N", w.n)?, to_i32("K", w.k)?, to_i32("N", w.n_pad)?);
    let (k_chunks_i32, group_k32_i32) = (
        to_i32("K chunks", w.k_chunks)?,
        to_i32("group size", w.group_k32)?,
    );
    let mut launch = KernelLaunch::new(dev, &func, func_name);
    arg_operands(&mut launch, a, w, c, (&ws.partials, &ws.tickets))
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32);
    // SAFETY: argument types and order match W4A16_SK_ENTRY in
    // kernels/w4a16_gemm.cu; A >= M*K and C >= M*N were checked by the
    // caller, partials >= 2 * warps * token tiles * 128 floats and tickets
    // >= n_pad/16 above, the weights cover n_pad x k_chunks (repack). Every
    // block runs griddepcontrol.wait (w4_pdl_enter) before it touches A, C,
    // the partials or the tickets; it reads only the weights before that.
    unsafe { launch.launch_pdl(cfg) }?;
    Ok(())
}

/// Enqueues `w4_bench_delay` (one warp spinning `cycles` SM clocks after
/// its PDL wait), launched with programmatic dependent launch like the
/// decode step's kernels: the benchmark's stand-in for the small kernel
/// that precedes each GEMM in the decode graph.
pub(crate) fn launch_bench_delay(dev: &Arc<CudaDevice>, cycles: i64) -> Result<()> {
    let name = "w4_bench_delay";
    let func = dev.function(MODULE, SOURCE, name, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = KernelLaunch::new(dev, &func, name);
    launch.arg(&cycles);
    // SAFETY: one i64 parameter as in the source; the kernel touches no
    // memory and runs griddepcontrol.wait first (w4_pdl_enter).
    unsafe { launch.launch_pdl(cfg) }
}

fn dequant_plan() -> GemmPlan {
    GemmPlan {
        path: GemmPath::DequantCublas,
        kernel: "dequant+cublas",
        m_tiles: 0,
        m_blocks: 0,
        n_tiles: 0,
        splits: 1,
    }
}

fn check_operands(m: usize, w: &Int4Weight, a_len: usize, c_len: usize) -> Result<()> {
    let need_a = m
        .checked_mul(w.k)
        .ok_or_else(|| CudaError::Shape("M*K overflows".into()))?;
    let need_c = m
        .checked_mul(w.n)
        .ok_or_else(|| CudaError::Shape("M*N overflows".into()))?;
    if a_len < need_a || c_len < need_c {
        return Err(CudaError::Shape(format!(
            "INT4 GEMM M={m} N={} K={}: A has {a_len} elements (needs {need_a}), C has {c_len} (needs {need_c})",
            w.n, w.k,
        )));
    }
    Ok(())
}

/// C (M, N) = A (M, K) . W^T, both row-major, A and C f16 or bf16
/// ([`ActDtype`]; fp32 accumulation). Allocates the split-K scratch and
/// loads the kernel at first use (not capture-safe the first time; see
/// [`int4_gemm_prepared`]).
pub fn int4_gemm<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaSlice<T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaSlice<T>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    ws.prepare_for(dev, w, m, opts, T::ACT)?;
    int4_gemm_prepared(dev, &a.as_view(), m, w, &mut c.as_view_mut(), ws, opts)
}

/// The capture-safe entry point: the same product on views of f16 or bf16
/// device buffers (A >= M*K, C >= M*N elements, row-major), with a
/// workspace that [`GemmWorkspace::prepare`] (f16) or
/// [`GemmWorkspace::prepare_for`] made ready for this (weight shape, M,
/// opts, activation type).
/// It enqueues kernel launches (and, on the dequantize + cuBLAS path, one
/// cublasGemmEx) on the device's stream and nothing else: no allocation, no
/// module load, no host synchronisation, so it can be recorded in a CUDA
/// graph. An unprepared workspace is an error, not an allocation.
pub fn int4_gemm_prepared<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
    opts: GemmOptions,
) -> Result<GemmPlan> {
    check_operands(m, w, a.len(), c.len())?;
    let act = T::ACT;
    let fc = match resolve_call(dev, m, w, opts, act)? {
        Call::Dequant => return dequant_cublas(dev, a, m, w, c, ws),
        Call::Wgmma(wc) => {
            ws.check_prepared(act, wc.plan.kernel)?;
            wgmma::launch(dev, a, m, w, c, ws, &wc)?;
            return Ok(wc.plan);
        }
        Call::WgmmaWs(wc) => {
            ws.check_prepared(act, wc.plan.kernel)?;
            wgmma_ws::launch(dev, a, m, w, c, ws, &wc)?;
            return Ok(wc.plan);
        }
        Call::Bulk(bc) => {
            ws.check_prepared(act, bc.plan.kernel)?;
            // The bulk-copy kernel's launcher takes f16 views; resolve_call
            // refuses it for bf16.
            let (Some(a), Some(c)) = (T::as_f16(a), T::as_f16_mut(c)) else {
                return Err(CudaError::Unsupported(format!(
                    "INT4 kernel {} has f16 activations only",
                    bc.plan.kernel
                )));
            };
            bulk::launch(dev, a, m, w, c, ws, &bc)?;
            return Ok(bc.plan);
        }
        Call::StreamK(sc) => {
            ws.check_prepared(act, sc.plan.kernel)?;
            launch_stream_k(dev, a, m, w, c, ws, &sc)?;
            return Ok(sc.plan);
        }
        Call::Fused(fc) => fc,
    };
    let p = fc.plan;
    let m_i32 = i32::try_from(m).map_err(|_| CudaError::Shape(format!("M = {m} exceeds i32")))?;
    let grid = launch_grid(p.m_blocks, p.n_tiles, fc.grid_splits)?;
    ws.check_split_k(fc.grid_splits, fc.partials, fc.tickets, (m, w.n), "prepare")?;
    ws.check_prepared(act, p.kernel)?;
    let func_name = p.kernel;
    let (module, source) = gemm_module(act);
    let func = dev.function(module, source, func_name, fc.max_smem)?;
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (fc.block_threads, 1, 1),
        shared_mem_bytes: fc.smem,
    };
    let (n_i32, k_i32, n_pad_i32) = (w.n as i32, w.k as i32, w.n_pad as i32);
    let (k_chunks_i32, group_k32_i32, splits_i32) =
        (w.k_chunks as i32, w.group_k32 as i32, fc.grid_splits as i32);
    let (nbpb_i32, k_slices_i32) = fc
        .decode
        .map_or((0, 0), |d| (d.nbpb as i32, d.k_slices as i32));
    // Programmatic dependent launch (ops::launch, decode step): only the
    // entries that wait for their predecessor (w4_pdl_enter or
    // griddepcontrol.wait) before touching A, C, the partials or the
    // tickets (W4A16_ENTRY; W4A16_DEC_ENTRY and W4A16_SA_ENTRY, which may
    // read the read-only weights before it) may take it; any other kernel
    // launched here is a plain launch.
    let pdl = func_name.starts_with("w4a16_dec_")
        || func_name.starts_with("w4a16_gemm_")
        || func_name.starts_with("w4a16_sa_");
    let mut launch = KernelLaunch::new(dev, &func, func_name);
    arg_operands(&mut launch, a, w, c, (&ws.partials, &ws.tickets))
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32)
        .arg(&splits_i32);
    let flags = decode_flags(m);
    if fc.decode.is_some() {
        launch.arg(&nbpb_i32).arg(&k_slices_i32).arg(&flags);
    }
    // SAFETY: argument types and order match w4a16_gemm_* / w4a16_dec_* in
    // kernels/w4a16_gemm.cu; buffer sizes were checked above (A >= M*K,
    // C >= M*N, partials >= splits*M*n_pad, tickets >= n_tiles*m_blocks,
    // weights sized by the repack for n_pad x k_chunks); with `pdl` the
    // kernel waits on its predecessor first (w4_pdl_enter).
    unsafe {
        if pdl {
            launch.launch_pdl(cfg)?
        } else {
            launch.launch(cfg)?
        }
    };
    Ok(p)
}

/// Module of the fused decode-step variants: the same source with
/// `W4_FUSED_ENTRIES` defined, which compiles only the fused entries (the
/// plain module and its kernels are unchanged; docs/CUDA.md, change 31).
const FUSED_MODULE: &str = "w4a16_gemm_fused";
const FUSED_SOURCE: &str = concat!(
    "#define W4_FUSED_ENTRIES 1\n",
    include_str!("../kernels/w4a16_gemm.cu")
);

/// The fused module, or its timing probe ([`kernel_probe`]).
fn fused_module() -> (&'static str, &'static str) {
    match kernel_probe() {
        Some(probe) => (probe.fused.0.as_str(), probe.fused.1.as_str()),
        None => (FUSED_MODULE, FUSED_SOURCE),
    }
}

/// Static shared memory reserved beside the dynamic allocation of the fused
/// stream-K kernels (the prologue's 1088-byte reduction array,
/// `W4_PRO_RED_FLOATS` in the source, rounded up).
const FUSED_SK_STATIC_SMEM: usize = 2048;

/// Largest M of the fused decode-step GEMM ([`int4_gemm_fused`]).
pub const FUSED_MAX_M: usize = 16;

/// How a fused decode-step GEMM ([`int4_gemm_fused`]) forms its activations
/// A (M, K) while it copies them to shared memory.
pub enum Int4Prologue<'a> {
    /// A (M, K) f16 as given.
    None(CudaView<'a, f16>),
    /// A[r, k] = silu(g[r, k]) * g[r, K + k], `g` the (M, 2K) output of a
    /// fused gate|up GEMM (gate columns first): the SwiGLU launch folded in.
    Glu(CudaView<'a, f16>),
    /// A[r, k] = x[r, k] * rsqrt(mean(x[r, :]^2) + eps) * weight[k], `x`
    /// the (M, K) f32 residual stream: the RMSNorm launch folded in (every
    /// block reduces the whole row itself).
    RmsNorm {
        x: CudaView<'a, f32>,
        weight: CudaView<'a, f32>,
        eps: f32,
    },
    /// A (M, K) f16 = weight ⊙ x, the rows of an
    /// [`Int4Epilogue::AddToResidualNormed`] GEMM, not yet normalised: each
    /// output row is multiplied by rsqrt(sum(x[r, :]^2) / K + eps) from
    /// that GEMM's partial sums before its store (the deferred norm,
    /// docs/CUDA.md change 76). Mathematically the RMSNorm prologue; the
    /// rounding differs (A is rounded to f16 before the scaling, not after).
    DeferredNorm {
        a: CudaView<'a, f16>,
        norm: RowSquareSums<'a>,
    },
}

/// Partial sums of squares of the rows an
/// [`Int4Epilogue::AddToResidualNormed`] GEMM wrote: `parts` per row (that
/// GEMM's n_pad / 16, [`row_square_parts`]), row-major, and the norm's eps.
pub struct RowSquareSums<'a> {
    pub sums: CudaView<'a, f32>,
    pub parts: usize,
    pub eps: f32,
}

/// Where a fused decode-step GEMM writes C (M, N).
pub enum Int4Epilogue<'a> {
    /// C (M, N) f16.
    Store(CudaViewMut<'a, f16>),
    /// resid[r, n] += C[r, n] rounded to f16 (the f32 (M, N) residual
    /// stream): the residual add folded in.
    AddToResidual(CudaViewMut<'a, f32>),
    /// The residual add, and the next RMSNorm's inputs for an
    /// [`Int4Prologue::DeferredNorm`] GEMM: x = resid[r, n] + f16(C[r, n])
    /// into `resid`, h[r, n] = f16(x * weight[n]), and per row the sums of
    /// x^2 over each 16 columns into `sums` ([`row_square_parts`] per
    /// row). The RMSNorm launch between this GEMM and the next folded into
    /// both (docs/CUDA.md change 76).
    AddToResidualNormed {
        resid: CudaViewMut<'a, f32>,
        weight: CudaView<'a, f32>,
        h: CudaViewMut<'a, f16>,
        sums: CudaViewMut<'a, f32>,
    },
}

/// Partial sums per row that an [`Int4Epilogue::AddToResidualNormed`] GEMM
/// of `w` writes (one per n16 column block of its padded N).
pub fn row_square_parts(w: &Int4Weight) -> usize {
    w.n_pad / 16
}

/// Whether [`int4_gemm_fused`] runs `m` rows of `w` on `dev` with a
/// prologue or epilogue: M <= [`FUSED_MAX_M`], symmetric codes with groups
/// of >= 64 or per-channel (the kernels that apply scales after the mma),
/// and a split-K decode launch shape for the call (a few shapes, e.g. M = 3
/// with K = 8192 at N = 256, have none: the plain call takes the general
/// kernel there).
pub fn fused_supported(dev: &CudaDevice, m: usize, w: &Int4Weight) -> bool {
    fused_weight_ok(m, w) && decode_launch(m, w, dev.sm_count(), None, DEC_SMEM_LIMIT).is_some()
}

/// Whether [`int4_gemm_fused`] runs `m` rows of `w` on `dev` with the
/// deferred norm ([`Int4Prologue::DeferredNorm`] with a plain store, or
/// [`Int4Epilogue::AddToResidualNormed`] with a plain input): the fused
/// kernels' formats and M, and a plain decode launch (the one
/// [`int4_gemm`] takes under `GemmPath::Auto`, which these calls copy: the
/// same blocks and ring, only the epilogue differs) on a kernel with
/// deferred-norm entries.
pub fn deferred_norm_supported(dev: &CudaDevice, m: usize, w: &Int4Weight) -> bool {
    fused_weight_ok(m, w)
        && !auto_takes_stream_k(m, w, dev.sm_count(), decode_smem_limit(dev))
        && deferred_norm_launch(dev, m, w, FusedKind::Nrm).is_some()
}

/// The plain decode launch of `m` rows of `w` with its kernel renamed to
/// the deferred-norm entry of `kind` (Nrm or ResNrm), or None.
fn deferred_norm_launch(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    kind: FusedKind,
) -> Option<(GemmPlan, DecodeShape)> {
    let (mut plan, shape) = decode_launch(m, w, dev.sm_count(), None, decode_smem_limit(dev))?;
    plan.kernel = deferred_norm_kernel(plan.kernel, kind)?;
    Some((plan, shape))
}

/// The deferred-norm entry of `kind` (Nrm or ResNrm) with the body and ring
/// of the plain decode kernel `plain` (symmetric, groups >= 64), or None.
fn deferred_norm_kernel(plain: &str, kind: FusedKind) -> Option<&'static str> {
    Some(match (plain, kind) {
        ("w4a16_dec_m4", FusedKind::Nrm) => "w4a16_dec_m4_nrm",
        ("w4a16_dec_m8", FusedKind::Nrm) => "w4a16_dec_m8_nrm",
        ("w4a16_dec_m16", FusedKind::Nrm) => "w4a16_dec_m16_nrm",
        ("w4a16_dec_m4", FusedKind::ResNrm) => "w4a16_dec_m4_resnrm",
        ("w4a16_dec_m8", FusedKind::ResNrm) => "w4a16_dec_m8_resnrm",
        ("w4a16_dec_m16", FusedKind::ResNrm) => "w4a16_dec_m16_resnrm",
        _ => return None,
    })
}

/// The M range and weight formats of the fused kernels.
fn fused_weight_ok(m: usize, w: &Int4Weight) -> bool {
    (1..=FUSED_MAX_M).contains(&m) && w.neg_zero_scales.is_none() && w.group_k32 >= 2
}

/// The fused kernel of a (prologue, epilogue) pair: (suffix, stream-K
/// kernel if any); None for the plain pair.
fn fused_kind(pro: &Int4Prologue<'_>, epi: &Int4Epilogue<'_>) -> Result<Option<FusedKind>> {
    match (pro, epi) {
        (Int4Prologue::None(_), Int4Epilogue::Store(_)) => Ok(None),
        (Int4Prologue::RmsNorm { .. }, Int4Epilogue::Store(_)) => Ok(Some(FusedKind::Rms)),
        (Int4Prologue::None(_), Int4Epilogue::AddToResidual(_)) => Ok(Some(FusedKind::Res)),
        (Int4Prologue::Glu(_), Int4Epilogue::AddToResidual(_)) => Ok(Some(FusedKind::GluRes)),
        (Int4Prologue::DeferredNorm { .. }, Int4Epilogue::Store(_)) => Ok(Some(FusedKind::Nrm)),
        (Int4Prologue::None(_), Int4Epilogue::AddToResidualNormed { .. }) => {
            Ok(Some(FusedKind::ResNrm))
        }
        _ => Err(CudaError::Unsupported(
            "fused INT4 GEMM: the compiled (prologue, epilogue) pairs are (RmsNorm, Store), \
             (None, AddToResidual), (Glu, AddToResidual), (DeferredNorm, Store) and \
             (None, AddToResidualNormed)"
                .into(),
        )),
    }
}

/// The three fused (prologue, epilogue) pairs of a Llama-style block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FusedKind {
    /// RMSNorm in, f16 out (q|k|v, gate|up).
    Rms,
    /// f16 in, residual add out (o).
    Res,
    /// GLU in, residual add out (down).
    GluRes,
    /// Deferred-norm rows in, rows scaled by their inverse norms out
    /// (q|k|v after an AddToResidualNormed GEMM).
    Nrm,
    /// f16 in, residual add and the next norm's inputs out (o, down).
    ResNrm,
}

/// Kernel name of a fused split-K decode launch of `m` rows.
fn fused_dec_name(kind: FusedKind, m: usize) -> &'static str {
    match (kind, m) {
        (FusedKind::Rms, 0..=4) => "w4a16_dec_m4_rms",
        (FusedKind::Rms, 5..=8) => "w4a16_dec_m8_rms",
        (FusedKind::Rms, _) => "w4a16_dec_m16_rms",
        (FusedKind::Res, 0..=4) => "w4a16_dec_m4_res",
        (FusedKind::Res, 5..=8) => "w4a16_dec_m8_res",
        (FusedKind::Res, _) => "w4a16_dec_m16_res",
        (FusedKind::GluRes, 0..=4) => "w4a16_dec_m4_glures",
        (FusedKind::GluRes, 5..=8) => "w4a16_dec_m8_glures",
        (FusedKind::GluRes, _) => "w4a16_dec_m16_glures",
        // Named from the plain launch (deferred_norm_launch).
        (FusedKind::Nrm | FusedKind::ResNrm, _) => "",
    }
}

/// A fused call, resolved: the stream-K kernel (RMSNorm prologue where
/// `GemmPath::Auto` takes stream-K) or the split-K decode kernel.
enum FusedResolved {
    StreamK(StreamKCall),
    Decode(FusedCall, DecodeShape),
}

fn resolve_fused(
    dev: &CudaDevice,
    m: usize,
    w: &Int4Weight,
    kind: FusedKind,
) -> Result<FusedResolved> {
    if !fused_weight_ok(m, w) {
        return Err(CudaError::Unsupported(format!(
            "fused INT4 GEMM: M = {m} (1..={FUSED_MAX_M}), symmetric codes with groups of >= 64 \
             (this weight: zero points {}, group of {} elements)",
            w.neg_zero_scales.is_some(),
            32 * w.group_k32
        )));
    }
    // The fused kernels keep the portable shared memory limit (their
    // function attribute is decode_smem_attr()), except the deferred-norm
    // pair, which copies the plain call's plan.
    if kind == FusedKind::Rms && auto_takes_stream_k(m, w, dev.sm_count(), DEC_SMEM_LIMIT) {
        // The prologue's reduction array adds 1088 B of static shared memory:
        // the dynamic limit (the function attribute) is the block's limit
        // less FUSED_SK_STATIC_SMEM (the H100 run of change 31 refused the
        // attribute at the full 227 KiB).
        if let Some(mut sc) = stream_k_call(dev, m, w, None)?.filter(|sc| {
            sc.max_smem as usize >= FUSED_SK_STATIC_SMEM
                && sc.smem as usize <= sc.max_smem as usize - FUSED_SK_STATIC_SMEM
        }) {
            sc.max_smem -= FUSED_SK_STATIC_SMEM as u32;
            sc.plan.kernel = if m > 8 {
                "w4a16_sk_m16_rms"
            } else {
                "w4a16_sk_m8_rms"
            };
            return Ok(FusedResolved::StreamK(sc));
        }
    }
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| CudaError::Shape("shared memory size".into()));
    // (plan, shape, dynamic shared memory, its function attribute).
    let (plan, shape, smem, max_smem) = if matches!(kind, FusedKind::Nrm | FusedKind::ResNrm) {
        // The plain call's launch (its shared memory limit, ring and
        // blocks): the deferred norm's static 64 B fit beside the wide
        // limit (DEC_SMEM_LIMIT_WIDE leaves 3 KiB).
        if auto_takes_stream_k(m, w, dev.sm_count(), decode_smem_limit(dev)) {
            return Err(CudaError::Unsupported(format!(
                "fused INT4 GEMM with the deferred norm: N = {} at M = {m} is a stream-K call \
                 (no deferred-norm stream-K kernel)",
                w.n
            )));
        }
        let Some((plan, shape)) = deferred_norm_launch(dev, m, w, kind) else {
            return Err(CudaError::Unsupported(format!(
                "fused INT4 GEMM with the deferred norm: no split-K decode launch for M = {m}, \
                 N = {}, K = {}",
                w.n, w.k
            )));
        };
        let ring = plain_decode_ring_bytes(m, w.n_pad / 16, w.k_chunks, shape);
        let smem = decode_smem_bytes_ring(m, w.k_chunks, shape, w.group_k32, false, ring);
        (plan, shape, smem, decode_smem_limit(dev))
    } else {
        let Some((mut plan, shape)) = decode_launch(m, w, dev.sm_count(), None, DEC_SMEM_LIMIT)
        else {
            return Err(CudaError::Unsupported(format!(
                "fused INT4 GEMM: no decode-kernel launch shape for M = {m}, N = {}, K = {}",
                w.n, w.k
            )));
        };
        plan.kernel = fused_dec_name(kind, m);
        let smem = decode_smem_bytes(m, w.k_chunks, shape, w.group_k32, false);
        (plan, shape, smem, decode_smem_attr())
    };
    let partials = shape
        .splits
        .checked_mul(m)
        .and_then(|v| v.checked_mul(w.n_pad))
        .ok_or_else(|| CudaError::Shape("split-K partials overflow".into()))?;
    Ok(FusedResolved::Decode(
        FusedCall {
            plan,
            smem: to_u32(smem)?,
            max_smem: to_u32(max_smem)?,
            partials,
            tickets: plan.n_tiles * plan.m_blocks,
            grid_splits: shape.splits,
            block_threads: (32 * shape.nbpb * shape.k_slices) as u32,
            decode: Some(shape),
        },
        shape,
    ))
}

/// Checks that `have` elements hold `rows` x `cols`.
fn check_len(what: &str, have: usize, rows: usize, cols: usize) -> Result<()> {
    let need = rows
        .checked_mul(cols)
        .ok_or_else(|| CudaError::Shape(format!("{what}: {rows} x {cols} overflows")))?;
    if have < need {
        return Err(CudaError::Shape(format!(
            "fused INT4 GEMM: {what} has {have} elements, needs {rows} x {cols} = {need}"
        )));
    }
    Ok(())
}

/// The deferred norm's partial sums hold `m` rows of `parts` (at least one
/// per 16 of the K columns they normalise) and eps is finite and >= 0.
fn check_row_square_sums(norm: &RowSquareSums<'_>, m: usize, k: usize) -> Result<()> {
    if norm.parts < k.div_ceil(16) {
        return Err(CudaError::Shape(format!(
            "deferred norm: {} partial sums per row cannot cover K = {k} (one per 16 columns)",
            norm.parts
        )));
    }
    check_len("row sums of squares", norm.sums.len(), m, norm.parts)?;
    if !(norm.eps.is_finite() && norm.eps >= 0.0) {
        return Err(CudaError::Shape(format!(
            "deferred norm: eps {} is not a finite value >= 0",
            norm.eps
        )));
    }
    Ok(())
}

/// The decode-step GEMM with a prologue folded into its activation load
/// and an epilogue into its output store (M <= [`FUSED_MAX_M`]; see
/// [`fused_supported`]): (RmsNorm, Store) for q|k|v and gate|up, (None,
/// AddToResidual) for o, (Glu, AddToResidual) for down; (None, Store) is
/// the plain [`int4_gemm`] under `GemmPath::Auto`. Stream-K where `Auto`
/// takes it for the RMSNorm prologue, else the split-K decode kernel (same
/// launch shapes as the plain call). Loads the kernel and sizes the
/// workspace at first use like [`int4_gemm`]; afterwards (same shapes) it
/// only enqueues one launch, so the decode step can be captured.
pub fn int4_gemm_fused(
    dev: &Arc<CudaDevice>,
    pro: Int4Prologue<'_>,
    m: usize,
    w: &Int4Weight,
    epi: Int4Epilogue<'_>,
    ws: &mut GemmWorkspace,
) -> Result<GemmPlan> {
    let Some(kind) = fused_kind(&pro, &epi)? else {
        let (Int4Prologue::None(a), Int4Epilogue::Store(mut c)) = (pro, epi) else {
            return Err(CudaError::Unsupported("fused INT4 GEMM: plain pair".into()));
        };
        check_operands(m, w, a.len(), c.len())?;
        ws.prepare(dev, w, m, GemmOptions::default())?;
        return int4_gemm_prepared(dev, &a, m, w, &mut c, ws, GemmOptions::default());
    };
    let k2 =
        w.k.checked_mul(2)
            .ok_or_else(|| CudaError::Shape("2K overflows".into()))?;
    let lda = match &pro {
        Int4Prologue::None(a) => {
            check_len("A", a.len(), m, w.k)?;
            w.k
        }
        Int4Prologue::DeferredNorm { a, norm } => {
            check_len("A", a.len(), m, w.k)?;
            check_row_square_sums(norm, m, w.k)?;
            w.k
        }
        Int4Prologue::Glu(g) => {
            check_len("gate|up rows", g.len(), m, k2)?;
            k2
        }
        Int4Prologue::RmsNorm { x, weight, eps } => {
            check_len("residual rows", x.len(), m, w.k)?;
            check_len("norm weight", weight.len(), 1, w.k)?;
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(CudaError::Shape(format!(
                    "fused INT4 GEMM: RMSNorm eps {eps} is not a finite value >= 0"
                )));
            }
            w.k
        }
    };
    match &epi {
        Int4Epilogue::Store(c) => check_len("C", c.len(), m, w.n)?,
        Int4Epilogue::AddToResidual(r) => check_len("residual", r.len(), m, w.n)?,
        Int4Epilogue::AddToResidualNormed {
            resid,
            weight,
            h,
            sums,
        } => {
            check_len("residual", resid.len(), m, w.n)?;
            check_len("norm weight", weight.len(), 1, w.n)?;
            check_len("normed rows", h.len(), m, w.n)?;
            check_len("row sums of squares", sums.len(), m, row_square_parts(w))?;
        }
    }
    let eps = match &pro {
        Int4Prologue::RmsNorm { eps, .. } => *eps,
        Int4Prologue::DeferredNorm { norm, .. } => norm.eps,
        _ => 0.0,
    };
    let ssq_parts = match (&pro, &epi) {
        (Int4Prologue::DeferredNorm { norm, .. }, _) => to_i32("row sum parts", norm.parts)?,
        (_, Int4Epilogue::AddToResidualNormed { .. }) => {
            to_i32("row sum parts", row_square_parts(w))?
        }
        _ => 0,
    };
    let null: u64 = 0;
    let m_i32 = to_i32("M", m)?;
    let (n_i32, k_i32, n_pad_i32) = (to_i32("N", w.n)?, to_i32("K", w.k)?, to_i32("N", w.n_pad)?);
    let (k_chunks_i32, group_k32_i32, lda_i32) = (
        to_i32("K chunks", w.k_chunks)?,
        to_i32("group size", w.group_k32)?,
        to_i32("row stride", lda)?,
    );
    let (plan, cfg, func, shape) = match resolve_fused(dev, m, w, kind)? {
        FusedResolved::StreamK(sc) => {
            ws.reserve(dev, sc.partials, sc.tickets)?;
            let (module, source) = fused_module();
            let func = dev.function(module, source, sc.plan.kernel, sc.max_smem)?;
            let cfg = LaunchConfig {
                grid_dim: (
                    u32::try_from(sc.shape.blocks)
                        .map_err(|_| CudaError::Shape("stream-K grid".into()))?,
                    1,
                    1,
                ),
                block_dim: (32 * sc.shape.warps as u32, 1, 1),
                shared_mem_bytes: sc.smem,
            };
            (sc.plan, cfg, func, None)
        }
        FusedResolved::Decode(fc, shape) => {
            if fc.grid_splits > 1 {
                ws.reserve(dev, fc.partials, fc.tickets)?;
            }
            ws.check_split_k(fc.grid_splits, fc.partials, fc.tickets, (m, w.n), "reserve")?;
            let (module, source) = fused_module();
            let func = dev.function(module, source, fc.plan.kernel, fc.max_smem)?;
            let cfg = LaunchConfig {
                grid_dim: launch_grid(fc.plan.m_blocks, fc.plan.n_tiles, fc.grid_splits)?,
                block_dim: (fc.block_threads, 1, 1),
                shared_mem_bytes: fc.smem,
            };
            (fc.plan, cfg, func, Some((shape, fc.grid_splits)))
        }
    };
    let name = plan.kernel;
    let mut launch = KernelLaunch::new(dev, &func, name);
    match &pro {
        Int4Prologue::None(a) | Int4Prologue::Glu(a) | Int4Prologue::DeferredNorm { a, .. } => {
            launch.arg(a)
        }
        Int4Prologue::RmsNorm { .. } => launch.arg(&null),
    };
    launch.arg(&w.words).arg(&w.scales).arg(&null);
    match &epi {
        Int4Epilogue::Store(c) => launch.arg(c),
        Int4Epilogue::AddToResidualNormed { h, .. } => launch.arg(h),
        Int4Epilogue::AddToResidual(_) => launch.arg(&null),
    };
    launch
        .arg(&ws.partials)
        .arg(&ws.tickets)
        .arg(&m_i32)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32);
    let (splits_i32, nbpb_i32, k_slices_i32, flags) = match shape {
        Some((s, splits)) => (
            to_i32("splits", splits)?,
            to_i32("column blocks", s.nbpb)?,
            to_i32("K slices", s.k_slices)?,
            decode_flags(m),
        ),
        None => (0, 0, 0, 0),
    };
    if shape.is_some() {
        launch
            .arg(&splits_i32)
            .arg(&nbpb_i32)
            .arg(&k_slices_i32)
            .arg(&flags);
    }
    match (&pro, &epi) {
        (Int4Prologue::RmsNorm { x, weight, .. }, _) => launch.arg(x).arg(weight),
        (_, Int4Epilogue::AddToResidualNormed { weight, .. }) => launch.arg(&null).arg(weight),
        _ => launch.arg(&null).arg(&null),
    };
    if shape.is_some() {
        match &epi {
            Int4Epilogue::AddToResidual(r) | Int4Epilogue::AddToResidualNormed { resid: r, .. } => {
                launch.arg(r)
            }
            Int4Epilogue::Store(_) => launch.arg(&null),
        };
    }
    launch.arg(&lda_i32).arg(&eps);
    if shape.is_some() {
        match (&pro, &epi) {
            (Int4Prologue::DeferredNorm { norm, .. }, _) => launch.arg(&norm.sums),
            (_, Int4Epilogue::AddToResidualNormed { sums, .. }) => launch.arg(sums),
            _ => launch.arg(&null),
        };
        launch.arg(&ssq_parts);
    }
    // SAFETY: argument types and order match W4A16_DEC_FUSED_ENTRY /
    // W4A16_SK_FUSED_ENTRY in kernels/w4a16_gemm.cu. Sizes checked above:
    // A (None, DeferredNorm) M*K, gate|up (Glu) M*2K, x (RmsNorm) M*K and
    // its weight K, the deferred norm's sums M*parts, C (Store) or the
    // residual (AddToResidual) M*N, AddToResidualNormed's residual and h
    // M*N, weight N and sums M*(n_pad/16) (the kernel writes column block
    // nb's partial at nb < n_pad/16); the pointers left null
    // are the ones the pair's kernel never reads; partials and tickets were
    // reserved for this launch shape; the weights cover n_pad x k_chunks
    // (repack) and have no zero points (fused_supported). Every block reads
    // only the weights before griddepcontrol.wait (w4_pdl_enter).
    unsafe { launch.launch_pdl(cfg) }?;
    Ok(plan)
}

/// The gated activation of [`int4_gemm_glu`]'s epilogue (the formulas of
/// `ops::glu`: SiLU `g / (1 + e^-g)`, GELU with the tanh approximation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GluAct {
    Silu,
    GeluTanh,
}

/// Ring depth of the GLU-epilogue kernels at M <= 4
/// (`MARLIN_INT4_GLU_STAGES=8` or `16`; unset: 16, see [`glu_call`]; any
/// other value is reported on stderr and ignored).
static GLU_STAGES: knobs::OneOf = knobs::OneOf::new("MARLIN_INT4_GLU_STAGES", &[8, 16]);

/// Fewest token rows at which [`glu_epilogue_preferred`] takes the GLU
/// epilogue (`MARLIN_INT4_GLU_MIN_M=n`, 1..=8; unset: [`GLU_MIN_M`]).
static GLU_MIN_M_KNOB: knobs::Count = knobs::Count::new("MARLIN_INT4_GLU_MIN_M", 1..=8);

/// Default of `MARLIN_INT4_GLU_MIN_M`: every M the epilogue supports.
/// Change 41 measured the batch-1 step 122 us slower with it (16-stage
/// ring, the paired loop); with the quad loop of change 54 it is faster at
/// batch 1, 2 and 4 by 118-122, 137-142 and 80 us and equal at batch 8
/// (same-call interleaved H100 A/B, docs/CUDA.md change 55).
const GLU_MIN_M: usize = 1;

/// `flags` bit of the GLU-epilogue kernels: GELU (tanh) instead of SiLU
/// (W4_DEC_GLU_GELU in the source).
const DEC_GLU_GELU: i32 = 32;

/// Launch of the GLU-epilogue decode kernel ([`int4_gemm_glu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GluCall {
    kernel: &'static str,
    shape: DecodeShape,
    smem: usize,
    /// The kernel's dynamic shared memory attribute (the limit it was
    /// planned within).
    attr: usize,
}

/// The GLU-epilogue launch of `m` rows of a stacked gate|up weight (gate
/// rows 0..F, up rows F..2F), or the constraint that fails where the kernel
/// cannot run it: M <= 16 (one or two token tiles; M = 9..16 within
/// `smem_limit`, sm_90's wider limit, M <= 8 within [`DEC_SMEM_LIMIT`] as
/// measured in changes 41 and 55), symmetric codes with groups >= 64
/// or per-channel (scales after the mma), F a multiple of 16 (whole n16
/// column blocks of each half), K <= 4096 (the whole K range of the block in
/// one activation tile, no split-K), and a block shape within the
/// shared-memory limit. The SM count only picks the shape, never refuses.
///
/// Shape (the whole-column plan's, change 36, with pairs): a block holds
/// `half` gate column blocks and the `half` up column blocks of the same
/// output columns (nbpb = 2 half, one warp each per K slice), `half` the
/// smallest divisor (<= 8) of the F/16 pairs whose grid fits one block per
/// SM, or, where none does, the largest such divisor (fewest rounds of
/// blocks; [`glu_epilogue_preferred`] does not take those); the most K
/// slices (power of two, <= 16 warps, >= 16 chunks each) that fit. Ring
/// depth as the plain plan: 16 stages at M <= 4 where that fits
/// (`w4a16_dec_m4_glu`), else 8 (`w4a16_dec_m8_glu`, two token tiles
/// `w4a16_dec_m16_glu`); `MARLIN_INT4_GLU_STAGES=8` takes 8 at every M.
fn glu_call(m: usize, w: &Int4Weight, dev: &CudaDevice) -> std::result::Result<GluCall, String> {
    glu_call_for(
        m,
        (w.n, w.k_chunks, w.group_k32),
        w.neg_zero_scales.is_some(),
        (dev.sm_count(), decode_smem_limit(dev)),
        GLU_STAGES.get(),
    )
}

/// [`glu_call`] of a weight given by (n, k_chunks, group_k32), with the
/// ring-depth knob's value `stages_knob`.
fn glu_call_for(
    m: usize,
    (n, kc, group_k32): (usize, usize, usize),
    has_zeros: bool,
    (sm_count, smem_limit): (usize, usize),
    stages_knob: Option<usize>,
) -> std::result::Result<GluCall, String> {
    if !(1..=16).contains(&m) {
        return Err(format!("M = {m} is not in 1..=16 (one or two token tiles)"));
    }
    let limit = if m <= 8 { DEC_SMEM_LIMIT } else { smem_limit };
    if has_zeros {
        return Err("the weight has zero points (symmetric codes only)".into());
    }
    if group_k32 < 2 {
        return Err(format!(
            "groups of {} elements (>= 64 or per-channel only)",
            32 * group_k32
        ));
    }
    if n == 0 || !n.is_multiple_of(32) {
        return Err(format!(
            "N = {n}: F = N/2 is not a multiple of 16 (whole column blocks)"
        ));
    }
    if kc > 64 {
        return Err(format!(
            "{kc} K chunks of 64: K > 4096 (no split-K in the GLU epilogue)"
        ));
    }
    let pairs = n / 32;
    let divisors = (1..=DEC_MAX_WARPS / 2).filter(|&d| pairs.is_multiple_of(d));
    let half = divisors
        .clone()
        .find(|&d| pairs / d <= sm_count)
        .or_else(|| divisors.max())
        .unwrap_or(1);
    let nbpb = 2 * half;
    // MARLIN_INT4_GLU_STAGES=8 (not measured in the decode step): a
    // 79 KiB block at M = 1 instead of 135 would leave room for two of the
    // next GEMM's blocks (down, launched early by PDL) beside it;
    // docs/CUDA.md change 41.
    let deep = stages_knob.is_none_or(|s| s == DEC_STAGES_M4);
    let rings: &[(&'static str, usize)] = if m > 8 {
        &[("w4a16_dec_m16_glu", DEC_STAGES)]
    } else if deep && m <= DEC_M4_MAX_M {
        &[
            ("w4a16_dec_m4_glu", DEC_STAGES_M4),
            ("w4a16_dec_m8_glu", DEC_STAGES),
        ]
    } else {
        &[("w4a16_dec_m8_glu", DEC_STAGES)]
    };
    for &(kernel, stages) in rings {
        let mut k_slices = (DEC_MAX_WARPS / nbpb).min(kc / 16).max(1);
        k_slices = 1 << k_slices.ilog2();
        loop {
            let shape = DecodeShape {
                nbpb,
                k_slices,
                splits: 1,
            };
            let smem = decode_smem_bytes_ring(m, kc, shape, group_k32, false, stages * 32 * 16);
            if smem <= limit {
                return Ok(GluCall {
                    kernel,
                    shape,
                    smem,
                    attr: limit,
                });
            }
            if k_slices == 1 {
                break;
            }
            k_slices /= 2;
        }
    }
    Err(format!(
        "no block of {nbpb} column blocks fits {limit} bytes of shared memory at M = {m}"
    ))
}

/// Whether [`int4_gemm_glu`] can run `m` rows of the stacked gate|up
/// weight `w` on `dev` (see `glu_call`: M <= 8, symmetric groups >= 64 or
/// per-channel, F = N/2 a multiple of 16, K <= 4096; the shape alone
/// decides, not the SM count).
pub fn glu_epilogue_supported(dev: &CudaDevice, m: usize, w: &Int4Weight) -> bool {
    glu_call(m, w, dev).is_ok()
}

/// Whether the decode step should take [`int4_gemm_glu`] instead of the
/// gate|up GEMM + `glu` launch: supported, M >= [`GLU_MIN_M`] (every M
/// since change 55; `MARLIN_INT4_GLU_MIN_M` raises it), and the weight is where
/// the plain GEMM takes the whole-column plan (N >= 14336 at K <= 4096,
/// change 36) with a one-round grid that keeps >= 90% of the SMs busy,
/// i.e. the fused launch streams the weight as the plain one does and only
/// the epilogue differs. Elsewhere (small F, few blocks, several rounds of
/// blocks) it is not measured.
pub fn glu_epilogue_preferred(dev: &CudaDevice, m: usize, w: &Int4Weight) -> bool {
    let sm = dev.sm_count();
    m >= GLU_MIN_M_KNOB.get().unwrap_or(GLU_MIN_M)
        && glu_call(m, w, dev).is_ok_and(|c| glu_fills_one_round(w.n, &c, sm))
}

/// Whether the GLU launch `c` of an N-row stacked weight is the
/// whole-column plan's (N/16 >= [`DEC_WHOLE_COLUMN_MIN_N16`]) with one
/// round of blocks that keeps >= 90% of `sm` SMs busy.
fn glu_fills_one_round(n: usize, c: &GluCall, sm: usize) -> bool {
    let blocks = (n / 16) / c.shape.nbpb;
    n / 16 >= DEC_WHOLE_COLUMN_MIN_N16
        && blocks <= sm
        && blocks * 1000 >= sm * DEC_WHOLE_COLUMN_MIN_FILL
}

/// The gate|up GEMM of a gated MLP with the gated activation in its
/// epilogue: `out (M, F) = act(A · W_gateᵀ) * (A · W_upᵀ)`, W the stacked
/// (2F, K) gate|up weight (gate rows first, as the decoder's fused
/// projection stores it), f32 sums, one f16 rounding. One launch replaces
/// the gate|up GEMM and the `glu` launch of the decode step (the unfused
/// path rounds gate and up to f16 before the activation; this does not).
///
/// A block owns the gate column blocks and the up column blocks of the same
/// output columns (one warp each, the plain decode kernel's main loop); at
/// the end each up warp hands its 16 x M sums to its gate warp through
/// shared memory, which stores the product. No split-K, so nothing else is
/// needed from the workspace (`ws` is taken for its empty split-K operands).
/// Launched with programmatic dependent launch (weights before the wait).
/// Loads its kernel first ([`GemmWorkspace::prepare_glu`]); inside a CUDA
/// graph capture use [`int4_gemm_glu_prepared`]. Errors where
/// [`glu_epilogue_supported`] is false, naming the constraint.
#[allow(clippy::too_many_arguments)]
pub fn int4_gemm_glu(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    m: usize,
    w: &Int4Weight,
    out: &mut CudaViewMut<'_, f16>,
    act: GluAct,
    ws: &mut GemmWorkspace,
) -> Result<GemmPlan> {
    check_glu_operands(m, w, a.len(), out.len())?;
    ws.prepare_glu(dev, w, m)?;
    int4_gemm_glu_prepared(dev, a, m, w, out, act, ws)
}

/// [`int4_gemm_glu`]'s Unsupported error: the failed constraint, named.
fn glu_unsupported(reason: String) -> CudaError {
    CudaError::Unsupported(format!("INT4 GEMM with a GLU epilogue: {reason}"))
}

/// A holds M*K and out M*F halves (F = N/2).
fn check_glu_operands(m: usize, w: &Int4Weight, a_len: usize, out_len: usize) -> Result<()> {
    check_len("A", a_len, m, w.k)?;
    check_len("GLU output", out_len, m, w.n / 2)
}

/// The capture-safe form of [`int4_gemm_glu`]: the same launch with a
/// workspace that [`GemmWorkspace::prepare_glu`] made ready for this
/// (weight shape, M). It only enqueues the launch (no module load, no
/// allocation, no synchronisation), so it can be recorded in a CUDA graph;
/// an unprepared workspace is an error, not a load.
#[allow(clippy::too_many_arguments)]
pub fn int4_gemm_glu_prepared(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    m: usize,
    w: &Int4Weight,
    out: &mut CudaViewMut<'_, f16>,
    act: GluAct,
    ws: &GemmWorkspace,
) -> Result<GemmPlan> {
    glu_launch(dev, a, None, m, w, out, act, ws)
}

/// [`int4_gemm_glu_prepared`] with the deferred norm: `a` holds the
/// weighted, not yet normalised rows of an
/// [`Int4Epilogue::AddToResidualNormed`] GEMM, and gate and up of each row
/// are multiplied by rsqrt(sum(x^2) / K + eps) from `norm` before the
/// activation (docs/CUDA.md change 76). Same kernel and launch.
#[allow(clippy::too_many_arguments)]
pub fn int4_gemm_glu_normed_prepared(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    norm: &RowSquareSums<'_>,
    m: usize,
    w: &Int4Weight,
    out: &mut CudaViewMut<'_, f16>,
    act: GluAct,
    ws: &GemmWorkspace,
) -> Result<GemmPlan> {
    glu_launch(dev, a, Some(norm), m, w, out, act, ws)
}

/// The deferred-norm twin of a GLU-epilogue entry (`_glunrm`: the same
/// body and launch, rows scaled by their inverse norms).
fn glu_normed_kernel(kernel: &'static str) -> &'static str {
    match kernel {
        "w4a16_dec_m4_glu" => "w4a16_dec_m4_glunrm",
        "w4a16_dec_m8_glu" => "w4a16_dec_m8_glunrm",
        "w4a16_dec_m16_glu" => "w4a16_dec_m16_glunrm",
        other => other,
    }
}

/// The GLU-epilogue launch, with the deferred norm where `norm` is given.
#[allow(clippy::too_many_arguments)]
fn glu_launch(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, f16>,
    norm: Option<&RowSquareSums<'_>>,
    m: usize,
    w: &Int4Weight,
    out: &mut CudaViewMut<'_, f16>,
    act: GluAct,
    ws: &GemmWorkspace,
) -> Result<GemmPlan> {
    let call = glu_call(m, w, dev).map_err(glu_unsupported)?;
    check_glu_operands(m, w, a.len(), out.len())?;
    let kernel = match norm {
        Some(norm) => {
            check_row_square_sums(norm, m, w.k)?;
            glu_normed_kernel(call.kernel)
        }
        None => call.kernel,
    };
    ws.check_prepared(Act::F16, kernel)?;
    let shape = call.shape;
    let (module, source) = fused_module();
    let func = dev.function(module, source, kernel, to_u32_smem(call.attr)?)?;
    let n_tiles = (w.n / 16) / shape.nbpb;
    let cfg = LaunchConfig {
        grid_dim: launch_grid(1, n_tiles, 1)?,
        block_dim: (32 * (shape.nbpb * shape.k_slices) as u32, 1, 1),
        shared_mem_bytes: to_u32_smem(call.smem)?,
    };
    let flags = decode_flags(m)
        | match act {
            GluAct::Silu => 0,
            GluAct::GeluTanh => DEC_GLU_GELU,
        };
    let mut launch = KernelLaunch::new(dev, &func, kernel);
    arg_operands(&mut launch, a, w, out, (&ws.partials, &ws.tickets))
        .arg(&to_i32("M", m)?)
        .arg(&to_i32("N", w.n)?)
        .arg(&to_i32("K", w.k)?)
        .arg(&to_i32("N", w.n_pad)?)
        .arg(&to_i32("K chunks", w.k_chunks)?)
        .arg(&to_i32("group size", w.group_k32)?)
        .arg(&1i32)
        .arg(&to_i32("column blocks", shape.nbpb)?)
        .arg(&to_i32("K slices", shape.k_slices)?)
        .arg(&flags);
    let null: u64 = 0;
    match norm {
        Some(n) => launch
            .arg(&n.sums)
            .arg(&to_i32("row sum parts", n.parts)?)
            .arg(&n.eps),
        None => launch.arg(&null).arg(&0i32).arg(&0.0f32),
    };
    // SAFETY: argument types and order match W4A16_DEC_GLU_ENTRY in
    // kernels/w4a16_gemm.cu (the plain decode entry's, then the deferred
    // norm's sums, parts and eps: null where there is none, else M*parts
    // floats, checked above); A holds M*K and out
    // M*F halves (checked above); the weights cover n_pad x k_chunks
    // (repack) and have no zero points (glu_call); one split, so the kernel
    // never touches the partials or tickets; every block reads only the
    // weights before griddepcontrol.wait (w4_pdl_enter).
    unsafe { launch.launch_pdl(cfg) }?;
    Ok(GemmPlan {
        path: GemmPath::Fused,
        kernel,
        m_tiles: 1,
        m_blocks: 1,
        n_tiles,
        splits: shape.k_slices,
    })
}

fn to_u32_smem(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| CudaError::Shape("shared memory size".into()))
}

/// Dequantize W into the workspace's f16 (N, K) scratch.
pub fn dequantize_to_f16(
    dev: &Arc<CudaDevice>,
    w: &Int4Weight,
    dense: &mut CudaSlice<f16>,
) -> Result<()> {
    dequantize_to(dev, w, dense)
}

/// Dequantize W into a dense (N, K) row-major scratch of the activation
/// type (bf16: scales rounded to bf16, then each weight rounded once).
pub fn dequantize_to<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    w: &Int4Weight,
    dense: &mut CudaSlice<T>,
) -> Result<()> {
    let elems =
        w.n.checked_mul(w.k)
            .ok_or_else(|| CudaError::Shape("N*K overflows".into()))?;
    if dense.len() < elems {
        return Err(CudaError::Shape(format!(
            "dense scratch of {} elements for a {}x{} weight",
            dense.len(),
            w.n,
            w.k
        )));
    }
    let (module, source) = gemm_module(T::ACT);
    let kernel = dequant_kernel(T::ACT);
    let func = dev.function(module, source, kernel, 0)?;
    let threads_total = (w.n_pad / 16) * w.k_chunks * 32;
    let blocks = u32::try_from(threads_total.div_ceil(256))
        .map_err(|_| CudaError::Shape("dequant grid too large".into()))?;
    let null_zeros: u64 = 0;
    let (n_i32, k_i32, n_pad_i32, k_chunks_i32, group_k32_i32) = (
        w.n as i32,
        w.k as i32,
        w.n_pad as i32,
        w.k_chunks as i32,
        w.group_k32 as i32,
    );
    let stream = dev.stream();
    let mut launch = stream.launch_builder(&func);
    launch.arg(&w.words).arg(&w.scales);
    match &w.neg_zero_scales {
        Some(z) => launch.arg(z),
        None => launch.arg(&null_zeros),
    };
    launch
        .arg(dense)
        .arg(&n_i32)
        .arg(&k_i32)
        .arg(&n_pad_i32)
        .arg(&k_chunks_i32)
        .arg(&group_k32_i32);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match w4_dequant_f16 / w4_dequant_bf16 (one source:
    // W4_DEQUANT_NAME) and the element type of `dense` is the module's
    // activation type; dense holds >= N*K elements; the packed buffers
    // cover n_pad/16 * k_chunks * 32 lanes.
    unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {kernel}"), e))?;
    Ok(())
}

/// C (M, N) = A (M, K) · Wᵀ with W a dequantized (N, K) row-major weight,
/// all of the activation type (f16 or bf16), through cuBLAS GemmEx with
/// fp32 compute: the large-M path of every weight format.
pub(crate) fn gemm_dense_weight<T: ActDtype, A: DevicePtr<T>, C: DevicePtrMut<T>>(
    dev: &CudaDevice,
    dense: &CudaSlice<T>,
    a: &A,
    c: &mut C,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let to_i32 =
        |v: usize| i32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} exceeds i32")));
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: to_i32(n)?,
        n: to_i32(m)?,
        k: to_i32(k)?,
        alpha: T::ONE,
        lda: to_i32(k)?,
        ldb: to_i32(k)?,
        beta: T::ZERO,
        ldc: to_i32(n)?,
    };
    dev.with_blas(|blas| {
        // SAFETY: dense is (N, K) row-major = K x N column-major (op T); A is
        // (M, K) row-major = K x M column-major; C is (M, N) row-major = N x M
        // column-major; sizes were checked by the caller.
        unsafe { T::blas_gemm(blas, cfg, dense, a, c) }.map_err(|e| CudaError::Cublas {
            context: format!("GemmEx {} M={m} N={n} K={k}", T::ACT.name()),
            message: format!("{e:?}"),
        })
    })
}

/// The dense scratch of activation type `T` in `ws`.
fn dense_scratch<T: ActDtype>(ws: &mut GemmWorkspace) -> Option<&mut CudaSlice<T>> {
    // Two typed buffers: the one of T::ACT, as CudaSlice<T> (the downcast
    // cannot fail, it only spares a transmute).
    let any: &mut dyn std::any::Any = match T::ACT {
        Act::F16 => ws.dense.as_mut()?,
        Act::Bf16 => ws.dense_bf16.as_mut()?,
    };
    any.downcast_mut::<CudaSlice<T>>()
}

fn dequant_cublas<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    a: &CudaView<'_, T>,
    m: usize,
    w: &Int4Weight,
    c: &mut CudaViewMut<'_, T>,
    ws: &mut GemmWorkspace,
) -> Result<GemmPlan> {
    ws.check_prepared(T::ACT, dequant_kernel(T::ACT))?;
    let elems = w.n * w.k;
    let dense = match dense_scratch::<T>(ws) {
        Some(d) if d.len() >= elems => d,
        _ => {
            return Err(CudaError::Shape(format!(
                "dense {} scratch for a {}x{} weight missing: call GemmWorkspace::prepare",
                T::ACT.name(),
                w.n,
                w.k
            )))
        }
    };
    dequantize_to(dev, w, dense)?;
    gemm_dense_weight(dev, dense, a, c, (m, w.n, w.k))?;
    Ok(dequant_plan())
}

#[cfg(test)]
mod tests {
    use super::{
        decode_launch_for, decode_ring_bytes, decode_smem_attr, decode_smem_bytes,
        decode_smem_bytes_ring, decode_smem_limit_for, glu_call_for, shared_a_plan,
        shared_a_variant, short_ring_for, sk_smem_bytes, sk_smem_limits, stream_k_launch_for,
        variant, DecodeShape, StreamKShape, DEC_MAX_M, DEC_MAX_WARPS, DEC_SMEM_LIMIT,
        DEC_SMEM_LIMIT_WIDE, DEC_STAGES, MIN_CHUNKS_PER_SPLIT, SA_MIN_CHUNKS, SA_WARPS,
        SHORT_RING_LONG, SHORT_RING_SHORT, SHORT_RING_WIDE, SK_MAX_BLOCK_WARPS, SK_MAX_M,
        SK_MIN_UNITS_PER_WARP,
    };

    /// Every plain decode kernel the fused kernels' weights (symmetric,
    /// groups >= 64) take at M <= 16 has deferred-norm twins, and those
    /// and the GLU entries' twins are entries of the fused module's source
    /// (a renamed kernel that is not compiled would fail only at load).
    #[test]
    fn deferred_norm_kernels_exist_for_every_plain_decode_kernel() {
        use super::{
            decode_kernel_name, decode_token_tiles, deferred_norm_kernel, glu_normed_kernel,
            FusedKind, DEC_M4_MAX_M, FUSED_MAX_M, SOURCE,
        };
        let entry = |name: &str, mac: &str| SOURCE.contains(&format!("{mac}({name},"));
        for m in 1..=FUSED_MAX_M {
            let plain = [
                decode_kernel_name(m, decode_token_tiles(m), false, false),
                // The 8-stage ring of short_ring_for (RH = 1 serves M <= 8).
                decode_kernel_name(DEC_M4_MAX_M + 1, 1, false, false),
            ];
            for p in plain {
                for kind in [FusedKind::Nrm, FusedKind::ResNrm] {
                    let k = deferred_norm_kernel(p, kind)
                        .unwrap_or_else(|| panic!("M = {m}: no {kind:?} twin of {p}"));
                    assert!(entry(k, "W4A16_DEC_FUSED_ENTRY"), "{k} is not compiled");
                }
            }
        }
        assert_eq!(deferred_norm_kernel("w4a16_dec_m4z", FusedKind::Nrm), None);
        for glu in ["w4a16_dec_m4_glu", "w4a16_dec_m8_glu", "w4a16_dec_m16_glu"] {
            assert!(entry(glu, "W4A16_DEC_GLU_ENTRY"), "{glu}");
            let twin = glu_normed_kernel(glu);
            assert!(twin != glu && entry(twin, "W4A16_DEC_GLU_ENTRY"), "{twin}");
        }
    }

    /// Probe values parse in any order into canonical module names and
    /// prefixes (the ones `scripts/gpu_prewarm_kernels.py` builds); unknown
    /// parts, `skip-loop` and the two dequantisation forms together are not
    /// module probes.
    #[test]
    fn kernel_probe_names_are_canonical() {
        use super::{parse_kernel_probe, probe_module_parts};
        let parts = |v: &str| parse_kernel_probe(v).map(|on| probe_module_parts(&on));
        assert_eq!(
            parts("raw").unwrap(),
            (
                "_probe_raw".to_string(),
                "#define W4_DQ_PROBE 2\n".to_string()
            )
        );
        assert_eq!(
            parts("no-store+raw+no-act").unwrap(),
            (
                "_probe_raw_no_act_no_store".to_string(),
                "#define W4_DQ_PROBE 2\n#define W4_PROBE_NO_ACT 1\n#define W4_PROBE_NO_STORE 1\n"
                    .to_string()
            )
        );
        assert_eq!(parts("no-offset").unwrap().0, "_probe_no_offset");
        assert_eq!(parts("no-scale").unwrap().0, "_probe_no_scale");
        assert!(parse_kernel_probe("skip-loop").is_none());
        assert!(parse_kernel_probe("raw+bogus").is_none());
        assert!(parse_kernel_probe("raw+no-offset").is_none());
        assert!(parse_kernel_probe("").is_none());
    }

    /// The shared launch-grid check: y and z at most 65535, x below 2^31.
    #[test]
    fn launch_grid_enforces_cuda_limits() {
        use super::launch_grid;
        assert_eq!(launch_grid(3, 65_535, 65_535).unwrap(), (3, 65_535, 65_535));
        assert_eq!(
            launch_grid(i32::MAX as usize, 1, 1).unwrap(),
            (i32::MAX as u32, 1, 1)
        );
        assert!(launch_grid(1, 65_536, 1).is_err());
        assert!(launch_grid(1, 1, 65_536).is_err());
        assert!(launch_grid(i32::MAX as usize + 1, 1, 1).is_err());
    }

    /// The GLU-epilogue plans (`glu_call_for`): the Llama-3.1-8B gate|up
    /// shape H100 runs (14 column blocks x 1 K slice, entry by M and ring
    /// knob); every supported shape is launchable (shared memory within the
    /// limit, <= 16 warps, pairs divided evenly) on 132, 108 and 16 SMs,
    /// with a one-round grid where a divisor <= 8 of the pairs gives one;
    /// refusals name the constraint.
    #[test]
    fn glu_epilogue_plans_fit() {
        // Llama-3.1-8B gate|up (28672x4096, g128) on 132 SMs: 7 pairs of
        // column blocks per block, 128 blocks, one K slice; the 16-stage
        // ring at M = 1, 2, the 8-stage one at M = 3..8 (and with the knob).
        let llama = (28672, 64, 4);
        // M = 9..16 (two token tiles, change 65): the same shape within
        // sm_90's wider limit (9 rows also fit the portable one).
        for m in 1..=16 {
            for knob in [None, Some(8), Some(16)] {
                let c = glu_call_for(m, llama, false, (132, DEC_SMEM_LIMIT_WIDE), knob)
                    .expect("Llama gate|up");
                let what = format!("M={m} knob={knob:?} {c:?}");
                assert_eq!(
                    (c.shape.nbpb, c.shape.k_slices, c.shape.splits),
                    (14, 1, 1),
                    "{what}"
                );
                let want = match (m, knob) {
                    (9.., _) => "w4a16_dec_m16_glu",
                    (1..=2, None | Some(16)) => "w4a16_dec_m4_glu",
                    _ => "w4a16_dec_m8_glu",
                };
                assert_eq!(c.kernel, want, "{what}");
                let limit = if m <= 8 {
                    DEC_SMEM_LIMIT
                } else {
                    DEC_SMEM_LIMIT_WIDE
                };
                assert!(c.smem <= c.attr && c.attr == limit, "{what}");
                if m > 8 {
                    match glu_call_for(m, llama, false, (132, DEC_SMEM_LIMIT), knob) {
                        Ok(p) => assert!(m == 9 && p.smem <= DEC_SMEM_LIMIT, "{what}: {p:?}"),
                        Err(e) => assert!(m > 9 && e.contains("shared memory"), "{what}: {e}"),
                    }
                }
            }
        }
        // Every shape the GPU tests (tests/gpu_int4_glu.rs, gpu_decoder's
        // Llama-width MLP) assert supported, and the K-slice cases where the
        // pairs are few, on any SM count: every plan fits and divides; one
        // round of blocks wherever a divisor <= 8 of the pairs allows it,
        // else the largest divisor (fewest rounds).
        for sm in [132, 108, 16, 1, 0] {
            for &(n, kc, g) in &[
                llama,
                (28672, 16, 4),
                (28672, 4, 4),
                (224, 16, 4),
                (96, 16, 2),
                (416, 32, 4),
                (8192, 64, 4),
                (512, 8, 16),
                (64, 4, 4),
            ] {
                let pairs = n / 32;
                let one_round =
                    (1..=DEC_MAX_WARPS / 2).any(|d| pairs.is_multiple_of(d) && pairs / d <= sm);
                for m in 1..=16 {
                    for knob in [None, Some(8)] {
                        let c = glu_call_for(m, (n, kc, g), false, (sm, DEC_SMEM_LIMIT_WIDE), knob)
                            .unwrap_or_else(|e| panic!("M={m} n={n} kc={kc} sm={sm}: {e}"));
                        let what = format!("M={m} n={n} kc={kc} sm={sm} {c:?}");
                        let limit = if m <= 8 {
                            DEC_SMEM_LIMIT
                        } else {
                            DEC_SMEM_LIMIT_WIDE
                        };
                        assert!(
                            c.smem <= limit && c.attr == limit && c.shape.nbpb.is_multiple_of(2),
                            "{what}"
                        );
                        assert_eq!(c.shape.splits, 1, "{what}");
                        assert!(c.shape.nbpb * c.shape.k_slices <= DEC_MAX_WARPS, "{what}");
                        assert!(pairs.is_multiple_of(c.shape.nbpb / 2), "{what}");
                        let blocks = (n / 16) / c.shape.nbpb;
                        if one_round {
                            assert!(blocks <= sm, "{what}");
                        } else {
                            let widest = (1..=DEC_MAX_WARPS / 2)
                                .filter(|&d| pairs.is_multiple_of(d))
                                .max();
                            assert_eq!(Some(c.shape.nbpb / 2), widest, "{what}");
                        }
                    }
                }
            }
        }
        // The Llama gate|up on 108 SMs (A100): no divisor <= 8 of 896 pairs
        // gives <= 108 blocks, so 8 pairs per block, 112 blocks (two rounds).
        let c =
            glu_call_for(8, llama, false, (108, DEC_SMEM_LIMIT), None).expect("Llama on 108 SMs");
        assert_eq!((c.shape.nbpb, c.shape.k_slices), (16, 1));
        // Refused, naming the constraint: M = 0 or > 16, zero points, groups
        // of 32, F not whole column blocks, K > 4096.
        for (m, shape, zeros, want) in [
            (0, llama, false, "M = 0"),
            (17, llama, false, "M = 17"),
            (1, llama, true, "zero points"),
            (1, (28672, 64, 1), false, "groups of 32"),
            (1, (28688, 64, 4), false, "multiple of 16"),
            (1, (28672, 65, 4), false, "K > 4096"),
        ] {
            let e =
                glu_call_for(m, shape, zeros, (132, DEC_SMEM_LIMIT_WIDE), None).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// The residency model of docs/CUDA.md change 43: Llama-3.1-8B's decode
    /// GEMMs at M = 1 on 132 SMs, which blocks of the next GEMM fit beside
    /// the previous one's (228 KiB of shared memory per SM, 1 KiB reserved
    /// per block), with and without the 8-stage ring of `SHORT_RING`.
    #[test]
    fn short_ring_classes_and_residency() {
        let sm_smem = 228 * 1024;
        let call = |n: usize, k: usize| {
            let (n_pad, kc) = (n.div_ceil(64) * 64, k.div_ceil(64));
            let (_, shape) =
                decode_launch_for(1, (n_pad, kc, 4), false, 132, None, DEC_SMEM_LIMIT).unwrap();
            (n_pad / 16, kc, shape)
        };
        let block = |(_, kc, shape): (usize, usize, DecodeShape), short: bool| {
            let ring = if short {
                DEC_STAGES * 32 * 16
            } else {
                decode_ring_bytes(1)
            };
            decode_smem_bytes_ring(1, kc, shape, 4, false, ring) + 1024
        };
        let (qkv, o, gate_up, down) = (
            call(6144, 4096),
            call(4096, 4096),
            call(28672, 4096),
            call(4096, 14336),
        );
        assert_eq!(
            gate_up.2,
            DecodeShape {
                nbpb: 14,
                k_slices: 1,
                splits: 1
            }
        );
        let four_slices = DecodeShape {
            nbpb: 1,
            k_slices: 4,
            splits: 1,
        };
        for small in [qkv, o] {
            assert_eq!(small.2, four_slices);
        }
        // Change 50 (e): down takes 8 K slices now; change 43's residency
        // model below is of the plans it measured (4 K slices).
        assert_eq!(
            down.2,
            DecodeShape {
                nbpb: 1,
                k_slices: 8,
                splits: 1
            }
        );
        let down = (down.0, down.1, four_slices);
        let class = |(n16, kc, shape): (usize, usize, DecodeShape)| {
            [SHORT_RING_WIDE, SHORT_RING_LONG, SHORT_RING_SHORT]
                .into_iter()
                .filter(|&bit| short_ring_for(bit, 1, n16, kc, shape))
                .collect::<Vec<_>>()
        };
        assert_eq!(class(gate_up), [SHORT_RING_WIDE]);
        assert_eq!(class(down), [SHORT_RING_LONG]);
        assert_eq!(class(qkv), [SHORT_RING_SHORT]);
        assert_eq!(class(o), [SHORT_RING_SHORT]);
        assert!(!short_ring_for(7, 5, down.0, down.1, down.2));
        assert!(!short_ring_for(0, 1, down.0, down.1, down.2));
        // gate|up -> down: one 16-stage down block fits beside the 16-stage
        // gate|up block, two beside the 8-stage one.
        assert!(block(gate_up, false) + 2 * block(down, false) > sm_smem);
        assert!(block(gate_up, false) + block(down, false) <= sm_smem);
        assert!(block(gate_up, true) + 2 * block(down, false) <= sm_smem);
        // down -> q|k|v: two q|k|v blocks beside two 16-stage down blocks,
        // three (the 384-block grid in one wave) beside two 8-stage ones.
        assert!(2 * block(down, false) + 3 * block(qkv, false) > sm_smem);
        assert!(2 * block(down, false) + 2 * block(qkv, false) <= sm_smem);
        assert!(2 * block(down, true) + 3 * block(qkv, false) <= sm_smem);
        // q|k|v -> attention -> o: on an SM that holds an attention block
        // (28 KiB of static shared memory, change 42) one o block fits beside
        // three q|k|v blocks, two with o's 8-stage ring.
        let attention = 29 * 1024;
        assert!(3 * block(qkv, false) + attention + 2 * block(o, false) > sm_smem);
        assert!(3 * block(qkv, false) + attention + block(o, false) <= sm_smem);
        assert!(3 * block(qkv, false) + attention + 2 * block(o, true) <= sm_smem);
        // o -> gate|up fits already.
        assert!(2 * block(o, false) + block(gate_up, false) <= sm_smem);
    }

    /// Every decode plan (M = 1..32; benchmark, Llama-8B decode and odd
    /// shapes; groups of 32, 128 and per channel; with and without zero
    /// points) is launchable: shared memory within the attribute (which fits
    /// sm_80 and sm_90 blocks), at most 16 warps, every warp >= 4 chunks,
    /// grid within CUDA's limits; forced factors are honoured or refused.
    #[test]
    fn decode_plans_are_launchable() {
        assert!(decode_smem_attr() <= 163 * 1024);
        assert_eq!(decode_smem_limit_for((9, 0), true), DEC_SMEM_LIMIT_WIDE);
        assert_eq!(decode_smem_limit_for((9, 0), false), DEC_SMEM_LIMIT);
        assert_eq!(decode_smem_limit_for((8, 0), true), DEC_SMEM_LIMIT);
        assert_eq!(decode_smem_limit_for((8, 9), true), DEC_SMEM_LIMIT);
        let shapes: [(usize, usize); 9] = [
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (28672, 8192),
            (6144, 4096),
            (28672, 4096),
            (128256, 4096),
            (200, 1000),
            (64, 256),
        ];
        for &(n, k) in &shapes {
            let n_pad = n.div_ceil(64) * 64;
            let kc = k.div_ceil(64);
            for group_k32 in [1, 4, 2 * kc] {
                for (has_zeros, limit) in [false, true]
                    .into_iter()
                    .flat_map(|z| [(z, DEC_SMEM_LIMIT), (z, DEC_SMEM_LIMIT_WIDE)])
                {
                    for m in 1..=DEC_MAX_M {
                        let (p, shape) = decode_launch_for(
                            m,
                            (n_pad, kc, group_k32),
                            has_zeros,
                            132,
                            None,
                            limit,
                        )
                        .unwrap_or_else(|| panic!("no plan for M={m} {n}x{k} g32={group_k32}"));
                        let smem = decode_smem_bytes(m, kc, shape, group_k32, has_zeros);
                        let what = format!(
                            "M={m} {n}x{k} g32={group_k32} z={has_zeros} {shape:?} {smem} B \
                             (limit {limit})"
                        );
                        assert!(smem <= limit, "{what}");
                        assert!(shape.nbpb * shape.k_slices <= DEC_MAX_WARPS, "{what}");
                        assert!(
                            kc / (shape.splits * shape.k_slices) >= MIN_CHUNKS_PER_SPLIT.min(kc),
                            "{what}"
                        );
                        assert!(
                            p.n_tiles * shape.nbpb * 16 == n_pad && shape.splits <= 65_535,
                            "{what}"
                        );
                        assert_eq!(p.splits, shape.splits * shape.k_slices, "{what}");
                    }
                }
            }
        }
        // A forced factor is the number of K partitions (powers of two are
        // met exactly); one beyond the activation tile is refused.
        let forced =
            |m, p| decode_launch_for(m, (4096, 64, 4), false, 132, Some(p), DEC_SMEM_LIMIT_WIDE);
        for p in [1, 2, 4, 8, 16] {
            let (plan, shape) = forced(1, p).expect("M = 1 takes any factor");
            assert_eq!(plan.splits, p);
            assert_eq!(
                shape,
                DecodeShape {
                    nbpb: 1,
                    k_slices: p,
                    splits: 1
                }
            );
        }
        assert!(
            forced(16, 1).is_none(),
            "16 rows x 64 chunks exceed the tile budget"
        );
        // The plans measured in docs/CUDA.md (change 19), H100 (132 SMs),
        // g128: (column blocks, K slices, splits).
        let auto_within = |m, n: usize, k: usize, limit| {
            let shape =
                decode_launch_for(m, (n.div_ceil(64) * 64, k / 64, 4), false, 132, None, limit)
                    .expect("plan")
                    .1;
            (shape.nbpb, shape.k_slices, shape.splits)
        };
        let auto = |m, n, k| auto_within(m, n, k, DEC_SMEM_LIMIT);
        assert_eq!(auto(1, 4096, 4096), (1, 4, 1));
        // Change 50 (e): more K slices first where they keep >= 24 chunks
        // per warp and one wave (224 chunks: 8 slices); the rule's plan
        // where the deeper one needs two waves (M = 2: 8 slices and a
        // two-row tile leave one block per SM).
        assert_eq!(auto(1, 4096, 14336), (1, 8, 1));
        assert_eq!(auto(1, 4096, 8192), (1, 4, 1));
        assert_eq!(auto(2, 4096, 14336), (1, 4, 1));
        // With zero points: groups of 64 take 8 slices, groups of 32 (twice
        // the scale rows, in two tiles) leave one block per SM at 8 slices.
        let zeros = |group_k32| {
            let s = decode_launch_for(1, (4096, 224, group_k32), true, 132, None, DEC_SMEM_LIMIT)
                .expect("plan")
                .1;
            (s.nbpb, s.k_slices, s.splits)
        };
        assert_eq!(zeros(2), (1, 8, 1));
        assert_eq!(zeros(1), (1, 4, 1));
        assert_eq!(auto(1, 6144, 4096), (1, 4, 1));
        // Whole-column plans at K <= 4096, N >= 14336, M <= 8 (change 36):
        // one block per SM, no split-K (fewer K slices where the shared
        // memory needs it); M = 3..4 at 28672 does not fit (stream-K).
        assert_eq!(auto(1, 14336, 4096), (7, 2, 1));
        assert_eq!(auto(4, 14336, 4096), (7, 1, 1));
        assert_eq!(auto(8, 14336, 4096), (7, 2, 1));
        assert_eq!(auto(1, 28672, 4096), (14, 1, 1));
        assert_eq!(auto(2, 28672, 4096), (14, 1, 1));
        assert_eq!(auto(8, 28672, 4096), (14, 1, 1));
        assert_eq!(auto(4, 28672, 4096), (4, 1, 4));
        assert_eq!(auto(16, 28672, 4096), (4, 1, 4));
        assert_eq!(auto(1, 28672, 8192), (4, 1, 8));
        assert_eq!(auto(1, 128256, 4096), (4, 1, 4));
        assert_eq!(auto(16, 4096, 4096), (4, 1, 4));
        // Two waves of K-slice blocks: the split-K plan instead.
        assert_eq!(auto(4, 4096, 14336), (4, 1, 8));
        // Session 5 (change 30): M = 5..8 at small N 2 column blocks x 4 K
        // slices where one wave fits; M = 9..16 at K >= 8192 16 column
        // blocks (4 splits where the tile fits, else 8).
        assert_eq!(auto(8, 4096, 4096), (2, 4, 1));
        assert_eq!(auto(8, 6144, 4096), (2, 4, 1));
        assert_eq!(auto(8, 4096, 14336), (4, 1, 8));
        assert_eq!(auto(16, 4096, 14336), (16, 1, 8));
        assert_eq!(auto(16, 28672, 8192), (16, 1, 4));
        assert_eq!(auto(12, 28672, 8192), (16, 1, 4));
        assert_eq!(auto(16, 6144, 4096), (4, 1, 4));
        // sm_90's plain calls (change 48): the whole-column plan where
        // session 6's has no shape (M = 3, 4 of 28672x4096, M = 9..16, M =
        // 5..8 at K = 8192; two K splits at M = 9..16 there), not at M <= 4
        // with K > 4096; 2 column blocks x 4 K slices at M = 3, 4 of
        // 4096x14336.
        let wide = |m, n, k| auto_within(m, n, k, DEC_SMEM_LIMIT_WIDE);
        assert_eq!(wide(4, 14336, 4096), (7, 1, 1));
        assert_eq!(wide(16, 14336, 4096), (7, 2, 1));
        assert_eq!(wide(4, 28672, 4096), (14, 1, 1));
        assert_eq!(wide(16, 28672, 4096), (14, 1, 1));
        for m in 5..=8 {
            assert_eq!(wide(m, 28672, 8192), (14, 1, 1), "M = {m}");
        }
        assert_eq!(wide(9, 28672, 8192), (14, 1, 2));
        assert_eq!(wide(16, 28672, 8192), (14, 1, 2));
        assert_eq!(wide(3, 4096, 14336), (2, 4, 1));
        assert_eq!(wide(4, 4096, 14336), (2, 4, 1));
        // Change 64: M = 9..16 at K <= 4096 below the whole-column N: 4 K
        // slices, no split-K, the fewest column blocks giving one block per
        // SM.
        for m in 9..=16 {
            assert_eq!(wide(m, 4096, 4096), (2, 4, 1), "M = {m}");
            assert_eq!(wide(m, 6144, 4096), (4, 4, 1), "M = {m}");
        }
        assert_eq!(wide(16, 4096, 2048), (2, 4, 1));
        assert_eq!(auto(16, 6144, 4096), (4, 1, 4));
        // Three K splits where two splits' scale rows do not fit (change
        // 61): groups of 32 (both zero modes) and groups of 64 with zero
        // points at 28672x8192 M = 16; groups of 128 and M = 9 keep two.
        let grouped = |m, group_k32, zeros| {
            let s = decode_launch_for(
                m,
                (28672, 128, group_k32),
                zeros,
                132,
                None,
                DEC_SMEM_LIMIT_WIDE,
            )
            .expect("plan")
            .1;
            (s.nbpb, s.k_slices, s.splits)
        };
        assert_eq!(grouped(16, 1, false), (14, 1, 3));
        assert_eq!(grouped(16, 1, true), (14, 1, 3));
        assert_eq!(grouped(16, 2, true), (14, 1, 3));
        assert_eq!(grouped(16, 4, true), (14, 1, 2));
        assert_eq!(grouped(9, 1, false), (14, 1, 2));
        // Everything else keeps its plan.
        for m in 1..=DEC_MAX_M {
            for (n, k) in [(4096, 4096), (6144, 4096), (4096, 14336), (128256, 4096)] {
                if (n, k) == (4096, 14336) && (3..=4).contains(&m) {
                    continue;
                }
                // (Change 64 above.)
                if k == 4096 && n <= 6144 && (9..=16).contains(&m) {
                    continue;
                }
                assert_eq!(wide(m, n, k), auto(m, n, k), "M = {m} {n}x{k}");
            }
        }
        for m in 1..=4 {
            assert_eq!(wide(m, 28672, 8192), auto(m, 28672, 8192), "M = {m}");
        }
        for m in 1..=8 {
            assert_eq!(wide(m, 14336, 4096), auto(m, 14336, 4096), "M = {m}");
            if !(3..=4).contains(&m) {
                assert_eq!(wide(m, 28672, 4096), auto(m, 28672, 4096), "M = {m}");
            }
        }
        // The 16-stage variants at M <= 4.
        let kernel = |m| {
            decode_launch_for(m, (4096, 64, 4), false, 132, None, DEC_SMEM_LIMIT)
                .expect("plan")
                .0
                .kernel
        };
        assert_eq!(kernel(4), "w4a16_dec_m4");
        assert_eq!(kernel(5), "w4a16_dec_m8");
    }

    /// Every stream-K plan fits the block and SM shared memory of sm_90 and
    /// sm_80, has at most 16 warps per block, at least 4 units per warp when
    /// the weight has that many, and no warp without a unit (the kernel's
    /// reduction counts on it); the Llama-8B and benchmark shapes at M = 1
    /// get one block of 16 warps per SM; A too large for shared memory is
    /// refused.
    #[test]
    fn stream_k_plans_fit() {
        let shapes: [(usize, usize); 10] = [
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (28672, 8192),
            (6144, 4096),
            (28672, 4096),
            (128256, 4096),
            (200, 1000),
            (64, 256),
            (8192, 128),
        ];
        for cc in [(9, 0), (8, 0), (8, 6)] {
            let (block_limit, sm_limit) = sk_smem_limits(cc);
            for &(n, k) in &shapes {
                let n_pad = n.div_ceil(64) * 64;
                let kc = k.div_ceil(64);
                let units = n_pad / 16 * kc;
                for has_zeros in [false, true] {
                    for m in 1..=SK_MAX_M {
                        for warps_per_sm in [None, Some(1), Some(3), Some(8), Some(32)] {
                            let Some((p, shape)) = stream_k_launch_for(
                                m,
                                (n_pad, kc, 4),
                                has_zeros,
                                132,
                                cc,
                                warps_per_sm,
                            ) else {
                                continue;
                            };
                            let smem = sk_smem_bytes(m, kc, shape.warps, has_zeros);
                            let what = format!("{cc:?} M={m} {n}x{k} z={has_zeros} {shape:?}");
                            assert!(smem <= block_limit, "{what}");
                            let per_sm = shape.blocks.div_ceil(132);
                            assert!(
                                per_sm * (smem + 1024) <= sm_limit || shape.blocks <= 132,
                                "{what}"
                            );
                            assert!(
                                shape.warps >= 1 && shape.warps <= SK_MAX_BLOCK_WARPS,
                                "{what}"
                            );
                            let total = shape.blocks * shape.warps;
                            assert!(total <= units, "{what}");
                            assert!(
                                units / total >= SK_MIN_UNITS_PER_WARP || total == 1,
                                "{what}"
                            );
                            assert_eq!(p.n_tiles, shape.blocks, "{what}");
                        }
                    }
                }
            }
        }
        let sk = |m, n: usize, k: usize| {
            stream_k_launch_for(
                m,
                (n.div_ceil(64) * 64, k / 64, 4),
                false,
                132,
                (9, 0),
                None,
            )
            .map(|(_, s)| s)
        };
        let one_block = StreamKShape {
            blocks: 132,
            warps: 16,
        };
        for (n, k) in [
            (4096, 4096),
            (6144, 4096),
            (28672, 4096),
            (4096, 14336),
            (128256, 4096),
            (28672, 8192),
        ] {
            assert_eq!(sk(1, n, k), Some(one_block), "{n}x{k}");
        }
        // 8 rows of K = 8192 (131 KB) fit with 16 rings; 16 rows do not.
        assert_eq!(sk(8, 28672, 8192), Some(one_block));
        assert_eq!(sk(16, 28672, 8192), None);
        assert_eq!(sk(16, 4096, 4096), Some(one_block));
        assert_eq!(sk(17, 4096, 4096), None);
        // Small weights: fewer warps, 4 units each.
        assert_eq!(
            sk(1, 8192, 128),
            Some(StreamKShape {
                blocks: 16,
                warps: 16
            })
        );
    }

    /// The shared-activation kernel: every variant's ring fits one block
    /// in an sm_90 SM (227 KiB of dynamic shared memory per block), its
    /// blocks cover every row and column, and the automatic splits keep the
    /// grid within about one block per SM with at least SA_MIN_CHUNKS
    /// chunks per split.
    #[test]
    fn shared_a_plans_cover_the_output_and_fit() {
        for m in [1, 17, 32, 33, 64, 100] {
            for nbw in [1, 2] {
                for z in [false, true] {
                    let v = shared_a_variant(m, nbw, z);
                    assert!(v.smem_bytes() as usize <= 227 * 1024, "{v:?}");
                    assert_eq!(v.name.ends_with("_z"), z, "{v:?}");
                    assert!(v.name.contains(&format!("_n{nbw}")), "{v:?}");
                }
                for (n_pad, k_chunks) in [(4096, 64), (28672, 64), (4096, 224), (384, 16)] {
                    let (v, p) = shared_a_plan(m, n_pad, k_chunks, false, nbw, 132, None);
                    assert!(p.m_blocks * 16 * v.m_tiles >= m, "{p:?}");
                    assert!(p.n_tiles * 16 * SA_WARPS * v.nb_per_warp >= n_pad, "{p:?}");
                    assert!(
                        p.splits >= 1 && p.splits <= (k_chunks / SA_MIN_CHUNKS).max(1),
                        "{p:?}"
                    );
                    let blocks = p.m_blocks * p.n_tiles;
                    assert!(p.splits == 1 || blocks * p.splits <= 132, "{p:?}");
                    let (_, forced) = shared_a_plan(m, n_pad, k_chunks, false, nbw, 132, Some(7));
                    assert_eq!(forced.splits, 7);
                }
            }
        }
    }

    /// Resident blocks per SM promised by each variant fit in an sm_90 SM's
    /// 228 KiB of shared memory (1 KiB per block is reserved by the driver).
    #[test]
    fn variants_fit_shared_memory() {
        for m in [1, 8, 9, 16, 17, 32, 33, 1024] {
            let v = variant(m);
            let per_block = v.smem_bytes() as usize + 1024;
            assert!(v.blocks_per_sm * per_block <= 228 * 1024, "{v:?}");
            assert!(m <= 16 * v.m_tiles || v.m_tiles == 4, "{v:?}");
        }
    }
}
