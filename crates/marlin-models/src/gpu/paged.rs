//! The serving engine's model on the GPU: [`GpuBatchModel`] is a
//! [`GpuModel`] with a paged f16 KV pool on the device
//! ([`marlin_cuda::ops::PagedKvPool`]) and implements
//! `marlin_engine::serve::BatchModel`, so `marlin serve --device cuda` runs
//! the same engine (continuous batching, chunked prefill, preemption,
//! prefix cache) as the CPU.
//!
//! One `forward_batch` runs every chunk's new tokens as one M-row pass of
//! the ordinary [`super::GpuDecoder`]: all linears see the stacked rows,
//! and the decoder hands each layer's roped keys and values to the pool
//! ([`KvStore`]), which stores them and attends through its block tables
//! (where `GpuSequence` uses the contiguous [`GpuKvCache`]). Rows are
//! independent except through
//! the KV store (every row's keys are written before any row of the layer
//! attends), so a pass may order its rows freely: the rows whose logits the
//! engine wants go last and the LM head runs on those only
//! ([`LogitRows::Tail`]). A batch larger than the pass buffers runs as
//! several passes in order (a chunk split across passes keeps its order).
//!
//! Every chunk is validated before anything runs: a token out of the
//! vocabulary, a block id outside the pool or a chunk past its block
//! table's capacity is an error, never a device fault.
//!
//! A pass of decode rows only (one token per sequence, logits wanted) runs
//! as a CUDA graph when the model's `cuda_graph` option is on: one graph
//! per (rows, table width rounded up to a power of two), captured at the
//! second pass of that shape (the first, eager, loads its kernels and
//! sizes the GEMM workspaces) and captured again whenever a workspace or
//! the block-table buffer was replaced since. Other passes run eagerly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cudarc::driver::{CudaGraph, CudaSlice};
#[cfg(doc)]
use marlin_cuda::ops::GpuKvCache;
use marlin_cuda::ops::{self, AttnParams, DeviceSampling, PagedKvPool, RowChoice};
use marlin_cuda::CudaDevice;
use marlin_engine::serve::{BatchChunk, BatchModel, ModelPick};
use marlin_engine::EngineError;

use super::decoder::{LogitRows, Scratch, Select};
use super::graph::{capture, replay};
use super::stages::StageTimer;
use super::{driver_err, GpuError, GpuModel, Result};
use crate::error::ModelError;

/// A KV store other than the decoder's contiguous [`GpuKvCache`] (which the
/// fused QK-norm / RoPE kernel writes in place): the QK-norm / RoPE launch
/// writes each layer's roped keys and values into it ([`KvStore::kv_dest`]),
/// then it is asked for attention (`KvTarget::Store` in `decoder.rs`). Row
/// `r` of a pass belongs to sequence / block table `row_seq[r]` at position
/// `row_pos[r]`.
pub trait KvStore {
    /// Where the QK-norm / RoPE launch writes layer `layer`'s keys and
    /// values (the paged pool: through its block tables).
    fn kv_dest(&mut self, layer: usize) -> ops::KvDest<'_>;

    /// Attention of `q` (rows, n_heads, head_dim) over the stored keys of
    /// layer `layer` (causal, windowed per `p`) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        dev: &CudaDevice,
        p: &AttnParams,
        q: &CudaSlice<f32>,
        layer: usize,
        rows: usize,
        row_seq: &CudaSlice<i32>,
        row_pos: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()>;

    /// The store as the paged pool, for the one-launch decode attention
    /// ([`ops::paged_attention_decode_rope`]: QK-norm, RoPE, the KV write
    /// and attention of a pass of one row per sequence); `None` (the
    /// default): always the two launches above.
    fn paged_pool(&mut self) -> Option<&mut PagedKvPool> {
        None
    }
}

impl KvStore for PagedKvPool {
    fn kv_dest(&mut self, layer: usize) -> ops::KvDest<'_> {
        ops::KvDest::Paged { pool: self, layer }
    }

    fn attend(
        &self,
        dev: &CudaDevice,
        p: &AttnParams,
        q: &CudaSlice<f32>,
        layer: usize,
        rows: usize,
        row_seq: &CudaSlice<i32>,
        row_pos: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Ok(ops::paged_attention(
            dev, p, q, self, layer, rows, row_seq, row_pos, out,
        )?)
    }

    fn paged_pool(&mut self) -> Option<&mut PagedKvPool> {
        Some(self)
    }
}

/// Device memory left free when the pool is sized from free memory: the
/// larger of this and [`KV_MARGIN_FRACTION`] of the device (cuBLAS
/// workspaces, kernel modules loaded later, the driver's own needs).
pub const KV_MARGIN_MIN_BYTES: usize = 1 << 30;
/// Fraction of the device's memory left free (vLLM's default
/// `gpu_memory_utilization` is 0.9).
pub const KV_MARGIN_FRACTION: f64 = 0.1;

/// Blocks of `block_bytes` that fit in `free` bytes of a `total`-byte device
/// after the safety margin, at most `max_blocks`; an error naming the
/// sizes when not even one fits.
pub fn kv_blocks_for_memory(
    free: usize,
    total: usize,
    block_bytes: usize,
    max_blocks: usize,
) -> Result<usize> {
    if block_bytes == 0 || max_blocks == 0 {
        return Err(GpuError::Invalid(format!(
            "KV pool of {max_blocks} blocks of {block_bytes} bytes"
        )));
    }
    let margin = KV_MARGIN_MIN_BYTES.max((total as f64 * KV_MARGIN_FRACTION) as usize);
    let fit = free.saturating_sub(margin) / block_bytes;
    if fit == 0 {
        return Err(GpuError::Invalid(format!(
            "no room for a KV block of {block_bytes} bytes: {free} bytes free of {total} after \
             the weights, {margin} kept free (pass --num-kv-blocks to choose)"
        )));
    }
    Ok(fit.min(max_blocks))
}

/// How [`GpuBatchModel::new`] sizes its buffers.
#[derive(Clone, Debug)]
pub struct PagedOptions {
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the pool; `None`: as many as free memory holds after the
    /// weights and the pass buffers ([`kv_blocks_for_memory`]), at most
    /// `max_blocks`.
    pub n_blocks: Option<usize>,
    /// Cap of the automatic size (e.g. max sequences x max length / block size).
    pub max_blocks: usize,
    /// Most rows (tokens) of one forward pass; larger batches run as
    /// several passes.
    pub max_rows: usize,
    /// Most logits rows of one pass (sequences wanting logits).
    pub max_logit_rows: usize,
}

impl Default for PagedOptions {
    fn default() -> Self {
        Self {
            block_size: 16,
            n_blocks: None,
            max_blocks: 32 * 4096 / 16,
            max_rows: 512,
            max_logit_rows: 32,
        }
    }
}

/// A consecutive run of one chunk's tokens inside one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub chunk: usize,
    /// First token of the chunk in this piece.
    pub start: usize,
    pub len: usize,
    /// The piece ends its chunk and the chunk wants logits.
    pub logits: bool,
}

/// Splits chunks of `(len, want_logits)` into passes of at most `max_rows`
/// rows and `max_logit_rows` logits rows, keeping chunk order (a chunk's
/// later piece always runs in a later pass than its earlier one).
pub(crate) fn plan_passes(
    chunks: &[(usize, bool)],
    max_rows: usize,
    max_logit_rows: usize,
) -> Vec<Vec<Piece>> {
    let (max_rows, max_logit_rows) = (max_rows.max(1), max_logit_rows.max(1));
    let mut passes = Vec::new();
    let mut pass: Vec<Piece> = Vec::new();
    let (mut rows, mut logit_rows) = (0usize, 0usize);
    for (chunk, &(len, want)) in chunks.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let room = max_rows - rows;
            let take = (len - start).min(room);
            let logits = want && start + take == len;
            if take == 0 || (logits && logit_rows == max_logit_rows) {
                passes.push(std::mem::take(&mut pass));
                rows = 0;
                logit_rows = 0;
                continue;
            }
            pass.push(Piece {
                chunk,
                start,
                len: take,
                logits,
            });
            rows += take;
            logit_rows += usize::from(logits);
            start += take;
        }
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    passes
}

/// Body rows a chunk needs in a pass for attention to take them on the
/// tensor-core tile kernel (as `ops::DECODE_MAX_ROWS` decides for a whole
/// prompt: fewer rows re-read the keys on the decode kernel for less than a
/// tile pass over them costs).
const TILE_BODY_MIN_ROWS: usize = ops::DECODE_MAX_ROWS;

/// The rows of one pass: token id, sequence (the pass's table index) and
/// position of each, in the order the decoder runs them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PassRows {
    pub ids: Vec<u32>,
    pub seq: Vec<i32>,
    pub pos: Vec<i32>,
    /// Rows `0..prompt_rows` are long chunks' bodies (attention's prompt
    /// rows: `PagedKvPool::set_prompt_rows`).
    pub prompt_rows: usize,
    /// The chunk of each of the last `tail.len()` rows, the rows whose
    /// logits are wanted (the LM head's `LogitRows::Tail`).
    pub tail: Vec<usize>,
    /// The first `tail_logits` tail rows' logits go to the host; the rest
    /// want only the token the device picks.
    pub tail_logits: usize,
}

/// Lays out `pass`: the bodies of long chunks (at least
/// [`TILE_BODY_MIN_ROWS`] rows: the tensor-core tile kernel's prompt rows),
/// then short bodies, then the rows wanting logits (those whose token the
/// device picks, `picked[chunk]`, last), each in pass order. A
/// short body takes the decode kernel: the tile kernel walks the keys once
/// per sequence in a tile, so a tile of single rows of many sequences costs
/// as many walks (32 decode rows of 32 sequences taken as prompt rows made
/// an 8B-shaped step 1.9x slower, docs/CUDA.md change 80). Rows are
/// independent except through the KV store, so any order is correct.
pub(crate) fn pass_rows(chunks: &[BatchChunk], pass: &[Piece], picked: &[bool]) -> PassRows {
    let m: usize = pass.iter().map(|p| p.len).sum();
    let mut rows = PassRows {
        ids: Vec::with_capacity(m),
        seq: Vec::with_capacity(m),
        pos: Vec::with_capacity(m),
        prompt_rows: 0,
        tail: Vec::new(),
        tail_logits: 0,
    };
    let (mut short, mut last, mut device) = (Vec::new(), Vec::new(), Vec::new());
    for (t, p) in pass.iter().enumerate() {
        let c = &chunks[p.chunk];
        let tokens = &c.tokens[p.start..p.start + p.len];
        let pos0 = c.pos0 + p.start;
        let body = p.len - usize::from(p.logits);
        let body_rows = tokens[..body]
            .iter()
            .enumerate()
            .map(|(k, &id)| (id, t as i32, (pos0 + k) as i32));
        if body >= TILE_BODY_MIN_ROWS {
            rows.push_all(body_rows);
        } else {
            short.extend(body_rows);
        }
        if p.logits {
            let row = (tokens[body], t as i32, (pos0 + body) as i32);
            if picked.get(p.chunk).copied().unwrap_or(false) {
                device.push((row, p.chunk));
            } else {
                last.push((row, p.chunk));
            }
        }
    }
    rows.prompt_rows = rows.ids.len();
    rows.tail_logits = last.len();
    rows.tail = last.iter().chain(&device).map(|&(_, c)| c).collect();
    let tail_rows = last.into_iter().chain(device).map(|(row, _)| row);
    rows.push_all(short.into_iter().chain(tail_rows));
    rows
}

impl PassRows {
    fn push_all(&mut self, rows: impl Iterator<Item = (u32, i32, i32)>) {
        for (id, seq, pos) in rows {
            self.ids.push(id);
            self.seq.push(seq);
            self.pos.push(pos);
        }
    }
}

/// Decode graphs kept at most; past it the cache starts again (a serving
/// batch changes its size slowly, so few shapes are live at once).
const MAX_DECODE_GRAPHS: usize = 64;

/// The shape a decode graph replays: rows, padded table width, and what
/// the LM head's stage picks ([`select_kind`]).
type DecodeShape = (usize, usize, u8);

/// A decode graph's token choice: 0 none, 1 the split argmax, 2 each row's
/// own choice (read from the scratch's buffer at replay).
fn select_kind(select: Select) -> u8 {
    match select {
        Select::None => 0,
        Select::Argmax => 1,
        Select::Rows | Select::Sample(_) => 2,
    }
}

/// The choice the device makes for a chunk's pick, or `None` when the
/// logits go to the host: penalties or logprobs (the engine's `Logits`), or
/// a top-k between the device's bound and the vocabulary.
fn device_choice(pick: &ModelPick, vocab: usize) -> Option<RowChoice> {
    match *pick {
        ModelPick::Logits => None,
        ModelPick::Argmax => Some(RowChoice::Argmax),
        ModelPick::Draw {
            temperature,
            top_k,
            top_p,
            min_p,
            uniform,
        } => {
            let params = DeviceSampling {
                temperature,
                top_k,
                top_p,
                min_p,
            };
            ops::check_sampling_params(&params, vocab)
                .is_ok()
                .then_some(RowChoice::Draw { params, uniform })
        }
    }
}

/// Which chunks the device picks for (`on_device` may be empty: none).
fn device_flags(on_device: &[Option<RowChoice>]) -> Vec<bool> {
    on_device.iter().map(Option::is_some).collect()
}

/// A captured decode pass and the buffer generations (scratch, pool) it
/// was captured against.
struct DecodeGraph {
    graph: CudaGraph,
    generations: (u64, u64),
}

// SAFETY: CUDA graph objects are not internally synchronised (two threads
// must not use one at once) but are not tied to a thread. The model that
// owns them moves to the engine's thread and is used by one thread at a
// time (`&mut self`), which binds the CUDA context before every pass
// (`GpuBatchModel::forward_timed`).
unsafe impl Send for DecodeGraph {}

/// A [`GpuModel`] with a paged KV pool, driven by the serving engine.
pub struct GpuBatchModel {
    model: Arc<GpuModel>,
    pool: PagedKvPool,
    scratch: Scratch,
    /// Captured decode passes.
    graphs: HashMap<DecodeShape, DecodeGraph>,
    /// Decode shapes that ran eagerly once (their kernels are loaded and
    /// their workspaces sized: capturable).
    warm: HashSet<DecodeShape>,
    captures: usize,
}

impl GpuBatchModel {
    /// Pass buffers first, then the pool (sized from what is left).
    pub fn new(model: Arc<GpuModel>, opts: &PagedOptions) -> Result<Self> {
        if opts.block_size == 0 || opts.max_rows == 0 || opts.max_logit_rows == 0 {
            return Err(GpuError::Invalid(format!(
                "block size {}, rows per pass {} and logits rows per pass {} must be at least 1",
                opts.block_size, opts.max_rows, opts.max_logit_rows
            )));
        }
        let dev = model.device().clone();
        let dec = model.decoder();
        let c = &dec.spec.cfg;
        let scratch = Scratch::new(
            &dev,
            dec,
            opts.max_rows,
            opts.max_logit_rows.min(opts.max_rows),
        )?;
        let block_bytes =
            ops::paged_block_bytes(c.n_layers, c.n_kv_heads, c.head_dim, opts.block_size)
                .ok_or_else(|| GpuError::Invalid("KV block size overflows".into()))?;
        let n_blocks = match opts.n_blocks {
            Some(0) => return Err(GpuError::Invalid("a KV pool of 0 blocks".into())),
            Some(n) => n,
            None => {
                let (free, total) = dev.mem_info()?;
                kv_blocks_for_memory(free, total, block_bytes, opts.max_blocks)?
            }
        };
        let pool = PagedKvPool::new(
            &dev,
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            opts.block_size,
            n_blocks,
        )?;
        Ok(Self {
            model,
            pool,
            scratch,
            graphs: HashMap::new(),
            warm: HashSet::new(),
            captures: 0,
        })
    }

    /// How many decode passes were captured as CUDA graphs so far.
    pub fn graph_captures(&self) -> usize {
        self.captures
    }

    pub fn model(&self) -> &Arc<GpuModel> {
        &self.model
    }

    pub fn pool(&self) -> &PagedKvPool {
        &self.pool
    }

    /// Device bytes of the pool's keys and values.
    pub fn pool_bytes(&self) -> usize {
        self.pool.bytes()
    }

    /// Every chunk is checked before anything runs.
    fn validate(&self, chunks: &[BatchChunk]) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        let (bs, n_blocks) = (self.pool.block_size(), self.pool.n_blocks());
        for (i, c) in chunks.iter().enumerate() {
            if c.tokens.is_empty() {
                return Err(GpuError::Invalid(format!("chunk {i}: no tokens")));
            }
            if let Some(&bad) = c.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::TokenOutOfRange { id: bad, vocab }.into());
            }
            if let Some((j, &id)) = c
                .block_table
                .iter()
                .enumerate()
                .find(|&(_, &id)| id as usize >= n_blocks)
            {
                return Err(GpuError::Invalid(format!(
                    "chunk {i}: block table entry {j} is block {id}, the pool has {n_blocks}"
                )));
            }
            let capacity = c.block_table.len().saturating_mul(bs);
            let end = c.pos0.checked_add(c.tokens.len());
            match end {
                Some(end) if end <= capacity && i32::try_from(end).is_ok() => {}
                _ => {
                    return Err(GpuError::Invalid(format!(
                        "chunk {i}: positions {}..{} past its block table's {capacity} positions",
                        c.pos0,
                        c.pos0.saturating_add(c.tokens.len())
                    )))
                }
            }
        }
        Ok(())
    }

    /// Runs every chunk (see the module doc); per chunk the logits (vocab)
    /// of its last token if it wants them, else an empty vector.
    pub fn forward(&mut self, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        self.forward_timed(chunks, &mut out, None)?;
        Ok(out)
    }

    /// [`Self::forward`] into `out`, whose rows are refilled in place (the
    /// engine keeps them from step to step: `BatchModel::forward_batch_into`).
    pub fn forward_into(&mut self, chunks: &[BatchChunk], out: &mut Vec<Vec<f32>>) -> Result<()> {
        self.forward_timed(chunks, out, None)
    }

    /// [`Self::forward_into`] where each chunk whose `picks[i]` the device
    /// computes (the argmax; the temperature draw, unless its top-k lies
    /// between [`ops::MAX_TOP_K`] and the vocabulary) gets that token in
    /// `picked[i]` ([`marlin_cuda::ops::NO_TOKEN`] for a row of NaN) and an
    /// empty logits row: its logits never leave the device
    /// (`BatchModel::forward_batch_picking`). The others get their logits.
    pub fn forward_picking(
        &mut self,
        chunks: &[BatchChunk],
        picks: &[ModelPick],
        out: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
    ) -> Result<()> {
        if picks.len() != chunks.len() {
            return Err(GpuError::Invalid(format!(
                "{} picks for {} chunks",
                picks.len(),
                chunks.len()
            )));
        }
        let vocab = self.model.config().vocab_size;
        let on_device: Vec<Option<RowChoice>> =
            picks.iter().map(|p| device_choice(p, vocab)).collect();
        self.run(chunks, &on_device, out, picked, None)
    }

    /// [`Self::forward`], recording an event after each kernel group of
    /// every pass into `prof` when given (the serving path's counterpart of
    /// `marlin bench decode --breakdown`: the timer spins before each
    /// layer, so its events time the kernels back to back).
    pub fn forward_timed(
        &mut self,
        chunks: &[BatchChunk],
        out: &mut Vec<Vec<f32>>,
        prof: Option<&mut StageTimer>,
    ) -> Result<()> {
        self.run(chunks, &[], out, &mut Vec::new(), prof)
    }

    /// Every pass of `chunks`; `on_device` is empty (no picks) or one entry
    /// per chunk: the choice the device makes for it.
    fn run(
        &mut self,
        chunks: &[BatchChunk],
        on_device: &[Option<RowChoice>],
        out: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
        mut prof: Option<&mut StageTimer>,
    ) -> Result<()> {
        self.validate(chunks)?;
        let dev = self.model.device().clone();
        // The engine thread is not the thread that loaded the model.
        dev.context()
            .bind_to_thread()
            .map_err(|e| driver_err("binding the CUDA context to the engine thread", e))?;
        let shape: Vec<(usize, bool)> = chunks
            .iter()
            .map(|c| (c.tokens.len(), c.want_logits))
            .collect();
        out.truncate(chunks.len());
        out.resize_with(chunks.len(), Vec::new);
        for row in out.iter_mut() {
            row.clear();
        }
        picked.clear();
        picked.resize(chunks.len(), None);
        for pass in plan_passes(&shape, self.scratch.max_m, self.scratch.logit_rows) {
            self.run_pass(
                &dev,
                chunks,
                on_device,
                &pass,
                out,
                picked,
                prof.as_deref_mut(),
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_pass(
        &mut self,
        dev: &Arc<CudaDevice>,
        chunks: &[BatchChunk],
        on_device: &[Option<RowChoice>],
        pass: &[Piece],
        out: &mut [Vec<f32>],
        picked: &mut [Option<u32>],
        prof: Option<&mut StageTimer>,
    ) -> Result<()> {
        let PassRows {
            ids,
            seq,
            pos,
            prompt_rows,
            tail,
            tail_logits,
        } = pass_rows(chunks, pass, &device_flags(on_device));
        // Rows past the first `tail_logits` of the tail want only a token:
        // the LM head's stage picks it on the device, by the split argmax
        // when every one is an argmax, else by each row's own choice.
        let row_choices: Vec<RowChoice> = tail
            .iter()
            .enumerate()
            .map(|(r, &chunk)| match on_device.get(chunk) {
                Some(&Some(c)) if r >= tail_logits => c,
                _ => RowChoice::None,
            })
            .collect();
        let select = if tail_logits == tail.len() {
            Select::None
        } else if row_choices[tail_logits..]
            .iter()
            .all(|c| *c == RowChoice::Argmax)
        {
            Select::Argmax
        } else {
            self.scratch
                .set_row_choices(dev, &row_choices, self.model.config().vocab_size)?;
            Select::Rows
        };
        let m = ids.len();
        let tables: Vec<&[u32]> = pass.iter().map(|p| chunks[p.chunk].block_table).collect();
        // A pass of decode rows only may replay a graph: its tables padded
        // to a power-of-two width (capped at the pool), so that one graph
        // serves sequences of a range of lengths. Padded with or without
        // graphs: the decode attention's split count follows the width, and
        // a graph's pass must compute exactly what the eager pass does.
        let decode_only = pass.iter().all(|p| p.len == 1 && p.logits);
        let min_width = if decode_only {
            let widest = tables.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
            widest
                .next_power_of_two()
                .min(self.pool.n_blocks())
                .max(widest)
        } else {
            1
        };
        let graph_shape = (decode_only && prof.is_none() && self.model.options().cuda_graph)
            .then_some((m, min_width, select_kind(select)));
        self.pool.set_block_tables_width(dev, &tables, min_width)?;
        // The long bodies come first: attention runs them on the
        // tensor-core tile kernel.
        self.pool.set_prompt_rows(prompt_rows);
        let stream = dev.stream();
        let s = &mut self.scratch;
        stream
            .memcpy_htod(&ids, &mut s.ids.slice_mut(0..m))
            .map_err(|e| driver_err("token ids to the device", e))?;
        // Also records whether the rows are of distinct tables: a pass of
        // one row per sequence runs attention in one launch.
        s.set_row_sequences(dev, &seq)?;
        stream
            .memcpy_htod(&pos, &mut s.row_pos.slice_mut(0..m))
            .map_err(|e| driver_err("positions to the device", e))?;
        let n = tail.len();
        let generations = (
            self.scratch.buffers_generation(),
            self.pool.buffers_generation(),
        );
        let captured = graph_shape
            .and_then(|shape| self.graphs.get(&shape))
            .is_some_and(|g| g.generations == generations);
        match graph_shape {
            Some(shape) if captured || self.warm.contains(&shape) => {
                if !captured {
                    if self.graphs.len() >= MAX_DECODE_GRAPHS {
                        self.graphs.clear();
                    }
                    let (decoder, pool, scratch) =
                        (self.model.decoder(), &mut self.pool, &mut self.scratch);
                    let g = capture(dev, || {
                        decoder
                            .forward_rows(dev, pool, scratch, m, LogitRows::Tail(n), select)
                            .map(|_| ())
                    })?;
                    let graph = DecodeGraph {
                        graph: g,
                        generations,
                    };
                    self.graphs.insert(shape, graph);
                    self.captures += 1;
                }
                if let Some(g) = self.graphs.get(&shape) {
                    replay(&g.graph)?;
                }
            }
            _ => {
                self.model.decoder().forward_rows_timed(
                    dev,
                    (&mut self.pool).into(),
                    &mut self.scratch,
                    m,
                    LogitRows::Tail(n),
                    select,
                    prof,
                )?;
                if let Some(shape) = graph_shape {
                    self.warm.insert(shape);
                }
            }
        }
        if n == 0 {
            return Ok(());
        }
        let vocab = self.model.config().vocab_size;
        let s = &mut self.scratch;
        if tail_logits < n {
            let ids = dev
                .stream()
                .clone_dtoh(&s.next_ids.slice(tail_logits..n))
                .map_err(|e| driver_err("picked tokens to the host", e))?;
            for (&chunk, id) in tail[tail_logits..].iter().zip(ids) {
                picked[chunk] = Some(id);
            }
        }
        let logits = s
            .host_logits
            .fetch(dev, &s.logits.slice(0..tail_logits * vocab))?;
        let mut row_of = vec![None; out.len()];
        for (row, &chunk) in tail[..tail_logits].iter().enumerate() {
            row_of[chunk] = Some(row);
        }
        let copies: Vec<(&mut Vec<f32>, &[f32])> = out
            .iter_mut()
            .zip(row_of)
            .filter_map(|(dst, row)| row.map(|r| (dst, &logits[r * vocab..(r + 1) * vocab])))
            .collect();
        copy_rows(copies);
        Ok(())
    }
}

/// Logits bytes above which [`copy_rows`] spreads the rows over threads.
const PARALLEL_COPY_BYTES: usize = 4 << 20;

/// Copies each source row into its destination (cleared, capacity kept).
/// Large copies run on several threads: one thread copies ~8 GB/s on the
/// H100 machine, so 32 rows of a 128k vocabulary (16 MB) took ~2 ms of a
/// ~7 ms serving step (docs/CUDA.md change 80).
fn copy_rows(mut copies: Vec<(&mut Vec<f32>, &[f32])>) {
    let copy = |part: &mut [(&mut Vec<f32>, &[f32])]| {
        for (dst, src) in part.iter_mut() {
            dst.clear();
            dst.extend_from_slice(src);
        }
    };
    let bytes: usize = copies.iter().map(|c| std::mem::size_of_val(c.1)).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(copies.len());
    if bytes < PARALLEL_COPY_BYTES || threads < 2 {
        copy(&mut copies);
        return;
    }
    let per = copies.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in copies.chunks_mut(per) {
            scope.spawn(move || copy(part));
        }
    });
}

impl BatchModel for GpuBatchModel {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn block_size(&self) -> usize {
        self.pool.block_size()
    }
    fn n_blocks(&self) -> usize {
        self.pool.n_blocks()
    }
    fn forward_batch(
        &mut self,
        chunks: &[BatchChunk],
    ) -> std::result::Result<Vec<Vec<f32>>, EngineError> {
        self.forward(chunks)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
    fn forward_batch_into(
        &mut self,
        chunks: &[BatchChunk],
        logits: &mut Vec<Vec<f32>>,
    ) -> std::result::Result<(), EngineError> {
        self.forward_into(chunks, logits)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
    fn forward_batch_picking(
        &mut self,
        chunks: &[BatchChunk],
        picks: &[ModelPick],
        logits: &mut Vec<Vec<f32>>,
        picked: &mut Vec<Option<u32>>,
    ) -> std::result::Result<(), EngineError> {
        self.forward_picking(chunks, picks, logits, picked)
            .map_err(|e| EngineError::Model(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_lead_short_ones_and_logits_rows_end_the_pass() {
        let long: Vec<u32> = (100..120).collect(); // 20 tokens, logits wanted
        let short = [7u32, 8, 9]; // a 3-token chunk, no logits
        let decode = [5u32]; // a decode row
        let table = [0u32];
        let chunk = |tokens, pos0, want_logits| BatchChunk {
            tokens,
            block_table: &table,
            pos0,
            want_logits,
        };
        let chunks = [
            chunk(&decode[..], 40, true),
            chunk(&short[..], 10, false),
            chunk(&long[..], 3, true),
        ];
        let pass = plan_passes(&[(1, true), (3, false), (20, true)], 64, 8);
        assert_eq!(pass.len(), 1);
        let rows = pass_rows(&chunks, &pass[0], &[]);
        // The long chunk's 19 body rows, the short chunk's 3, then the
        // decode row and the long chunk's last token (pass order).
        assert_eq!(rows.prompt_rows, 19);
        assert_eq!(rows.ids[..19], long[..19]);
        assert_eq!(rows.ids[19..], [7, 8, 9, 5, 119]);
        assert_eq!(rows.seq[17..], [2, 2, 1, 1, 1, 0, 2]);
        assert_eq!(rows.pos[..2], [3, 4]);
        assert_eq!(rows.pos[19..], [10, 11, 12, 40, 22]);
        assert_eq!(rows.tail, [0, 2]);
        assert_eq!(rows.tail_logits, 2);
        // The decode row wants only its argmax: it goes after the long
        // chunk's last token, past the rows whose logits go to the host.
        let rows = pass_rows(&chunks, &pass[0], &[true, false, false]);
        assert_eq!(rows.ids[19..], [7, 8, 9, 119, 5]);
        assert_eq!(rows.pos[19..], [10, 11, 12, 22, 40]);
        assert_eq!((rows.tail.as_slice(), rows.tail_logits), (&[2, 0][..], 1));
        // Below the threshold a body is short: no prompt rows at all.
        let pass = plan_passes(&[(1, true), (3, false)], 64, 8);
        let rows = pass_rows(&chunks[..2], &pass[0], &[]);
        assert_eq!(
            (rows.prompt_rows, rows.ids.as_slice()),
            (0, &[7, 8, 9, 5][..])
        );
    }

    #[test]
    fn rows_are_copied_whole_on_one_or_several_threads() {
        for (rows, vocab) in [(3, 10), (16, 128 * 1024)] {
            let src: Vec<f32> = (0..rows * vocab).map(|i| i as f32).collect();
            // Destinations of other lengths: cleared and refilled.
            let mut dst: Vec<Vec<f32>> = (0..rows).map(|r| vec![-1.0; r]).collect();
            let copies = dst.iter_mut().zip(src.chunks_exact(vocab)).collect();
            copy_rows(copies);
            for (d, s) in dst.iter().zip(src.chunks_exact(vocab)) {
                assert_eq!(d.as_slice(), s);
            }
        }
    }

    #[test]
    fn passes_respect_row_and_logit_limits_in_order() {
        // Everything fits: one pass, pieces are whole chunks.
        let p = plan_passes(&[(5, false), (1, true), (1, true)], 16, 4);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].iter().map(|x| x.len).collect::<Vec<_>>(), [5, 1, 1]);
        assert_eq!(
            p[0].iter().map(|x| x.logits).collect::<Vec<_>>(),
            [false, true, true]
        );
        // A long prompt chunk is split; only its last piece has logits.
        let p = plan_passes(&[(1, true), (20, true)], 8, 4);
        let flat: Vec<(usize, usize, usize, bool)> = p
            .iter()
            .enumerate()
            .flat_map(|(i, pass)| pass.iter().map(move |x| (i, x.start, x.len, x.logits)))
            .collect();
        assert_eq!(
            flat,
            [
                (0, 0, 1, true),
                (0, 0, 7, false),
                (1, 7, 8, false),
                (2, 15, 5, true)
            ]
        );
        // Logits rows are limited too: 5 decode rows, 2 logits rows a pass.
        let p = plan_passes(&[(1, true); 5], 64, 2);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        for pass in &p {
            assert!(pass.iter().map(|x| x.len).sum::<usize>() <= 64);
        }
        // Nothing to run: no pass.
        assert!(plan_passes(&[], 8, 2).is_empty());
    }

    #[test]
    fn pool_sizing_keeps_a_margin_and_names_the_sizes() {
        const GIB: usize = 1 << 30;
        // 80 GiB device, 70 GiB free: 8 GiB kept free, 62 GiB of 1 MiB blocks.
        assert_eq!(
            kv_blocks_for_memory(70 * GIB, 80 * GIB, 1 << 20, usize::MAX).unwrap(),
            (70 * GIB - 8 * GIB) >> 20
        );
        // Capped by what the server can use.
        assert_eq!(
            kv_blocks_for_memory(70 * GIB, 80 * GIB, 1 << 20, 1000).unwrap(),
            1000
        );
        // Small device: at least 1 GiB kept free.
        assert_eq!(
            kv_blocks_for_memory(3 * GIB, 4 * GIB, 1 << 20, usize::MAX).unwrap(),
            (2 * GIB) >> 20
        );
        // Nothing left: an error with the sizes, not a pool of 0 blocks.
        let e = kv_blocks_for_memory(GIB / 2, 80 * GIB, 1 << 20, 100).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("1048576 bytes") && msg.contains("--num-kv-blocks"),
            "{msg}"
        );
        assert!(kv_blocks_for_memory(70 * GIB, 80 * GIB, 0, 100).is_err());
        assert!(kv_blocks_for_memory(70 * GIB, 80 * GIB, 1, 0).is_err());
    }
}
