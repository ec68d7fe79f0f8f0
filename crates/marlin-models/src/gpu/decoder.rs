//! The one GPU decoder: a stack of pre-norm attention + gated-MLP blocks
//! parameterised by a [`DecoderSpec`] (optional QK-norm, post-norms, sliding
//! windows, embedding scale, GeGLU or SwiGLU, logit soft-capping).
//!
//! A forward pass runs `m` rows. Each row carries its token id, sequence and
//! position in device buffers ([`Scratch::ids`], `row_seq`, `row_pos`), so
//! the same code runs a prefill chunk of one sequence (rows = its new
//! tokens) and a batched decode step (rows = one token of each sequence).
//! [`GpuDecoder::forward_rows`] allocates nothing, never synchronises and
//! reads no per-step value from the host: the decode step is captured in a
//! CUDA graph as it is.
//!
//! One layer is 8 launches at decode (fused projections): q|k|v GEMM ->
//! attention with QK-norm, RoPE and the KV write fused in
//! (`attention_decode_rope`, reading the GEMM output in place; splits
//! merged by the last block; when the rows are of distinct sequences:
//! one row, or [`Scratch::distinct_seqs`]; else `qkv_rope_kv` then
//! attention) -> o GEMM -> `resid_norm` (residual add + RMSNorm) ->
//! gate|up GEMM -> `glu` -> down GEMM -> `resid_norm`. The activations next to the GEMMs are f16 when every
//! projection is INT4 (the kernel's own type: no conversion launches), f32
//! otherwise; the residual stream and attention's queries stay f32.
//! With [`Scratch::fuse_ops`] (`MARLIN_GPU_FUSE_OPS=1`) a Llama-style INT4
//! model at M <= 16 runs 5 launches per layer ([`GpuDecoder::fused_ops`]):
//! the norms, residual adds and SwiGLU ride in the INT4 GEMMs.
//! With [`Scratch::defer_norms`] (`MARLIN_GPU_DEFER_NORM=1`) the two norm
//! launches of each layer ride in the GEMMs instead (the o / down epilogue
//! writes the next norm's inputs, q|k|v / gate|up scale their rows;
//! [`GpuDecoder::defers_norms`]): 5 launches per layer.
//! In the unfused step the GLU rides in the gate|up GEMM's epilogue where
//! [`GpuDecoder::glu_in_gemm`] allows it (INT4 gate|up of Llama-3.1-8B
//! width at M <= 16; [`Scratch::glu_in_gemm`]): 7 launches per layer.
//! Greedy decoding picks its tokens in the LM head's stage: on the f16
//! path one split-argmax launch also converts the head's f16 output into
//! the f32 logits.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_cuda::ggml::GgmlGpuWeight;
use marlin_cuda::int4::gemm::Int4Weight;
use marlin_cuda::int4::gemm::{
    deferred_norm_supported, fused_supported, glu_epilogue_preferred, int4_gemm, int4_gemm_fused,
    int4_gemm_glu_normed_prepared, int4_gemm_glu_prepared, row_square_parts, GemmOptions,
    GemmWorkspace, GluAct, Int4Epilogue, Int4Prologue, RowSquareSums, FUSED_MAX_M,
};
use marlin_cuda::int4::layers::{LayerDims, LayerWeights, PersistentLayers};
use marlin_cuda::knobs::Switch;
use marlin_cuda::ops::{
    self, ActElem, AttnParams, DeviceSampling, GpuKvCache, GpuRope, HeadShape, KvDest, PagedKvPool,
    ProjRows, RopeInputs,
};
use marlin_cuda::CudaDevice;

use super::linear::{GpuLinear, LinearScratch};
use super::paged::KvStore;
use super::spec::DecoderSpec;
use super::stages::{Stage, StageTimer};
use super::{driver_err, GpuError, Result};
use crate::layers::Activation;

/// Token embedding table.
pub enum GpuEmbedding {
    /// Rows dequantized by the weight's own `get_rows` (GGUF; shared with a
    /// tied LM head).
    Table(Arc<GgmlGpuWeight>),
    /// f32 (vocab, d) table (the synthetic benchmark model).
    Dense { table: CudaSlice<f32>, vocab: usize },
}

/// The q, k and v projections: three weights as checkpoints store them, or
/// one fused (q | k | v rows) weight, one GEMM whose output columns are
/// split afterwards (fewer, larger launches at decode).
pub enum QkvWeights {
    /// (n_heads*head_dim, d), (n_kv_heads*head_dim, d), (n_kv_heads*head_dim, d)
    Separate {
        q: GpuLinear,
        k: GpuLinear,
        v: GpuLinear,
    },
    /// ((n_heads + 2*n_kv_heads)*head_dim, d)
    Fused(GpuLinear),
}

/// The gate and up projections: two weights, or one fused (gate | up rows).
pub enum GateUpWeights {
    /// (ffn, d) each
    Separate { gate: GpuLinear, up: GpuLinear },
    /// (2*ffn, d)
    Fused(GpuLinear),
}

/// One block's weights. Norm weights (d or head_dim) already include the
/// checkpoint's `1 + w` convention.
pub struct GpuBlock {
    pub attn_norm: CudaSlice<f32>,
    pub qkv: QkvWeights,
    /// (d, n_heads*head_dim)
    pub wo: GpuLinear,
    /// (head_dim) each, when the spec has QK-norm.
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    /// (d), when the spec has post-norms.
    pub post_attn_norm: Option<CudaSlice<f32>>,
    pub ffn_norm: CudaSlice<f32>,
    pub gate_up: GateUpWeights,
    /// (d, ffn)
    pub down: GpuLinear,
    pub post_ffn_norm: Option<CudaSlice<f32>>,
}

impl GpuBlock {
    /// Every linear of the block.
    pub fn linears(&self) -> Vec<&GpuLinear> {
        let mut v = Vec::with_capacity(7);
        match &self.qkv {
            QkvWeights::Separate { q, k, v: wv } => v.extend([q, k, wv]),
            QkvWeights::Fused(w) => v.push(w),
        }
        v.push(&self.wo);
        match &self.gate_up {
            GateUpWeights::Separate { gate, up } => v.extend([gate, up]),
            GateUpWeights::Fused(w) => v.push(w),
        }
        v.push(&self.down);
        v
    }

    /// The block's weights as the persistent kernel takes them: fused
    /// q|k|v and gate|up, every projection INT4, no QK-norm or post-norms.
    fn persistent_weights(&self) -> Option<LayerWeights<'_>> {
        fn int4(l: &GpuLinear) -> Option<&Int4Weight> {
            match l {
                GpuLinear::Int4(w) => Some(w),
                _ => None,
            }
        }
        let (QkvWeights::Fused(qkv), GateUpWeights::Fused(gate_up)) = (&self.qkv, &self.gate_up)
        else {
            return None;
        };
        if self.q_norm.is_some()
            || self.k_norm.is_some()
            || self.post_attn_norm.is_some()
            || self.post_ffn_norm.is_some()
        {
            return None;
        }
        Some(LayerWeights {
            qkv: int4(qkv)?,
            o: int4(&self.wo)?,
            gate_up: int4(gate_up)?,
            down: int4(&self.down)?,
            attn_norm: &self.attn_norm,
            ffn_norm: &self.ffn_norm,
        })
    }

    /// Output width of the fused projections (0 without any).
    fn fused_width(&self) -> usize {
        let qkv = match &self.qkv {
            QkvWeights::Fused(w) => w.rows(),
            QkvWeights::Separate { .. } => 0,
        };
        let gate_up = match &self.gate_up {
            GateUpWeights::Fused(w) => w.rows(),
            GateUpWeights::Separate { .. } => 0,
        };
        qkv.max(gate_up)
    }
}

/// Which rows get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// The last of the `m` rows (a prefill chunk).
    Last,
    /// Every row (batched decode, perplexity).
    All,
    /// The last `n` of the `m` rows (0: none); the paged batch model
    /// (`paged.rs`) orders a batch's rows so that the rows whose logits the
    /// engine wants come last.
    Tail(usize),
}

/// A decoder resident on one device.
pub struct GpuDecoder {
    pub spec: DecoderSpec,
    pub embed: GpuEmbedding,
    pub blocks: Vec<GpuBlock>,
    pub ropes: Vec<GpuRope>,
    pub out_norm: CudaSlice<f32>,
    /// (vocab, d)
    pub lm_head: GpuLinear,
}

/// How a forward pass picks the next token of each logits row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Select {
    /// Logits only.
    None,
    /// Argmax into [`Scratch::next_ids`].
    Argmax,
    /// Temperature / top-k / top-p / min-p with the uniforms in
    /// [`Scratch::uniforms`] (one per row) into [`Scratch::next_ids`].
    Sample(DeviceSampling),
    /// Each row's own choice ([`Scratch::set_row_choices`]) into
    /// [`Scratch::next_ids`]: the serving pass's mix of greedy and sampled
    /// requests.
    Rows,
}

/// `true`: argmax, `false`: logits only.
impl From<bool> for Select {
    fn from(argmax: bool) -> Self {
        if argmax {
            Select::Argmax
        } else {
            Select::None
        }
    }
}

/// Where a forward pass keeps keys and values.
pub enum KvTarget<'a> {
    /// A contiguous per-sequence cache: the fused QK-norm / RoPE kernel
    /// writes keys and values into it, attention reads it in place.
    Slots(&'a mut GpuKvCache),
    /// Any other store (the paged pool): the QK-norm / RoPE launch writes
    /// keys and values where [`KvStore::kv_dest`] says, attention through
    /// [`KvStore::attend`] (f32 output, converted when the GEMMs take f16).
    Store(&'a mut dyn KvStore),
}

impl<'a> From<&'a mut GpuKvCache> for KvTarget<'a> {
    fn from(c: &'a mut GpuKvCache) -> Self {
        KvTarget::Slots(c)
    }
}

impl<'a> From<&'a mut PagedKvPool> for KvTarget<'a> {
    fn from(p: &'a mut PagedKvPool) -> Self {
        KvTarget::Store(p)
    }
}

/// Activations next to the GEMMs, in the GEMMs' element type: f16 when
/// every projection is INT4 (the kernel's own input/output), else f32.
struct ActBufs<T> {
    /// (max_m, d) normed input of the next projection.
    h: CudaSlice<T>,
    /// (max_m, d) output of the o / down projection.
    delta: CudaSlice<T>,
    /// (max_m, fused width): a fused q|k|v or gate|up output, read in place.
    fused: CudaSlice<T>,
    /// Separate projections' outputs: (max_m, q / kv / kv width), (max_m, ffn) x 2.
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    gate: CudaSlice<T>,
    up: CudaSlice<T>,
    /// (max_m, n_heads*head_dim)
    attn: CudaSlice<T>,
    /// (max_m, ffn)
    act: CudaSlice<T>,
    /// (logit_rows, d): the rows of `h` that get logits, copied together
    /// when they are not all `m` rows.
    last: CudaSlice<T>,
    /// (logit_rows, vocab) f16 LM head output (f16 only; f32 heads write
    /// the logits directly).
    lm_out: CudaSlice<T>,
}

impl<T: ActElem> ActBufs<T> {
    fn new(dev: &CudaDevice, dec: &GpuDecoder, max_m: usize, logit_rows: usize) -> Result<Self> {
        let c = &dec.spec.cfg;
        let rows = |w: usize| {
            max_m
                .checked_mul(w.max(1))
                .ok_or_else(|| GpuError::Invalid(format!("{max_m} rows of {w} overflow")))
        };
        let (d, qd, kvd, ffn) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.ffn_size,
        );
        let fused_width = dec
            .blocks
            .iter()
            .map(GpuBlock::fused_width)
            .max()
            .unwrap_or(0);
        let sep_qkv = dec
            .blocks
            .iter()
            .any(|b| matches!(b.qkv, QkvWeights::Separate { .. }));
        let sep_mlp = dec
            .blocks
            .iter()
            .any(|b| matches!(b.gate_up, GateUpWeights::Separate { .. }));
        let pick = |on: bool, w: usize| if on { w } else { 0 };
        let lm_len = if T::IS_F16 {
            logit_rows
                .checked_mul(c.vocab_size)
                .ok_or_else(|| GpuError::Invalid("logits buffer overflows".into()))?
        } else {
            1
        };
        Ok(Self {
            h: dev.alloc_zeros("normed activations", rows(d)?)?,
            delta: dev.alloc_zeros("block outputs", rows(d)?)?,
            fused: dev.alloc_zeros("fused projection outputs", rows(fused_width)?)?,
            q: dev.alloc_zeros("query projection", rows(pick(sep_qkv, qd))?)?,
            k: dev.alloc_zeros("key projection", rows(pick(sep_qkv, kvd))?)?,
            v: dev.alloc_zeros("value projection", rows(pick(sep_qkv, kvd))?)?,
            gate: dev.alloc_zeros("MLP gate", rows(pick(sep_mlp, ffn))?)?,
            up: dev.alloc_zeros("MLP up", rows(pick(sep_mlp, ffn))?)?,
            attn: dev.alloc_zeros("attention outputs", rows(qd)?)?,
            act: dev.alloc_zeros("MLP activations", rows(ffn)?)?,
            last: dev.alloc_zeros(
                "LM head rows",
                logit_rows
                    .checked_mul(d)
                    .ok_or_else(|| GpuError::Invalid("LM head rows overflow".into()))?,
            )?,
            lm_out: dev.alloc_zeros("f16 LM head output", lm_len)?,
        })
    }
}

enum Acts {
    F32(ActBufs<f32>),
    F16(ActBufs<f16>),
}

/// Device buffers of one forward pass of up to `max_m` rows, allocated
/// once (a CUDA graph replays kernels on exactly these addresses).
pub struct Scratch {
    pub max_m: usize,
    /// Rows of logits `logits` holds.
    pub logit_rows: usize,
    /// (max_m) token id of each row.
    pub ids: CudaSlice<u32>,
    /// (max_m) sequence (KV-cache slot) of each row.
    pub row_seq: CudaSlice<i32>,
    /// (max_m) position of each row.
    pub row_pos: CudaSlice<i32>,
    /// Whether every row of the next forwards belongs to a different
    /// sequence (a batched decode step): attention then writes the step's
    /// keys itself (QK-norm + RoPE + KV write fused into the decode
    /// attention launch; two rows of one sequence would race there). Only
    /// [`Scratch::set_row_sequences`] sets it, from the sequence ids it
    /// uploads. One row always qualifies.
    distinct_seqs: bool,
    /// Fold the block's small ops into the INT4 GEMMs where the model
    /// allows it ([`GpuDecoder::fused_ops`]); starts as `MARLIN_GPU_FUSE_OPS`
    /// says (on with `1`, off otherwise), settable for same-process
    /// comparisons.
    pub fuse_ops: bool,
    /// Defer each RMSNorm between two INT4 GEMMs into them where the model
    /// allows it ([`GpuDecoder::defers_norms`]): the o / down GEMM adds the
    /// residual and writes the next norm's weighted rows and per-row sums
    /// of squares, the q|k|v / gate|up GEMM scales its output rows
    /// (docs/CUDA.md change 76). Starts as `MARLIN_GPU_DEFER_NORM` says (off
    /// unless `1`: measured no faster), settable for same-process
    /// comparisons; set on a scratch made with it off, the kernels load at
    /// the first eager step (run one before capturing a graph).
    pub defer_norms: bool,
    /// (max_m, parts) partial sums of squares of the deferred norm.
    row_sums: CudaSlice<f32>,
    /// Run the gated activation in the gate|up GEMM's epilogue where
    /// [`GpuDecoder::glu_in_gemm`] allows it (one launch instead of the
    /// GEMM + `glu`); starts as `MARLIN_GPU_GLU_IN_GEMM` says (on unless
    /// `0`), settable for same-process comparisons.
    pub glu_in_gemm: bool,
    /// Kernel form of the residual add + RMSNorm launches
    /// (`ops::resid_norm_with`); starts as `MARLIN_CUDA_NORM_VEC` says
    /// ([`ops::NormForm::from_env`]), settable for same-process comparisons.
    pub norm_form: ops::NormForm,
    /// Timing diagnosis only (`marlin bench decode` with
    /// `MARLIN_BENCH_DECODE_DIAG`): leave out a class of kernels so that
    /// the step's time shows what the rest costs. The outputs are then
    /// meaningless. [`SkipForDiagnosis::Nothing`] unless set.
    pub skip_for_diagnosis: SkipForDiagnosis,
    /// (max(max_m, logit_rows)) uniforms in [0, 1) of [`Select::Sample`].
    pub uniforms: CudaSlice<f32>,
    /// (max(max_m, logit_rows), ops::ROW_PARAM_WORDS) choices of
    /// [`Select::Rows`].
    row_params: CudaSlice<u32>,
    /// (logit_rows, vocab)
    pub logits: CudaSlice<f32>,
    /// Page-locked host copy of the logits rows the caller reads back.
    pub host_logits: marlin_cuda::readback::Readback<f32>,
    /// (max(max_m, logit_rows)) token picked from each logits row.
    pub next_ids: CudaSlice<u32>,
    /// Keys and tickets of the split argmax (logit_rows rows).
    argmax_ws: ops::ArgmaxWorkspace,
    /// (max_m, d) residual stream (f32).
    x: CudaSlice<f32>,
    /// (max_m, n_heads*head_dim) roped queries, attention's input (f32).
    q: CudaSlice<f32>,
    /// (max_m, n_heads*head_dim) attention output of a [`KvTarget::Store`].
    attn32: CudaSlice<f32>,
    lin: LinearScratch,
    /// Split-K workspace of the f16 path's INT4 GEMMs.
    ws: GemmWorkspace,
    acts: Acts,
    /// The persistent one-token step of this decoder (docs/CUDA.md change
    /// 86), where [`GpuDecoder::persistent_layer_weights`] allows it.
    persistent: Option<PersistentLayers>,
    /// Run one-token steps on a slot cache through `persistent` when it
    /// exists; starts as `MARLIN_GPU_PERSISTENT` says (off unless `1`),
    /// settable for same-process comparisons.
    pub persistent_layers: bool,
}

impl Scratch {
    /// Changes whenever a GEMM's preparation replaced a workspace buffer
    /// by a larger one (a row count or weight not seen before): a CUDA
    /// graph captured before holds the freed addresses and must be
    /// captured again ([`GemmWorkspace::generation`]).
    pub(crate) fn buffers_generation(&self) -> u64 {
        self.ws.generation()
    }

    /// Uploads the choices of [`Select::Rows`] for the logits rows
    /// `0..choices.len()` (in the order of the pass's logits rows).
    pub fn set_row_choices(
        &mut self,
        dev: &CudaDevice,
        choices: &[ops::RowChoice],
        vocab: usize,
    ) -> Result<()> {
        let words = ops::pack_row_choices(choices, vocab)?;
        if words.len() > self.row_params.len() {
            return Err(GpuError::Invalid(format!(
                "{} row choices in a scratch for {}",
                choices.len(),
                self.row_params.len() / ops::ROW_PARAM_WORDS
            )));
        }
        dev.stream()
            .memcpy_htod(&words, &mut self.row_params.slice_mut(0..words.len()))
            .map_err(|e| driver_err("row choices to the device", e))?;
        Ok(())
    }

    /// Uploads the sequence (KV-cache slot) of rows `0..seqs.len()` into
    /// [`Scratch::row_seq`] and records whether they are all different,
    /// which lets a batched decode step fuse its KV write into attention.
    /// A later direct write of `row_seq` must keep its rows distinct, or
    /// call this again.
    pub fn set_row_sequences(&mut self, dev: &CudaDevice, seqs: &[i32]) -> Result<()> {
        if seqs.len() > self.max_m {
            return Err(GpuError::Invalid(format!(
                "{} row sequences in a scratch for {} rows",
                seqs.len(),
                self.max_m
            )));
        }
        dev.stream()
            .memcpy_htod(seqs, &mut self.row_seq.slice_mut(0..seqs.len()))
            .map_err(|e| driver_err("sequence ids to the device", e))?;
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        self.distinct_seqs = sorted.windows(2).all(|w| w[0] != w[1]);
        Ok(())
    }

    /// Buffers for `max_m` rows and `logit_rows` rows of logits.
    pub fn new(
        dev: &Arc<CudaDevice>,
        dec: &GpuDecoder,
        max_m: usize,
        logit_rows: usize,
    ) -> Result<Self> {
        let c = &dec.spec.cfg;
        if max_m == 0 || logit_rows == 0 {
            return Err(GpuError::Invalid("scratch for 0 rows".into()));
        }
        let rows = |w: usize| {
            max_m
                .checked_mul(w)
                .ok_or_else(|| GpuError::Invalid(format!("{max_m} rows of {w} overflow")))
        };
        let (d, qd, ffn) = (c.hidden_size, c.n_heads * c.head_dim, c.ffn_size);
        let f16_acts = dec.f16_activations();
        // Rotated (MR-GPTQ) linears take their padded K.
        let widest_in = dec
            .linears()
            .into_iter()
            .map(GpuLinear::kernel_cols)
            .fold(d.max(qd).max(ffn), usize::max);
        let widest_out = dec
            .linears()
            .into_iter()
            .filter(|l| l.uses_f16_scratch())
            .map(GpuLinear::rows)
            .max();
        // The f32 path converts around INT4 weights through this scratch;
        // the f16 path hands its buffers to the GEMM directly.
        let lin = match widest_out {
            Some(out) if !f16_acts => {
                LinearScratch::new(dev, max_m.max(logit_rows), widest_in, out)?
            }
            _ => LinearScratch::new(dev, 1, 1, 1)?,
        };
        for l in dec.linears() {
            l.prepare(dev, max_m.max(logit_rows))?;
        }
        let logits_len = logit_rows
            .checked_mul(c.vocab_size)
            .ok_or_else(|| GpuError::Invalid("logits buffer overflows".into()))?;
        let acts = if f16_acts {
            Acts::F16(ActBufs::new(dev, dec, max_m, logit_rows)?)
        } else {
            Acts::F32(ActBufs::new(dev, dec, max_m, logit_rows)?)
        };
        let picks = max_m.max(logit_rows);
        // The GLU-epilogue kernels the unfused step may take, loaded now: a
        // capture of a batch size that never ran eagerly must not compile or
        // load a module. Exactly the (weight, M) `linear_glu` launches
        // (`glu_epilogue_preferred`, a subset of the supported ones): other
        // models do not pay for compiling the fused module (opt-in
        // elsewhere) at every start.
        let mut ws = GemmWorkspace::new(dev)?;
        if f16_acts {
            for b in &dec.blocks {
                if let GateUpWeights::Fused(GpuLinear::Int4(w)) = &b.gate_up {
                    if w.n != 2 * ffn {
                        continue;
                    }
                    // M <= 16: one or two token tiles (docs/CUDA.md change 65).
                    for m in 1..=max_m.min(16) {
                        if glu_epilogue_preferred(dev, m, w) {
                            ws.prepare_glu(dev, w, m)?;
                        }
                    }
                }
            }
            // The deferred-norm kernels of every M the step may defer at
            // (when the knob turns it on: other runs do not load them).
            for m in (1..=max_m.min(FUSED_MAX_M)).filter(|_| defer_norms_enabled()) {
                if !dec.defers_norms(dev, m, true) && !dec.defers_norms(dev, m, false) {
                    continue;
                }
                for b in &dec.blocks {
                    for l in b.linears() {
                        if let GpuLinear::Int4(w) = l {
                            if deferred_norm_supported(dev, m, w) {
                                ws.prepare_deferred_norm(dev, w, m)?;
                            }
                        }
                    }
                }
            }
        }
        let persistent = match (f16_acts, dec.persistent_layer_weights()) {
            (true, Some((dims, layers))) => match PersistentLayers::new(dev, dims, &layers) {
                Ok(p) => Some(p),
                // Outside the kernel's scope: the layered step.
                Err(marlin_cuda::CudaError::Unsupported(_)) => None,
                Err(e) => return Err(e.into()),
            },
            _ => None,
        };
        Ok(Self {
            max_m,
            logit_rows,
            ids: dev.alloc_zeros("token ids", max_m)?,
            row_seq: dev.alloc_zeros("row sequences", max_m)?,
            row_pos: dev.alloc_zeros("row positions", max_m)?,
            distinct_seqs: false,
            fuse_ops: fuse_ops_enabled(),
            defer_norms: defer_norms_enabled(),
            row_sums: dev.alloc_zeros(
                "deferred-norm row sums",
                rows(dec.deferred_norm_parts().unwrap_or(1))?,
            )?,
            glu_in_gemm: glu_in_gemm_enabled(),
            norm_form: ops::NormForm::from_env(),
            skip_for_diagnosis: SkipForDiagnosis::Nothing,
            uniforms: dev.alloc_zeros("sampling uniforms", picks)?,
            row_params: dev.alloc_zeros(
                "row choices",
                picks.checked_mul(ops::ROW_PARAM_WORDS).ok_or_else(|| {
                    GpuError::Invalid(format!("{picks} rows of choices overflow"))
                })?,
            )?,
            logits: dev.alloc_zeros("logits", logits_len)?,
            host_logits: marlin_cuda::readback::Readback::new("logits"),
            next_ids: dev.alloc_zeros("picked ids", picks)?,
            argmax_ws: ops::ArgmaxWorkspace::new(dev, logit_rows)?,
            x: dev.alloc_zeros("residual stream", rows(d)?)?,
            q: dev.alloc_zeros("queries", rows(qd)?)?,
            attn32: dev.alloc_zeros("attention outputs (f32)", rows(qd)?)?,
            lin,
            ws,
            acts,
            persistent,
            persistent_layers: persistent_layers_enabled(),
        })
    }

    /// The persistent kernel of this scratch's decoder, when it has one.
    pub fn persistent(&self) -> Option<&PersistentLayers> {
        self.persistent.as_ref()
    }

    /// Whether one-token steps on a slot cache take the persistent kernel.
    pub fn runs_persistent_layers(&self) -> bool {
        self.persistent_layers && self.persistent.is_some()
    }

    /// Whether the GEMM activations are f16 (every projection INT4).
    pub fn f16_activations(&self) -> bool {
        matches!(self.acts, Acts::F16(_))
    }
}

/// The GEMM calls of one activation type.
trait DecoderAct: ActElem {
    fn linear(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<Self>,
        m: usize,
        y: &mut CudaSlice<Self>,
        g: &mut GemmScratch<'_>,
    ) -> Result<()>;

    /// The fused decode-step GEMM ([`int4_gemm_fused`]): f16 activations
    /// and INT4 weights only (see [`GpuDecoder::fused_ops`]).
    fn linear_fused(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        input: FusedIn<'_, Self>,
        m: usize,
        out: FusedOut<'_, Self>,
        g: &mut GemmScratch<'_>,
    ) -> Result<()>;

    /// The gate|up GEMM of the stacked weight `l` with the gated activation
    /// in its epilogue ([`int4_gemm_glu_prepared`]; `Scratch::new` loaded
    /// its kernel): `out (m, ffn) = act(gate) * up`
    /// in one launch. `Ok(false)` (nothing launched) where it does not apply:
    /// f32 activations, a weight other than INT4, or a call
    /// [`glu_epilogue_preferred`] leaves to the GEMM + `glu` pair. With
    /// `norm`, `x` holds deferred-norm rows and the epilogue scales them.
    #[allow(clippy::too_many_arguments)]
    fn linear_glu(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<Self>,
        norm: Option<DeferredNormIn<'_>>,
        m: usize,
        out: &mut CudaSlice<Self>,
        act: GluAct,
        g: &mut GemmScratch<'_>,
    ) -> Result<bool>;

    /// `dst = src` (`n` values) in this type.
    fn from_f32(
        dev: &CudaDevice,
        src: &CudaSlice<f32>,
        n: usize,
        dst: &mut CudaSlice<Self>,
    ) -> Result<()>;

    /// LM head of `rows` rows of `x` -> f32 `logits`, soft-capped by `cap`;
    /// with `argmax`, also each row's greedy token (split argmax).
    #[allow(clippy::too_many_arguments)]
    fn lm_head(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<Self>,
        rows: usize,
        vocab: usize,
        cap: Option<f32>,
        lm_out: &mut CudaSlice<Self>,
        logits: &mut CudaSlice<f32>,
        g: &mut GemmScratch<'_>,
        argmax: Option<ArgmaxOut<'_>>,
    ) -> Result<()>;
}

impl DecoderAct for f32 {
    fn linear_glu(
        _l: &GpuLinear,
        _dev: &Arc<CudaDevice>,
        _x: &CudaSlice<f32>,
        _norm: Option<DeferredNormIn<'_>>,
        _m: usize,
        _out: &mut CudaSlice<f32>,
        _act: GluAct,
        _g: &mut GemmScratch<'_>,
    ) -> Result<bool> {
        Ok(false)
    }

    fn linear_fused(
        _l: &GpuLinear,
        _dev: &Arc<CudaDevice>,
        _input: FusedIn<'_, f32>,
        _m: usize,
        _out: FusedOut<'_, f32>,
        _g: &mut GemmScratch<'_>,
    ) -> Result<()> {
        Err(GpuError::Invalid(
            "fused decode-step GEMMs need f16 activations (every projection INT4)".into(),
        ))
    }

    fn from_f32(
        dev: &CudaDevice,
        src: &CudaSlice<f32>,
        n: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if src.len() < n || dst.len() < n {
            return Err(GpuError::Invalid(format!(
                "copy of {n} values: buffers too short"
            )));
        }
        dev.stream()
            .memcpy_dtod(&src.slice(0..n), &mut dst.slice_mut(0..n))
            .map_err(|e| driver_err("attention output copy", e))
    }

    fn linear(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f32>,
        m: usize,
        y: &mut CudaSlice<f32>,
        g: &mut GemmScratch<'_>,
    ) -> Result<()> {
        l.forward(dev, x, m, y, g.lin)
    }

    fn lm_head(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        cap: Option<f32>,
        _lm_out: &mut CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        g: &mut GemmScratch<'_>,
        argmax: Option<ArgmaxOut<'_>>,
    ) -> Result<()> {
        l.forward(dev, x, rows, logits, g.lin)?;
        if let Some(cap) = cap {
            ops::softcap_inplace(dev, logits, rows * vocab, cap)?;
        }
        if let Some(a) = argmax {
            ops::argmax_rows_ws(dev, logits, rows, vocab, a.ws, a.next_ids)?;
        }
        Ok(())
    }
}

impl DecoderAct for f16 {
    fn linear_glu(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f16>,
        norm: Option<DeferredNormIn<'_>>,
        m: usize,
        out: &mut CudaSlice<f16>,
        act: GluAct,
        g: &mut GemmScratch<'_>,
    ) -> Result<bool> {
        match l {
            GpuLinear::Int4(w) if glu_epilogue_preferred(dev, m, w) => {
                // Loaded by `Scratch::new` (an error here, not a load).
                let (a, mut o) = (x.as_view(), out.as_view_mut());
                match norm {
                    Some(n) => {
                        int4_gemm_glu_normed_prepared(dev, &a, &n.view(), m, w, &mut o, act, g.ws)?
                    }
                    None => int4_gemm_glu_prepared(dev, &a, m, w, &mut o, act, g.ws)?,
                };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn linear_fused(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        input: FusedIn<'_, f16>,
        m: usize,
        out: FusedOut<'_, f16>,
        g: &mut GemmScratch<'_>,
    ) -> Result<()> {
        let GpuLinear::Int4(w) = l else {
            return Err(GpuError::Invalid(
                "fused decode-step GEMM for a weight other than INT4".into(),
            ));
        };
        let pro = match input {
            FusedIn::Plain(a) => Int4Prologue::None(a.as_view()),
            FusedIn::Glu(gu) => Int4Prologue::Glu(gu.as_view()),
            FusedIn::RmsNorm { x, weight, eps } => Int4Prologue::RmsNorm {
                x: x.as_view(),
                weight: weight.as_view(),
                eps,
            },
            FusedIn::DeferredNorm(a, norm) => Int4Prologue::DeferredNorm {
                a: a.as_view(),
                norm: norm.view(),
            },
        };
        let epi = match out {
            FusedOut::Store(c) => Int4Epilogue::Store(c.as_view_mut()),
            FusedOut::AddToResidual(r) => Int4Epilogue::AddToResidual(r.as_view_mut()),
            FusedOut::AddToResidualNormed {
                resid,
                weight,
                h,
                sums,
            } => Int4Epilogue::AddToResidualNormed {
                resid: resid.as_view_mut(),
                weight: weight.as_view(),
                h: h.as_view_mut(),
                sums: sums.as_view_mut(),
            },
        };
        int4_gemm_fused(dev, pro, m, w, epi, g.ws)?;
        Ok(())
    }

    fn from_f32(
        dev: &CudaDevice,
        src: &CudaSlice<f32>,
        n: usize,
        dst: &mut CudaSlice<f16>,
    ) -> Result<()> {
        Ok(ops::f32_to_f16(dev, src, n, dst)?)
    }

    fn linear(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f16>,
        m: usize,
        y: &mut CudaSlice<f16>,
        g: &mut GemmScratch<'_>,
    ) -> Result<()> {
        match l {
            GpuLinear::Int4(w) => {
                int4_gemm(dev, x, m, w, y, g.ws, GemmOptions::default())?;
                Ok(())
            }
            _ => Err(GpuError::Invalid(
                "f16 activations for a weight other than INT4 (models with one run f32 activations)"
                    .into(),
            )),
        }
    }

    fn lm_head(
        l: &GpuLinear,
        dev: &Arc<CudaDevice>,
        x: &CudaSlice<f16>,
        rows: usize,
        vocab: usize,
        cap: Option<f32>,
        lm_out: &mut CudaSlice<f16>,
        logits: &mut CudaSlice<f32>,
        g: &mut GemmScratch<'_>,
        argmax: Option<ArgmaxOut<'_>>,
    ) -> Result<()> {
        f16::linear(l, dev, x, rows, lm_out, g)?;
        match argmax {
            // The conversion to f32 logits inside the argmax launch.
            Some(a) => Ok(ops::argmax_rows_ws_f16(
                dev, lm_out, rows, vocab, cap, logits, a.ws, a.next_ids,
            )?),
            None => Ok(ops::logits_from_f16(
                dev,
                lm_out,
                rows * vocab,
                cap,
                logits,
            )?),
        }
    }
}

/// Input of a fused decode-step GEMM (`DecoderAct::linear_fused`).
enum FusedIn<'a, T> {
    /// The activations as they are.
    Plain(&'a CudaSlice<T>),
    /// SwiGLU of a fused gate|up output (gate columns first, row stride 2K).
    Glu(&'a CudaSlice<T>),
    /// RMSNorm of the f32 residual stream, times `weight`.
    RmsNorm {
        x: &'a CudaSlice<f32>,
        weight: &'a CudaSlice<f32>,
        eps: f32,
    },
    /// Weighted, unnormalised rows of an `AddToResidualNormed` GEMM; the
    /// output rows are scaled by their inverse norms.
    DeferredNorm(&'a CudaSlice<T>, DeferredNormIn<'a>),
}

/// The deferred norm's per-row partial sums of squares (`parts` per row).
#[derive(Clone, Copy)]
struct DeferredNormIn<'a> {
    sums: &'a CudaSlice<f32>,
    parts: usize,
    eps: f32,
}

impl<'a> DeferredNormIn<'a> {
    fn view(self) -> RowSquareSums<'a> {
        RowSquareSums {
            sums: self.sums.as_view(),
            parts: self.parts,
            eps: self.eps,
        }
    }
}

/// Output of a fused decode-step GEMM.
enum FusedOut<'a, T> {
    Store(&'a mut CudaSlice<T>),
    /// Added to the f32 residual stream.
    AddToResidual(&'a mut CudaSlice<f32>),
    /// Added to the f32 residual stream, with the next norm's inputs: `h`
    /// = f16(resid * weight), `sums` the partial sums of squares.
    AddToResidualNormed {
        resid: &'a mut CudaSlice<f32>,
        weight: &'a CudaSlice<f32>,
        h: &'a mut CudaSlice<T>,
        sums: &'a mut CudaSlice<f32>,
    },
}

/// Kernels a timing diagnosis leaves out of a forward pass
/// ([`Scratch::skip_for_diagnosis`]; wrong outputs, for timing only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipForDiagnosis {
    /// The real forward pass.
    Nothing,
    /// Residual add + RMSNorm, attention (with its QK-norm / RoPE / KV
    /// write) and the GLU: the step is the GEMMs, the embedding and the
    /// token choice.
    SmallOps,
    /// Every projection GEMM and the LM head (with its logits conversion):
    /// the step is everything else.
    Gemms,
    /// The per-layer residual add + RMSNorm kernels only (the embedding's
    /// norm and the final norm stay): what folding the norms into the
    /// GEMMs could gain at most.
    Norms,
}

/// Whether greedy decoding picks its tokens with the split argmax
/// (`ops::argmax_rows_ws`, many blocks per row), and draws without top-k
/// and top-p with the split draw (`ops::sample_rows_ws` /
/// `sample_rows_each_ws`): not when `MARLIN_CUDA_SPLIT_ARGMAX=0` (measuring
/// the difference; read once).
fn split_argmax_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_CUDA_SPLIT_ARGMAX", true);
    ON.get()
}

/// Whether greedy decoding picks its tokens in the LM head's stage (the f16
/// path converts its logits to f32 in the argmax launch, one launch
/// instead of two): not when `MARLIN_GPU_ARGMAX_IN_LM_HEAD=0` (measuring
/// the difference; read once). Only with the split argmax.
fn argmax_in_lm_head_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_GPU_ARGMAX_IN_LM_HEAD", true);
    ON.get()
}

/// Where the LM head's stage writes the greedy tokens (see
/// [`DecoderAct::lm_head`]).
struct ArgmaxOut<'a> {
    ws: &'a mut ops::ArgmaxWorkspace,
    next_ids: &'a mut CudaSlice<u32>,
}

/// Whether the decode step folds its small ops into the INT4 GEMMs:
/// `MARLIN_GPU_FUSE_OPS=1` turns it on (read once). Opt-in: correct on the
/// H100 (`gpu_decoder`'s fused test) but slower than the unfused step in
/// the PDL graph (batch 1 2852.1 against 2712.3 us; docs/CUDA.md changes
/// 31-32).
fn fuse_ops_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_GPU_FUSE_OPS", false);
    ON.get()
}

/// Whether the decode step defers its RMSNorms into the INT4 GEMMs
/// ([`GpuDecoder::defers_norms`]): `MARLIN_GPU_DEFER_NORM=1` turns it on
/// (read once). Opt-in: correct on the H100 (`gpu_decoder`'s deferred-norm
/// test) but not faster in the PDL graph (Llama-3.1-8B shape, ctx 512:
/// batch 1 2205 against 2125 us, batch 8 2573 against 2590, batch 16 3278
/// against 3001; docs/CUDA.md change 76): the consumer GEMM's weight stream
/// starts when its blocks become resident, i.e. when the producer's blocks
/// leave, with or without the norm launch between them.
fn defer_norms_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_GPU_DEFER_NORM", false);
    ON.get()
}

/// Whether the unfused decode step runs the GLU in the gate|up GEMM's
/// epilogue where it can (`int4_gemm_glu`): on unless
/// `MARLIN_GPU_GLU_IN_GEMM=0` (measuring the difference; read once).
fn glu_in_gemm_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_GPU_GLU_IN_GEMM", true);
    ON.get()
}

/// Whether a one-token decode step runs its layers in the persistent
/// kernel ([`GpuDecoder::persistent_layer_weights`]) where the model and
/// device allow it: `MARLIN_GPU_PERSISTENT=1` turns it on (read once).
/// Opt-in: correct on the H100 (`gpu_decoder`'s persistent tests) but
/// slower than the layered step so far (docs/CUDA.md change 86).
fn persistent_layers_enabled() -> bool {
    static ON: Switch = Switch::new("MARLIN_GPU_PERSISTENT", false);
    ON.get()
}

/// GEMM scratch: the f32 path's conversion buffers (`LinearScratch`) and
/// the f16 path's split-K workspace.
struct GemmScratch<'a> {
    lin: &'a mut LinearScratch,
    ws: &'a mut GemmWorkspace,
}

/// Records the end of `stage` when profiling.
fn mark(prof: &mut Option<&mut StageTimer>, dev: &CudaDevice, stage: Stage) -> Result<()> {
    match prof {
        Some(p) => p.mark(dev, stage),
        None => Ok(()),
    }
}

/// Starts a timed section (spin, then a boundary event) when profiling.
fn begin(prof: &mut Option<&mut StageTimer>, dev: &CudaDevice) -> Result<()> {
    match prof {
        Some(p) => p.begin(dev),
        None => Ok(()),
    }
}

impl GpuDecoder {
    /// An empty KV cache for `n_seqs` sequences of `capacity` positions.
    pub fn new_cache(
        &self,
        dev: &Arc<CudaDevice>,
        n_seqs: usize,
        capacity: usize,
    ) -> Result<GpuKvCache> {
        let c = &self.spec.cfg;
        Ok(GpuKvCache::new(
            dev,
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            n_seqs,
            capacity,
        )?)
    }

    /// The model's dimensions and every layer's weights for the persistent
    /// one-token kernel (`marlin_cuda::int4::layers`), when the model is a
    /// Llama-style stack it can run: RMSNorm without offset, SiLU gate, one
    /// RoPE over whole heads for every layer, no sliding window, and
    /// [`GpuBlock::persistent_weights`] for every block. The kernel checks
    /// the rest (shapes, weight scheme, head_dim) itself.
    pub fn persistent_layer_weights(&self) -> Option<(LayerDims, Vec<LayerWeights<'_>>)> {
        let (spec, c) = (&self.spec, &self.spec.cfg);
        let rope = spec.layers.first()?.rope;
        let plain = !spec.qk_norm
            && !spec.post_norms
            && spec.norm_offset == 0.0
            && matches!(spec.activation, Activation::Silu)
            && spec
                .layers
                .iter()
                .all(|l| l.window.is_none() && l.rope == rope)
            && self
                .ropes
                .get(rope)
                .is_some_and(|r| r.n_rot() == r.head_dim() && r.head_dim() == c.head_dim);
        if !plain || self.blocks.len() != spec.layers.len() {
            return None;
        }
        let layers = self
            .blocks
            .iter()
            .map(GpuBlock::persistent_weights)
            .collect::<Option<Vec<_>>>()?;
        let dims = LayerDims {
            hidden: c.hidden_size,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn: c.ffn_size,
            rms_eps: c.rms_eps,
            attn_scale: spec.attn_scale,
        };
        Some((dims, layers))
    }

    /// Every linear, the LM head last.
    pub fn linears(&self) -> Vec<&GpuLinear> {
        let mut v: Vec<&GpuLinear> = self.blocks.iter().flat_map(GpuBlock::linears).collect();
        v.push(&self.lm_head);
        v
    }

    /// Bytes of weights one decode step reads (every linear, the LM head).
    pub fn weight_bytes(&self) -> usize {
        self.linears()
            .into_iter()
            .map(GpuLinear::weight_bytes)
            .sum()
    }

    /// Whether the decoder runs f16 GEMM activations: every projection
    /// (LM head included) is INT4, whose kernel reads and writes f16.
    pub fn f16_activations(&self) -> bool {
        self.linears()
            .into_iter()
            .all(|l| matches!(l, GpuLinear::Int4(_)))
    }

    /// Whether a forward of `m` rows folds the block's small ops into its
    /// INT4 GEMMs (RMSNorm into q|k|v and gate|up, residual adds into o and
    /// down, SwiGLU into down; docs/CUDA.md change 31): every linear of
    /// every block INT4 on the fused kernels ([`fused_supported`], M <=
    /// [`FUSED_MAX_M`]), q|k|v and gate|up fused, SwiGLU, no post-norms
    /// (f16 activations follow from every linear being INT4).
    /// [`Scratch::fuse_ops`] can turn it off per scratch.
    pub fn fused_ops(&self, dev: &CudaDevice, m: usize) -> bool {
        let int4_ok = |l: &GpuLinear| matches!(l, GpuLinear::Int4(w) if fused_supported(dev, m, w));
        m <= FUSED_MAX_M
            && matches!(self.spec.activation, Activation::Silu)
            && self.blocks.iter().all(|b| {
                let shapes_ok = match (&b.gate_up, &b.down) {
                    (GateUpWeights::Fused(gu), GpuLinear::Int4(dw)) => gu.rows() == 2 * dw.k,
                    _ => false,
                };
                matches!(b.qkv, QkvWeights::Fused(_))
                    && b.post_attn_norm.is_none()
                    && b.post_ffn_norm.is_none()
                    && shapes_ok
                    && b.linears().into_iter().all(int4_ok)
            })
    }

    /// Whether a forward of `m` rows (unfused step, f16 activations) runs
    /// every block's gated activation in its gate|up GEMM's epilogue: the
    /// stacked INT4 gate|up weight of each block is one
    /// [`glu_epilogue_preferred`] takes (e.g. Llama-3.1-8B at M <= 16).
    /// [`Scratch::glu_in_gemm`] can turn it off per scratch.
    pub fn glu_in_gemm(&self, dev: &CudaDevice, m: usize) -> bool {
        self.f16_activations()
            && self.blocks.iter().all(|b| {
                matches!(&b.gate_up, GateUpWeights::Fused(GpuLinear::Int4(w))
                    if w.n == 2 * self.spec.cfg.ffn_size && glu_epilogue_preferred(dev, m, w))
            })
    }

    /// Whether a forward of `m` rows (unfused step) defers each RMSNorm
    /// between two INT4 GEMMs into them (docs/CUDA.md change 76): f16
    /// activations, M <= [`FUSED_MAX_M`], no post-norms, every block's
    /// q|k|v and gate|up stacked, and each GEMM on a kernel with the
    /// deferred norm ([`deferred_norm_supported`]; with `glu_in_gemm`
    /// ([`Scratch::glu_in_gemm`]) gate|up may instead be a GLU-epilogue
    /// call, which scales its rows itself), one partial-sum count for every
    /// o / down GEMM. The embedding's norm and the final norm stay
    /// launches. [`Scratch::defer_norms`] can turn it off.
    pub fn defers_norms(&self, dev: &CudaDevice, m: usize, glu_in_gemm: bool) -> bool {
        let ok =
            |l: &GpuLinear| matches!(l, GpuLinear::Int4(w) if deferred_norm_supported(dev, m, w));
        let ffn = self.spec.cfg.ffn_size;
        m <= FUSED_MAX_M
            && self.f16_activations()
            && self.deferred_norm_parts().is_some()
            && self.blocks.iter().all(|b| {
                let gate_up_ok = match &b.gate_up {
                    GateUpWeights::Fused(l @ GpuLinear::Int4(w)) => {
                        (glu_in_gemm && w.n == 2 * ffn && glu_epilogue_preferred(dev, m, w))
                            || ok(l)
                    }
                    _ => false,
                };
                matches!(&b.qkv, QkvWeights::Fused(l) if ok(l))
                    && b.post_attn_norm.is_none()
                    && b.post_ffn_norm.is_none()
                    && ok(&b.wo)
                    && ok(&b.down)
                    && gate_up_ok
            })
    }

    /// Partial sums per row that every o and down GEMM writes when the
    /// norms are deferred (one count for all, INT4 weights), or None.
    fn deferred_norm_parts(&self) -> Option<usize> {
        let mut parts = None;
        for b in &self.blocks {
            for l in [&b.wo, &b.down] {
                let GpuLinear::Int4(w) = l else { return None };
                let p = row_square_parts(w);
                if *parts.get_or_insert(p) != p {
                    return None;
                }
            }
        }
        parts
    }

    /// Runs `m` rows whose ids, sequences and positions are in `s`; writes
    /// their keys and values into `cache`, the logits of `which` rows into
    /// `s.logits` (soft-capped when the model caps them) and, by `select`,
    /// a token per logits row into `s.next_ids`. Returns the number of
    /// logits rows. Allocates nothing and does not synchronise.
    pub fn forward_rows<'k>(
        &self,
        dev: &Arc<CudaDevice>,
        kv: impl Into<KvTarget<'k>>,
        s: &mut Scratch,
        m: usize,
        which: LogitRows,
        select: impl Into<Select>,
    ) -> Result<usize> {
        self.forward_rows_timed(dev, kv.into(), s, m, which, select.into(), None)
    }

    /// [`Self::forward_rows`], recording an event after each kernel group
    /// into `prof` when given (`marlin bench decode --breakdown`; not for
    /// capture: the timer spins before each layer).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_rows_timed(
        &self,
        dev: &Arc<CudaDevice>,
        kv: KvTarget<'_>,
        s: &mut Scratch,
        m: usize,
        which: LogitRows,
        select: Select,
        prof: Option<&mut StageTimer>,
    ) -> Result<usize> {
        let n_logits = match which {
            LogitRows::Last => 1,
            LogitRows::All => m,
            LogitRows::Tail(n) => n,
        };
        if m == 0 || m > s.max_m || n_logits > m || n_logits > s.logit_rows {
            return Err(GpuError::Invalid(format!(
                "forward of {m} rows ({n_logits} with logits) in a scratch for {} ({} with logits)",
                s.max_m, s.logit_rows
            )));
        }
        let skip = s.skip_for_diagnosis;
        let glu_in_gemm = s.glu_in_gemm;
        let norm_form = s.norm_form;
        // Greedy tokens from the LM head's stage (not when a diagnosis
        // leaves the LM head out).
        let argmax_in_lm_head = matches!(select, Select::Argmax)
            && split_argmax_enabled()
            && argmax_in_lm_head_enabled()
            && skip != SkipForDiagnosis::Gemms
            && n_logits > 0;
        // A timing diagnosis leaves kernels out of the unfused step.
        let fuse = s.fuse_ops && skip == SkipForDiagnosis::Nothing && self.fused_ops(dev, m);
        let defer_norms = !fuse
            && s.defer_norms
            && skip == SkipForDiagnosis::Nothing
            && self.defers_norms(dev, m, glu_in_gemm);
        let row_sum_parts = self.deferred_norm_parts().unwrap_or(0);
        // One token on a slot cache: the persistent kernel (a breakdown
        // times the layered step's stages instead).
        let persistent_on = s.persistent_layers
            && m == 1
            && skip == SkipForDiagnosis::Nothing
            && prof.is_none()
            && matches!(kv, KvTarget::Slots(_));
        let Scratch {
            ids,
            row_seq,
            row_pos,
            distinct_seqs,
            uniforms,
            row_params,
            logits,
            next_ids,
            argmax_ws,
            x,
            q,
            attn32,
            lin,
            ws,
            acts,
            row_sums,
            persistent,
            ..
        } = s;
        let mut io = StepIo {
            ids,
            row_seq,
            row_pos,
            distinct_seqs: *distinct_seqs || m == 1,
            x,
            q,
            attn32,
            logits,
            g: GemmScratch { lin, ws },
            skip,
            glu_in_gemm,
            norm_form,
            defer_norms,
            row_sums,
            row_sum_parts,
            argmax: argmax_in_lm_head.then_some(ArgmaxOut {
                ws: &mut *argmax_ws,
                next_ids: &mut *next_ids,
            }),
            persistent: persistent.as_mut().filter(|_| persistent_on),
        };
        let mut prof = prof;
        let mut kv = kv;
        match acts {
            Acts::F32(a) => {
                self.forward_t(dev, &mut kv, &mut io, a, m, n_logits, false, &mut prof)?
            }
            Acts::F16(a) => {
                self.forward_t(dev, &mut kv, &mut io, a, m, n_logits, fuse, &mut prof)?
            }
        }
        let vocab = self.spec.cfg.vocab_size;
        match select {
            _ if n_logits == 0 || argmax_in_lm_head => {}
            Select::None => {}
            Select::Argmax if split_argmax_enabled() => {
                ops::argmax_rows_ws(dev, logits, n_logits, vocab, argmax_ws, next_ids)?
            }
            Select::Argmax => ops::argmax_rows(dev, logits, n_logits, vocab, next_ids)?,
            Select::Sample(p) if split_argmax_enabled() => ops::sample_rows_ws(
                dev, logits, n_logits, vocab, &p, uniforms, argmax_ws, next_ids,
            )?,
            Select::Sample(p) => {
                ops::sample_rows(dev, logits, n_logits, vocab, &p, uniforms, next_ids)?
            }
            Select::Rows if split_argmax_enabled() => ops::sample_rows_each_ws(
                dev, logits, n_logits, vocab, row_params, argmax_ws, next_ids,
            )?,
            Select::Rows => {
                ops::sample_rows_each(dev, logits, n_logits, vocab, row_params, next_ids)?
            }
        }
        mark(&mut prof, dev, Stage::Select)?;
        Ok(n_logits)
    }

    /// The layers and the LM head on activations of type `T`.
    /// `n_logits` (<= m): the last rows that get logits.
    #[allow(clippy::too_many_arguments)]
    fn forward_t<T: DecoderAct>(
        &self,
        dev: &Arc<CudaDevice>,
        kv: &mut KvTarget<'_>,
        io: &mut StepIo<'_>,
        a: &mut ActBufs<T>,
        m: usize,
        n_logits: usize,
        fuse: bool,
        prof: &mut Option<&mut StageTimer>,
    ) -> Result<()> {
        let c = &self.spec.cfg;
        let (d, eps, off) = (c.hidden_size, c.rms_eps, 0.0f32);
        // `fuse` (f16 activations, `Self::fused_ops`): each RMSNorm in the
        // next GEMM's activation load, each residual add in the o / down
        // GEMM's store, the GLU in the down GEMM's load (5 launches per
        // layer instead of 8).
        let fuse = fuse && T::IS_F16;
        begin(prof, dev)?;
        match &self.embed {
            GpuEmbedding::Table(t) => t.get_rows(dev, io.ids, m, self.spec.embed_scale, io.x)?,
            GpuEmbedding::Dense { table, vocab } => ops::embedding_rows(
                dev,
                table,
                *vocab,
                d,
                io.ids,
                m,
                self.spec.embed_scale,
                io.x,
            )?,
        }
        let persistent = match (io.persistent.take(), &mut *kv) {
            (Some(p), KvTarget::Slots(cache)) if m == 1 => Some((p, cache)),
            _ => None,
        };
        let ran_persistent = persistent.is_some();
        let first_norm = if let Some((p, cache)) = persistent {
            // Every layer in one launch; then the final norm and the head.
            let (_, layers) = self.persistent_layer_weights().ok_or_else(|| {
                GpuError::Invalid("persistent kernel for a model outside its scope".into())
            })?;
            let rope = &self.ropes[self.spec.layers[0].rope];
            p.run(dev, &layers, io.x, rope, cache, io.row_seq, io.row_pos)?;
            Some(&self.out_norm)
        } else if !fuse && !io.skips(SkipForDiagnosis::SmallOps) {
            Some(&self.blocks[0].attn_norm)
        } else {
            None
        };
        if let Some(norm) = first_norm {
            ops::resid_norm_with::<T>(
                dev,
                io.norm_form,
                io.x,
                None,
                None,
                norm,
                m,
                d,
                eps,
                off,
                &mut a.h,
            )?;
        }
        mark(prof, dev, Stage::Embed)?;
        for (il, b) in self.blocks.iter().enumerate().filter(|_| !ran_persistent) {
            begin(prof, dev)?;
            self.attention(dev, il, b, kv, io, a, m, fuse, prof)?;
            if fuse {
                // x already holds x + attn (o GEMM epilogue); the gate|up
                // GEMM normalises it itself.
                self.mlp(dev, b, io, a, m, fuse, None, prof)?;
                if il + 1 == self.blocks.len() {
                    ops::resid_norm_with::<T>(
                        dev,
                        io.norm_form,
                        io.x,
                        None,
                        None,
                        &self.out_norm,
                        m,
                        d,
                        eps,
                        off,
                        &mut a.h,
                    )?;
                    mark(prof, dev, Stage::ResidNorm)?;
                }
                continue;
            }
            // x += post_norm(attn); h = ffn_norm(x) (deferred: the o GEMM
            // added the residual and wrote the norm's inputs).
            if !io.defer_norms
                && !io.skips(SkipForDiagnosis::SmallOps)
                && !io.skips(SkipForDiagnosis::Norms)
            {
                ops::resid_norm_with::<T>(
                    dev,
                    io.norm_form,
                    io.x,
                    Some(&a.delta),
                    b.post_attn_norm.as_ref(),
                    &b.ffn_norm,
                    m,
                    d,
                    eps,
                    off,
                    &mut a.h,
                )?;
            }
            mark(prof, dev, Stage::ResidNorm)?;
            // Deferred: the down GEMM adds the residual and writes the next
            // block's norm inputs (the final norm stays a launch).
            let defer_next = self
                .blocks
                .get(il + 1)
                .filter(|_| io.defer_norms)
                .map(|nb| &nb.attn_norm);
            self.mlp(dev, b, io, a, m, fuse, defer_next, prof)?;
            // x += post_norm(ffn); h = next block's attn_norm(x) (or the final norm)
            let next_norm = match self.blocks.get(il + 1) {
                Some(nb) => &nb.attn_norm,
                None => &self.out_norm,
            };
            let last = il + 1 == self.blocks.len();
            if defer_next.is_none()
                && !io.skips(SkipForDiagnosis::SmallOps)
                && (last || !io.skips(SkipForDiagnosis::Norms))
            {
                ops::resid_norm_with::<T>(
                    dev,
                    io.norm_form,
                    io.x,
                    Some(&a.delta),
                    b.post_ffn_norm.as_ref(),
                    next_norm,
                    m,
                    d,
                    eps,
                    off,
                    &mut a.h,
                )?;
            }
            mark(prof, dev, Stage::ResidNorm)?;
        }
        // a.h = final-normed rows; the LM head runs on the wanted ones only.
        begin(prof, dev)?;
        let (vocab, cap, n) = (c.vocab_size, c.final_logit_softcap, n_logits);
        if io.skips(SkipForDiagnosis::Gemms) {
        } else if n == m {
            T::lm_head(
                &self.lm_head,
                dev,
                &a.h,
                m,
                vocab,
                cap,
                &mut a.lm_out,
                io.logits,
                &mut io.g,
                io.argmax.take(),
            )?;
        } else if n > 0 {
            let src = a.h.slice((m - n) * d..m * d);
            dev.stream()
                .memcpy_dtod(&src, &mut a.last.slice_mut(0..n * d))
                .map_err(|e| driver_err("copy of the LM head rows", e))?;
            T::lm_head(
                &self.lm_head,
                dev,
                &a.last,
                n,
                vocab,
                cap,
                &mut a.lm_out,
                io.logits,
                &mut io.g,
                io.argmax.take(),
            )?;
        }
        mark(prof, dev, Stage::LmHead)
    }

    /// `a.h` (m, d) -> `a.delta` (m, d); writes this layer's keys and values.
    /// `fuse` ([`Self::fused_ops`]): `io.x` (m, d) -> `io.x += attn` instead
    /// (q|k|v GEMM with the RMSNorm prologue, o GEMM with the residual add).
    #[allow(clippy::too_many_arguments)]
    fn attention<T: DecoderAct>(
        &self,
        dev: &Arc<CudaDevice>,
        il: usize,
        b: &GpuBlock,
        kv: &mut KvTarget<'_>,
        io: &mut StepIo<'_>,
        a: &mut ActBufs<T>,
        m: usize,
        fuse: bool,
        prof: &mut Option<&mut StageTimer>,
    ) -> Result<()> {
        let c = &self.spec.cfg;
        let ls = &self.spec.layers[il];
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let (qv, kv_rows, vv) = match &b.qkv {
            QkvWeights::Separate { q, k, v } => {
                if !io.skips(SkipForDiagnosis::Gemms) {
                    T::linear(q, dev, &a.h, m, &mut a.q, &mut io.g)?;
                    T::linear(k, dev, &a.h, m, &mut a.k, &mut io.g)?;
                    T::linear(v, dev, &a.h, m, &mut a.v, &mut io.g)?;
                }
                (
                    ProjRows {
                        data: a.q.as_view(),
                        stride: qd,
                    },
                    ProjRows {
                        data: a.k.as_view(),
                        stride: kvd,
                    },
                    ProjRows {
                        data: a.v.as_view(),
                        stride: kvd,
                    },
                )
            }
            QkvWeights::Fused(w) => {
                let width = qd + 2 * kvd;
                if fuse {
                    let input = FusedIn::RmsNorm {
                        x: &*io.x,
                        weight: &b.attn_norm,
                        eps: c.rms_eps,
                    };
                    let out = FusedOut::Store(&mut a.fused);
                    T::linear_fused(w, dev, input, m, out, &mut io.g)?;
                } else if io.defer_norms && il > 0 {
                    // a.h: the previous down GEMM's weighted, unnormalised rows.
                    let input = FusedIn::DeferredNorm(
                        &a.h,
                        DeferredNormIn {
                            sums: &*io.row_sums,
                            parts: io.row_sum_parts,
                            eps: c.rms_eps,
                        },
                    );
                    T::linear_fused(w, dev, input, m, FusedOut::Store(&mut a.fused), &mut io.g)?;
                } else if !io.skips(SkipForDiagnosis::Gemms) {
                    T::linear(w, dev, &a.h, m, &mut a.fused, &mut io.g)?;
                }
                (
                    ProjRows {
                        data: a.fused.slice(0..),
                        stride: width,
                    },
                    ProjRows {
                        data: a.fused.slice(qd..),
                        stride: width,
                    },
                    ProjRows {
                        data: a.fused.slice(qd + kvd..),
                        stride: width,
                    },
                )
            }
        };
        mark(prof, dev, Stage::QkvGemm)?;
        let qk_norm = match (&b.q_norm, &b.k_norm) {
            (Some(qn), Some(kn)) => Some((qn, kn)),
            _ => None,
        };
        let shape = HeadShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        let rope = &self.ropes[ls.rope];
        let params = AttnParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: self.spec.attn_scale,
            window: ls.window,
            softcap: None,
        };
        // What the one-launch attention kernels rope, norm and store.
        let inp = RopeInputs {
            q: &qv,
            k: &kv_rows,
            v: &vv,
            qk_norm,
            eps: c.rms_eps,
            w_offset: 0.0,
            rope,
        };
        match kv {
            _ if io.skips(SkipForDiagnosis::SmallOps) => {}
            KvTarget::Slots(cache)
                if io.distinct_seqs
                    && m <= ops::DECODE_MAX_ROWS.max(cache.n_seqs())
                    && ops::SUPPORTED_HEAD_DIMS.contains(&c.head_dim)
                    && ops::attn_rope_fusion_enabled() =>
            {
                // One launch: QK-norm, RoPE and the KV write in attention.
                ops::attention_decode_rope(
                    dev,
                    &params,
                    &inp,
                    cache,
                    il,
                    m,
                    io.row_seq,
                    io.row_pos,
                    &mut a.attn,
                )?;
            }
            KvTarget::Slots(cache) => {
                let dest = KvDest::Cache { cache, layer: il };
                ops::qkv_rope_kv(
                    dev, &qv, &kv_rows, &vv, m, shape, qk_norm, c.rms_eps, 0.0, rope, dest,
                    io.row_seq, io.row_pos, io.q,
                )?;
                mark(prof, dev, Stage::QkvRopeKv)?;
                ops::attention(
                    dev,
                    &params,
                    io.q,
                    cache,
                    il,
                    m,
                    io.row_seq,
                    io.row_pos,
                    &mut a.attn,
                )?;
            }
            KvTarget::Store(store) => {
                // One row per sequence (a decode pass): the contiguous
                // path's one launch, through the pool's block tables.
                let one_launch = io.distinct_seqs
                    && ops::SUPPORTED_HEAD_DIMS.contains(&c.head_dim)
                    && ops::attn_rope_fusion_enabled()
                    && ops::paged_rope_fusion_enabled();
                match store.paged_pool() {
                    Some(pool) if one_launch => {
                        ops::paged_attention_decode_rope(
                            dev,
                            &params,
                            &inp,
                            pool,
                            il,
                            m,
                            io.row_seq,
                            io.row_pos,
                            &mut a.attn,
                        )?;
                    }
                    _ => {
                        let dest = store.kv_dest(il);
                        ops::qkv_rope_kv(
                            dev, &qv, &kv_rows, &vv, m, shape, qk_norm, c.rms_eps, 0.0, rope, dest,
                            io.row_seq, io.row_pos, io.q,
                        )?;
                        mark(prof, dev, Stage::QkvRopeKv)?;
                        store
                            .attend(dev, &params, io.q, il, m, io.row_seq, io.row_pos, io.attn32)?;
                        T::from_f32(dev, io.attn32, m * qd, &mut a.attn)?;
                    }
                }
            }
        }
        mark(prof, dev, Stage::Attention)?;
        if fuse {
            let out = FusedOut::AddToResidual(&mut *io.x);
            T::linear_fused(&b.wo, dev, FusedIn::Plain(&a.attn), m, out, &mut io.g)?;
        } else if io.defer_norms {
            let out = FusedOut::AddToResidualNormed {
                resid: &mut *io.x,
                weight: &b.ffn_norm,
                h: &mut a.h,
                sums: &mut *io.row_sums,
            };
            T::linear_fused(&b.wo, dev, FusedIn::Plain(&a.attn), m, out, &mut io.g)?;
        } else if !io.skips(SkipForDiagnosis::Gemms) {
            T::linear(&b.wo, dev, &a.attn, m, &mut a.delta, &mut io.g)?;
        }
        mark(prof, dev, Stage::OGemm)
    }

    /// `a.h` (m, d) -> `a.delta` (m, d); `fuse`: `io.x += mlp(ffn_norm(io.x))`
    /// in two GEMMs (RMSNorm prologue; GLU prologue and residual add).
    /// With deferred norms (`io.defer_norms`) `a.h` holds the weighted,
    /// unnormalised rows; `defer_next` (the next block's attention norm):
    /// the down GEMM adds into `io.x` and writes that norm's inputs into
    /// `a.h` instead of `a.delta`.
    #[allow(clippy::too_many_arguments)]
    fn mlp<T: DecoderAct>(
        &self,
        dev: &Arc<CudaDevice>,
        b: &GpuBlock,
        io: &mut StepIo<'_>,
        a: &mut ActBufs<T>,
        m: usize,
        fuse: bool,
        defer_next: Option<&CudaSlice<f32>>,
        prof: &mut Option<&mut StageTimer>,
    ) -> Result<()> {
        let ffn = self.spec.cfg.ffn_size;
        if fuse {
            let GateUpWeights::Fused(w) = &b.gate_up else {
                return Err(GpuError::Invalid(
                    "fused decode step with separate gate and up weights".into(),
                ));
            };
            let input = FusedIn::RmsNorm {
                x: &*io.x,
                weight: &b.ffn_norm,
                eps: self.spec.cfg.rms_eps,
            };
            T::linear_fused(w, dev, input, m, FusedOut::Store(&mut a.fused), &mut io.g)?;
            mark(prof, dev, Stage::GateUpGemm)?;
            let out = FusedOut::AddToResidual(&mut *io.x);
            T::linear_fused(&b.down, dev, FusedIn::Glu(&a.fused), m, out, &mut io.g)?;
            return mark(prof, dev, Stage::DownGemm);
        }
        let gelu = match self.spec.activation {
            Activation::Silu => false,
            Activation::GeluTanh => true,
        };
        match &b.gate_up {
            GateUpWeights::Separate { gate, up } => {
                if !io.skips(SkipForDiagnosis::Gemms) {
                    T::linear(gate, dev, &a.h, m, &mut a.gate, &mut io.g)?;
                    T::linear(up, dev, &a.h, m, &mut a.up, &mut io.g)?;
                }
                mark(prof, dev, Stage::GateUpGemm)?;
                if io.skips(SkipForDiagnosis::SmallOps) {
                    return self.mlp_down(dev, b, io, a, m, defer_next, prof);
                }
                ops::glu(
                    dev,
                    &a.gate.as_view(),
                    &a.up.as_view(),
                    ffn,
                    m,
                    ffn,
                    gelu,
                    &mut a.act,
                )?;
            }
            GateUpWeights::Fused(w) => {
                // The GLU in the gate|up GEMM's epilogue: one launch, and
                // no GLU kernel between the two GEMMs (under
                // SkipForDiagnosis::SmallOps it stays: it is the GEMM).
                let act = if gelu { GluAct::GeluTanh } else { GluAct::Silu };
                let norm = io.defer_norms.then_some(DeferredNormIn {
                    sums: &*io.row_sums,
                    parts: io.row_sum_parts,
                    eps: self.spec.cfg.rms_eps,
                });
                if io.glu_in_gemm
                    && !io.skips(SkipForDiagnosis::Gemms)
                    && w.rows() == 2 * ffn
                    && T::linear_glu(w, dev, &a.h, norm, m, &mut a.act, act, &mut io.g)?
                {
                    mark(prof, dev, Stage::GateUpGemm)?;
                    mark(prof, dev, Stage::Glu)?;
                    return self.mlp_down(dev, b, io, a, m, defer_next, prof);
                }
                if let Some(norm) = norm {
                    let input = FusedIn::DeferredNorm(&a.h, norm);
                    T::linear_fused(w, dev, input, m, FusedOut::Store(&mut a.fused), &mut io.g)?;
                } else if !io.skips(SkipForDiagnosis::Gemms) {
                    T::linear(w, dev, &a.h, m, &mut a.fused, &mut io.g)?;
                }
                mark(prof, dev, Stage::GateUpGemm)?;
                if io.skips(SkipForDiagnosis::SmallOps) {
                    return self.mlp_down(dev, b, io, a, m, defer_next, prof);
                }
                ops::glu(
                    dev,
                    &a.fused.slice(0..),
                    &a.fused.slice(ffn..),
                    2 * ffn,
                    m,
                    ffn,
                    gelu,
                    &mut a.act,
                )?;
            }
        }
        mark(prof, dev, Stage::Glu)?;
        self.mlp_down(dev, b, io, a, m, defer_next, prof)
    }

    /// The down projection `a.act` -> `a.delta` of the unfused MLP, or with
    /// `defer_next` (the next block's attention norm) the residual add and
    /// that norm's inputs in `a.h` (see [`Self::mlp`]).
    #[allow(clippy::too_many_arguments)]
    fn mlp_down<T: DecoderAct>(
        &self,
        dev: &Arc<CudaDevice>,
        b: &GpuBlock,
        io: &mut StepIo<'_>,
        a: &mut ActBufs<T>,
        m: usize,
        defer_next: Option<&CudaSlice<f32>>,
        prof: &mut Option<&mut StageTimer>,
    ) -> Result<()> {
        if let Some(weight) = defer_next {
            let out = FusedOut::AddToResidualNormed {
                resid: &mut *io.x,
                weight,
                h: &mut a.h,
                sums: &mut *io.row_sums,
            };
            T::linear_fused(&b.down, dev, FusedIn::Plain(&a.act), m, out, &mut io.g)?;
        } else if !io.skips(SkipForDiagnosis::Gemms) {
            T::linear(&b.down, dev, &a.act, m, &mut a.delta, &mut io.g)?;
        }
        mark(prof, dev, Stage::DownGemm)
    }
}

impl StepIo<'_> {
    /// Whether this pass leaves out the kernels of `what` (timing
    /// diagnosis only).
    fn skips(&self, what: SkipForDiagnosis) -> bool {
        self.skip == what
    }
}

/// The f32 buffers and per-row inputs of a step, borrowed from [`Scratch`]
/// beside its typed activations.
struct StepIo<'a> {
    ids: &'a CudaSlice<u32>,
    row_seq: &'a CudaSlice<i32>,
    row_pos: &'a CudaSlice<i32>,
    /// Every row of another sequence (see [`Scratch::distinct_seqs`]).
    distinct_seqs: bool,
    x: &'a mut CudaSlice<f32>,
    q: &'a mut CudaSlice<f32>,
    attn32: &'a mut CudaSlice<f32>,
    logits: &'a mut CudaSlice<f32>,
    g: GemmScratch<'a>,
    /// [`Scratch::skip_for_diagnosis`] of this pass.
    skip: SkipForDiagnosis,
    /// [`Scratch::glu_in_gemm`] of this pass.
    glu_in_gemm: bool,
    /// [`Scratch::norm_form`] of this pass.
    norm_form: ops::NormForm,
    /// This pass defers its norms ([`GpuDecoder::defers_norms`]).
    defer_norms: bool,
    /// [`Scratch::row_sums`], `row_sum_parts` per row.
    row_sums: &'a mut CudaSlice<f32>,
    row_sum_parts: usize,
    /// Greedy token choice in the LM head's stage (taken by it).
    argmax: Option<ArgmaxOut<'a>>,
    /// The persistent kernel, when this pass runs its layers there.
    persistent: Option<&'a mut PersistentLayers>,
}
