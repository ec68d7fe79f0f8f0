//! On-device token selection (kernels in `kernels/sampling.cu`): greedy and
//! the CPU sampler's temperature draw (top-k, min-p, top-p; marlin-engine's
//! `sampler/nucleus.rs`, bit for bit), one token per row, no host round
//! trip.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::launch::KernelLaunch;
use super::{check_len, mul, to_i32, to_u32};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};

const MODULE: &str = "decode_sampling";
const SOURCE: &str = include_str!("../kernels/sampling.cu");
/// Threads per row (SAMP_THREADS in the source; the scans assume it).
const THREADS: u32 = 1024;
/// Largest top-k below the vocabulary that the draw takes (SAMP_MAX_K in
/// the source); 0 (off) and any top-k >= the vocabulary take every token.
pub const MAX_TOP_K: usize = 256;
/// u32 words of one row's parameters for [`sample_rows_each`]
/// (SAMP_PARAM_WORDS in the source).
pub const ROW_PARAM_WORDS: usize = 8;
/// Token written for a row whose logits are all NaN.
pub const NO_TOKEN: u32 = u32::MAX;

/// Temperature / top-k / top-p / min-p of [`sample_rows`], as the CPU
/// sampler takes them (marlin-engine `SamplingParams`, without penalties).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampling {
    /// `<= 0`: greedy (argmax).
    pub temperature: f32,
    /// 0 (off) or >= the vocabulary: every token; otherwise at most
    /// [`MAX_TOP_K`].
    pub top_k: usize,
    /// In (0, 1]; 1 keeps every candidate.
    pub top_p: f32,
    /// In [0, 1]; 0 keeps every candidate.
    pub min_p: f32,
}

/// One row's token for [`sample_rows_each`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowChoice {
    /// No token ([`NO_TOKEN`]): the row's logits are read instead.
    None,
    /// The argmax (lowest index on ties, NaN never chosen).
    Argmax,
    /// The temperature draw with `uniform` in [0, 1).
    Draw {
        params: DeviceSampling,
        uniform: f32,
    },
}

/// Largest vocabulary the sampling kernels take: their 32-bit row indices
/// (`begin + chunk`, strided loops) stay below `i32::MAX`.
const MAX_VOCAB: usize = (i32::MAX as usize) - (1 << 20);

fn check_logits(
    what: &str,
    logits_len: usize,
    rows: usize,
    vocab: usize,
    out_len: usize,
) -> Result<()> {
    if vocab == 0 {
        return Err(CudaError::Shape(format!("{what}: empty vocabulary")));
    }
    // The kernels index a row with 32-bit ints and step past its end by up
    // to a chunk plus a block's stride (2^20 leaves room for both).
    if vocab > MAX_VOCAB {
        return Err(CudaError::Shape(format!(
            "{what}: vocabulary of {vocab} entries (at most {MAX_VOCAB})"
        )));
    }
    check_len(
        &format!("{what} logits"),
        logits_len,
        mul(what, rows, vocab)?,
    )?;
    check_len(&format!("{what} out"), out_len, rows)?;
    to_i32(&format!("{what} vocab"), vocab)?;
    to_u32(&format!("{what} rows"), rows)?;
    Ok(())
}

fn row_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[r]` = index of the largest of `logits (rows, vocab)` row `r`; ties go
/// to the lowest index, NaN is never chosen (like the CPU sampler), a row
/// of NaN only gives [`NO_TOKEN`].
pub fn argmax_rows(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    check_logits("argmax_rows", logits.len(), rows, vocab, out.len())?;
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function(MODULE, SOURCE, "samp_argmax", 0)?;
    let vocab_i = vocab as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(logits).arg(out).arg(&vocab_i);
    // SAFETY: argument order and types match samp_argmax; logits hold
    // rows*vocab values, out rows.
    unsafe { b.launch(row_config(rows)) }.map_err(|e| driver_err("launch samp_argmax", e))?;
    Ok(())
}

/// Threads per block of the split argmax (SAMP_SPLIT_THREADS in the source).
const SPLIT_THREADS: u32 = 256;
/// Logits per block of the split argmax at most (a 128k vocabulary takes
/// 32 blocks per row): a few 4-byte loads per thread, all in flight.
const SPLIT_CHUNK: usize = 4096;
/// Blocks of the split argmax per SM at most, over all rows (256 threads
/// each: 8 fill an SM's 2048 threads). Session 13 (docs/CUDA.md change
/// 62): 8, was 2, which left a 32-row launch (Llama-3.1-8B decode at batch
/// 32, 128256 logits per row) 8 blocks per row of ~16k logits each, eight
/// dependent load rounds per thread: 20.8 us of the step on an H100.
const SPLIT_BLOCKS_PER_SM: usize = 8;

/// Device state of [`argmax_rows_ws`] and [`sample_rows_ws`] /
/// [`sample_rows_each_ws`] for up to `rows` rows: a packed (value, index)
/// key and a ticket per row, zero between launches (the last block of each
/// row resets its pair), so one workspace serves every step, captured or
/// not, on one stream; and the split draw's per-block weight sums (written
/// before they are read in every launch).
pub struct ArgmaxWorkspace {
    best: CudaSlice<u64>,
    tickets: CudaSlice<u32>,
    block_sums: CudaSlice<u64>,
    /// The split top-k draw's candidates (per row and block, top_k logits
    /// and their token ids) and the split top-p draw's (per row, the cut
    /// bin's tokens).
    cand_val: CudaSlice<f32>,
    cand_idx: CudaSlice<u32>,
    /// The split top-p draw's per-row histogram (zero between launches)
    /// and state (flag, cut bin, its tokens, slot counter; target, need).
    hist_mass: CudaSlice<u64>,
    hist_count: CudaSlice<u32>,
    topp_state: CudaSlice<u32>,
    topp_state64: CudaSlice<u64>,
    rows: usize,
}

impl ArgmaxWorkspace {
    pub fn new(dev: &CudaDevice, rows: usize) -> Result<Self> {
        // The split grids: at most max(rows, SPLIT_BLOCKS_PER_SM x SMs)
        // blocks over all rows (split_config; the top-k grid has fewer).
        let blocks = rows.max(SPLIT_BLOCKS_PER_SM * dev.sm_count()).max(1);
        let bins = mul("split top-p histogram", rows, LIN_BINS)?;
        let cands = mul("split top-k candidates", blocks, MAX_TOP_K)?.max(bins);
        Ok(Self {
            best: dev.alloc_zeros("argmax keys", rows)?,
            tickets: dev.alloc_zeros("argmax tickets", rows)?,
            block_sums: dev.alloc_zeros("split draw sums", 2 * blocks)?,
            cand_val: dev.alloc_zeros("split draw candidates", cands)?,
            cand_idx: dev.alloc_zeros("split draw candidate ids", cands)?,
            hist_mass: dev.alloc_zeros("split top-p histogram", bins)?,
            hist_count: dev.alloc_zeros("split top-p counts", bins)?,
            topp_state: dev.alloc_zeros("split top-p state", 4 * rows.max(1))?,
            topp_state64: dev.alloc_zeros("split top-p targets", 2 * rows.max(1))?,
            rows,
        })
    }

    /// Rows one launch may take.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// [`argmax_rows`] with many blocks per row (the same result: ties to the
/// lowest index, NaN never chosen, [`NO_TOKEN`] for a row of NaN): one
/// block per [`SPLIT_CHUNK`] logits (at most [`SPLIT_BLOCKS_PER_SM`] blocks
/// per SM in all),
/// merged through `ws`. A programmatic dependent launch (it waits for the
/// previous kernel before reading the logits).
pub fn argmax_rows_ws(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    check_logits("argmax_rows_ws", logits.len(), rows, vocab, out.len())?;
    let Some((cfg, chunk_i)) = split_config(dev, "argmax_rows_ws", rows, vocab, ws)? else {
        return Ok(());
    };
    let vocab_i = vocab as i32;
    let name = "samp_argmax_split";
    let func = dev.function(MODULE, SOURCE, name, 0)?;
    let mut b = KernelLaunch::new(dev, &func, name);
    b.arg(logits)
        .arg(out)
        .arg(&vocab_i)
        .arg(&chunk_i)
        .arg(&ws.best)
        .arg(&ws.tickets);
    // SAFETY: argument order and types match samp_argmax_split; logits hold
    // rows*vocab values, out rows, the workspace rows zeroed keys and
    // tickets (rows <= ws.rows, checked by split_config); blocks * chunk >=
    // vocab and every block reads only [blockIdx.x * chunk, min(vocab,
    // ..+chunk)); the kernel waits on its predecessor before reading
    // anything.
    unsafe { b.launch_pdl(cfg) }
}

/// [`argmax_rows_ws`] of an f16 LM head's output `x (rows, vocab)`, which
/// the same launch also converts into the f32 `logits` (soft-capped by
/// `cap` like [`super::logits_from_f16`]): one launch instead of the
/// conversion and the argmax.
#[allow(clippy::too_many_arguments)]
pub fn argmax_rows_ws_f16(
    dev: &CudaDevice,
    x: &CudaSlice<half::f16>,
    rows: usize,
    vocab: usize,
    cap: Option<f32>,
    logits: &mut CudaSlice<f32>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let what = "argmax_rows_ws_f16";
    check_logits(what, logits.len(), rows, vocab, out.len())?;
    check_len(&format!("{what} x"), x.len(), mul(what, rows, vocab)?)?;
    let cap = match cap {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            return Err(CudaError::Shape(format!(
                "{what}: cap {c} must be positive"
            )))
        }
        Some(c) => c,
        None => 0.0,
    };
    let Some((cfg, chunk_i)) = split_config(dev, what, rows, vocab, ws)? else {
        return Ok(());
    };
    let vocab_i = vocab as i32;
    let name = "samp_argmax_split_f16";
    let func = dev.function(MODULE, SOURCE, name, 0)?;
    let mut b = KernelLaunch::new(dev, &func, name);
    b.arg(x)
        .arg(&*logits)
        .arg(&cap)
        .arg(out)
        .arg(&vocab_i)
        .arg(&chunk_i)
        .arg(&ws.best)
        .arg(&ws.tickets);
    // SAFETY: argument order and types match samp_argmax_split_f16; x and
    // logits hold rows*vocab values, out rows, the workspace rows zeroed
    // keys and tickets (checked above and by split_config); every block
    // reads and writes only [blockIdx.x * chunk, min(vocab, ..+chunk)) of
    // its row, after waiting on its predecessor.
    unsafe { b.launch_pdl(cfg) }
}

/// Grid of the split argmax for `rows` rows of `vocab` (and its chunk per
/// block), None for no rows; checks the workspace and the grid limit.
fn split_config(
    dev: &CudaDevice,
    what: &str,
    rows: usize,
    vocab: usize,
    ws: &ArgmaxWorkspace,
) -> Result<Option<(LaunchConfig, i32)>> {
    if rows > ws.rows {
        return Err(CudaError::Shape(format!(
            "{what}: {rows} rows in a workspace for {}",
            ws.rows
        )));
    }
    if rows == 0 {
        return Ok(None);
    }
    if rows > 65_535 {
        return Err(CudaError::Shape(format!(
            "{what}: {rows} rows exceed the grid's 65535"
        )));
    }
    let per_row_cap = (SPLIT_BLOCKS_PER_SM * dev.sm_count() / rows).max(1);
    let blocks = vocab.div_ceil(SPLIT_CHUNK).min(per_row_cap).max(1);
    let chunk = vocab.div_ceil(blocks);
    let chunk_i = to_i32(&format!("{what} chunk"), chunk)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, rows as u32, 1),
        block_dim: (SPLIT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok(Some((cfg, chunk_i)))
}

/// Checks sampling parameters as [`sample_rows`] does, without a launch
/// (callers that queue other work first reject bad parameters up front).
pub fn check_sampling_params(p: &DeviceSampling, vocab: usize) -> Result<()> {
    check_sampling(p, vocab).map(|_| ())
}

/// The kernel's `(top_k, 1/temperature)`, or None for greedy.
pub(crate) fn check_sampling(p: &DeviceSampling, vocab: usize) -> Result<Option<(i32, f32)>> {
    if p.top_k > MAX_TOP_K && p.top_k < vocab {
        return Err(CudaError::Unsupported(format!(
            "sample_rows: top_k {} of a {vocab}-token vocabulary (at most {MAX_TOP_K} on the GPU, \
             or 0 for every token)",
            p.top_k
        )));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(CudaError::Shape(format!(
            "sample_rows: top_p {} must be in (0, 1]",
            p.top_p
        )));
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return Err(CudaError::Shape(format!(
            "sample_rows: min_p {} must be in [0, 1]",
            p.min_p
        )));
    }
    if p.temperature.is_nan() {
        return Err(CudaError::Shape("sample_rows: temperature is NaN".into()));
    }
    let inv_t = 1.0 / p.temperature;
    // A temperature whose inverse overflows is greedy in the limit (the CPU
    // sampler's rule); top-k 1 keeps only the best token.
    if p.temperature <= 0.0 || p.top_k == 1 || !inv_t.is_finite() {
        return Ok(None);
    }
    // Off and >= vocab both mean every token (the kernel's dense path).
    let k = if p.top_k >= vocab { 0 } else { p.top_k as i32 };
    Ok(Some((k, inv_t)))
}

/// The packed parameters of [`sample_rows_each`] for `choices` (one row
/// each): validated, ROW_PARAM_WORDS u32 per row (mode: 0 argmax, 1 draw,
/// 2 none; 1/temperature bits,
/// top-k, top-p bits, min-p bits, uniform bits, 2 unused).
pub fn pack_row_choices(choices: &[RowChoice], vocab: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(mul("row choices", choices.len(), ROW_PARAM_WORDS)?);
    for c in choices {
        let words = match *c {
            RowChoice::None => [2, 0, 0, 0, 0, 0, 0, 0],
            RowChoice::Argmax => [0u32; ROW_PARAM_WORDS],
            RowChoice::Draw { params, uniform } => {
                if !(0.0..1.0).contains(&uniform) {
                    return Err(CudaError::Shape(format!(
                        "sample_rows_each: uniform {uniform} outside [0, 1)"
                    )));
                }
                match check_sampling(&params, vocab)? {
                    None => [0u32; ROW_PARAM_WORDS],
                    Some((k, inv_t)) => [
                        1,
                        inv_t.to_bits(),
                        k as u32,
                        params.top_p.to_bits(),
                        params.min_p.to_bits(),
                        uniform.to_bits(),
                        0,
                        0,
                    ],
                }
            }
        };
        out.extend_from_slice(&words);
    }
    Ok(out)
}

/// One token per row of `logits (rows, vocab)` drawn with `uniforms[r]` in
/// [0, 1) (a device buffer the caller refills per step, e.g. from its seeded
/// RNG), by the CPU sampler's definition: the token the CPU sampler picks
/// for the same logits and uniform. Greedy when the temperature is <= 0 or
/// top_k is 1.
pub fn sample_rows(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: &DeviceSampling,
    uniforms: &CudaSlice<f32>,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    check_logits("sample_rows", logits.len(), rows, vocab, out.len())?;
    let Some((k, inv_t)) = check_sampling(params, vocab)? else {
        return argmax_rows(dev, logits, rows, vocab, out);
    };
    check_len("sample_rows uniforms", uniforms.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function(MODULE, SOURCE, "samp_draw", 0)?;
    let vocab_i = vocab as i32;
    let (top_p, min_p) = (params.top_p, params.min_p);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(logits)
        .arg(uniforms)
        .arg(out)
        .arg(&vocab_i)
        .arg(&k)
        .arg(&inv_t)
        .arg(&top_p)
        .arg(&min_p);
    // SAFETY: argument order and types match samp_draw; logits hold
    // rows*vocab values, uniforms and out rows; 0 <= k <= SAMP_MAX_K or 0.
    unsafe { b.launch(row_config(rows)) }.map_err(|e| driver_err("launch samp_draw", e))?;
    Ok(())
}

/// Whether a draw by `(top_k, top_p)` (top-k as [`check_sampling`] returns
/// it: 0 for every token) takes the split draw: no top-k and no top-p cut
/// (samp_split_draw_row in the source).
fn split_draw(top_k: i32, top_p: f32) -> bool {
    top_k == 0 && top_p >= 1.0
}

/// [`sample_rows`] through `ws`: greedy rows by [`argmax_rows_ws`]; draws
/// without top-k and top-p (the OpenAI defaults, min-p allowed) by the
/// split argmax and then a split draw (many blocks per row: a 262k-token
/// row in ~11 us instead of the single-row kernel's 114, docs/CUDA.md
/// change 87); draws with top-k (top-p and min-p allowed: the engine's
/// defaults) by the split top-k draw; draws with top-p alone by the split
/// argmax and the split top-p draw (a row whose cut bin holds more than
/// 2048 tokens, heavy ties, by the single-row kernel). The same tokens as
/// [`sample_rows`], bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn sample_rows_ws(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: &DeviceSampling,
    uniforms: &CudaSlice<f32>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    check_logits("sample_rows_ws", logits.len(), rows, vocab, out.len())?;
    let Some((k, inv_t)) = check_sampling(params, vocab)? else {
        return argmax_rows_ws(dev, logits, rows, vocab, ws, out);
    };
    check_len("sample_rows_ws uniforms", uniforms.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let draws = RowDraws::Same {
        top_k: k,
        inv_t,
        params,
        uniforms,
    };
    if k > 0 {
        return topk_split(dev, logits, rows, vocab, draws, ws, out);
    }
    argmax_rows_ws(dev, logits, rows, vocab, ws, out)?;
    if split_draw(k, params.top_p) {
        return draw_split(dev, logits, rows, vocab, draws, ws, out);
    }
    topp_split(dev, logits, rows, vocab, draws, ws, out)?;
    // The rows whose cut bin holds too many tokens (heavy ties).
    let func = dev.function(MODULE, SOURCE, "samp_draw_topp_fallback", 0)?;
    let vocab_i = vocab as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(logits)
        .arg(uniforms)
        .arg(&*out)
        .arg(&vocab_i)
        .arg(&inv_t)
        .arg(&params.top_p)
        .arg(&params.min_p)
        .arg(&ws.topp_state);
    // SAFETY: argument order and types match samp_draw_topp_fallback;
    // logits hold rows*vocab values, uniforms and out rows, the state 4
    // words per row (rows <= ws.rows, checked by topp_split).
    unsafe { b.launch(row_config(rows)) }
        .map_err(|e| driver_err("launch samp_draw_topp_fallback", e))?;
    Ok(())
}

/// [`sample_rows_each`] through `ws`: the split argmax for every row, the
/// split draw, the split top-k draw and the split top-p draw for the draws
/// [`sample_rows_ws`] takes them for, then the single-row kernel for the
/// rows of no token and the top-p rows left to it (six launches whatever
/// the rows' choices, so that a captured graph serves every step). The
/// same tokens as [`sample_rows_each`].
pub fn sample_rows_each_ws(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: &CudaSlice<u32>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let what = "sample_rows_each_ws";
    check_logits(what, logits.len(), rows, vocab, out.len())?;
    check_len(
        &format!("{what} params"),
        params.len(),
        mul(what, rows, ROW_PARAM_WORDS)?,
    )?;
    if rows == 0 {
        return Ok(());
    }
    argmax_rows_ws(dev, logits, rows, vocab, ws, out)?;
    let draws = RowDraws::Each(params);
    draw_split(dev, logits, rows, vocab, draws, ws, out)?;
    topk_split(dev, logits, rows, vocab, draws, ws, out)?;
    topp_split(dev, logits, rows, vocab, draws, ws, out)?;
    let vocab_i = vocab as i32;
    let func = dev.function(MODULE, SOURCE, "samp_draw_rows_rest", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(logits)
        .arg(params)
        .arg(&*out)
        .arg(&vocab_i)
        .arg(&ws.topp_state);
    // SAFETY: argument order and types match samp_draw_rows_rest (those of
    // samp_draw_rows, then the split top-p state: 4 words per row, rows <=
    // ws.rows checked by split_config); sizes checked above. A plain
    // launch: it starts after the split draws have finished.
    unsafe { b.launch(row_config(rows)) }
        .map_err(|e| driver_err("launch samp_draw_rows_rest", e))?;
    Ok(())
}

/// Blocks of the split top-k and top-p draws per SM at most, over all rows
/// (1024 threads each, for their 2048-bin scans: two fill an SM).
const TOPK_SPLIT_BLOCKS_PER_SM: usize = 2;

/// Whose parameters a split draw launch takes.
#[derive(Clone, Copy)]
enum RowDraws<'a> {
    /// Every row by the same parameters (`top_k` and `inv_t` as
    /// [`check_sampling`] returns them) and its own uniform.
    Same {
        top_k: i32,
        inv_t: f32,
        params: &'a DeviceSampling,
        uniforms: &'a CudaSlice<f32>,
    },
    /// Each row by its words ([`pack_row_choices`]); rows of other choices
    /// are left alone.
    Each(&'a CudaSlice<u32>),
}

impl RowDraws<'_> {
    /// The kernel's entry: `same` or `each` (its `_rows` form).
    fn entry(&self, same: &'static str, each: &'static str) -> &'static str {
        match self {
            RowDraws::Same { .. } => same,
            RowDraws::Each(_) => each,
        }
    }
}

/// Pushes the leading parameters every split draw entry takes (see the
/// "split draw" section of the source): (logits, uniforms, out, vocab,
/// chunk, top_k, inv_t, top_p, min_p) or (logits, params, out, vocab,
/// chunk).
fn push_draw_args(
    b: &mut KernelLaunch<'_>,
    logits: &CudaSlice<f32>,
    out: &CudaSlice<u32>,
    (vocab, chunk): (i32, i32),
    draws: RowDraws<'_>,
) {
    match draws {
        RowDraws::Same {
            top_k,
            inv_t,
            params,
            uniforms,
        } => {
            b.arg(logits)
                .arg(uniforms)
                .arg(out)
                .arg(&vocab)
                .arg(&chunk)
                .arg(&top_k)
                .arg(&inv_t)
                .arg(&params.top_p)
                .arg(&params.min_p);
        }
        RowDraws::Each(params) => {
            b.arg(logits).arg(params).arg(out).arg(&vocab).arg(&chunk);
        }
    }
}

/// The split draw without top-k and top-p (docs/CUDA.md change 87), after
/// the split argmax wrote `out`: per-block kept weight sums, the last block
/// of a row scans the crossing chunk.
fn draw_split(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    draws: RowDraws<'_>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let what = "split draw";
    let Some((cfg, chunk_i)) = split_config(dev, what, rows, vocab, ws)? else {
        return Ok(());
    };
    let blocks = cfg.grid_dim.0 as usize * cfg.grid_dim.1 as usize;
    check_len(&format!("{what} block sums"), ws.block_sums.len(), blocks)?;
    let name = draws.entry("samp_draw_split", "samp_draw_split_rows");
    let func = dev.function(MODULE, SOURCE, name, 0)?;
    let mut b = KernelLaunch::new(dev, &func, name);
    push_draw_args(&mut b, logits, out, (vocab as i32, chunk_i), draws);
    b.arg(&ws.block_sums).arg(&ws.tickets);
    // SAFETY: argument order and types match samp_draw_split /
    // samp_draw_split_rows; logits hold rows*vocab values, out (and
    // uniforms or rows*SAMP_PARAM_WORDS params: the callers checked them)
    // rows; the grid's blocks x rows fit the block sums (checked above) and
    // the rows the zeroed tickets (split_config); every block reads only
    // its row's chunk (and the crossing chunk in the last block), after
    // waiting on its predecessor (the split argmax that wrote out).
    unsafe { b.launch_pdl(cfg) }
}

/// The split top-k draw (docs/CUDA.md change 87 (b)): blocks of 1024
/// threads, one chunk of at least [`SPLIT_CHUNK`] logits each, the
/// chunks' top-k, then the top-k of those.
fn topk_split(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    draws: RowDraws<'_>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let what = "split top-k draw";
    let Some((cfg, chunk_i)) = wide_split_config(dev, what, rows, vocab, ws)? else {
        return Ok(());
    };
    let blocks = cfg.grid_dim.0 as usize;
    let cands = mul(what, mul(what, rows, blocks)?, MAX_TOP_K)?;
    check_len(&format!("{what} candidates"), ws.cand_val.len(), cands)?;
    check_len(&format!("{what} candidates"), ws.cand_idx.len(), cands)?;
    let name = draws.entry("samp_draw_topk_split", "samp_draw_topk_split_rows");
    let func = dev.function(MODULE, SOURCE, name, 0)?;
    let mut b = KernelLaunch::new(dev, &func, name);
    push_draw_args(&mut b, logits, out, (vocab as i32, chunk_i), draws);
    b.arg(&ws.cand_val).arg(&ws.cand_idx).arg(&ws.tickets);
    // SAFETY: argument order and types match samp_draw_topk_split /
    // samp_draw_topk_split_rows; logits hold rows*vocab values, out (and
    // uniforms or rows*SAMP_PARAM_WORDS params: the callers checked them)
    // rows; 0 < top_k <= SAMP_MAX_K (check_sampling, or the kernel's own
    // test of each row's words), so the candidates need rows * blocks *
    // MAX_TOP_K entries at most (checked above); the tickets are zero
    // between launches; it waits on its predecessor before reading.
    unsafe { b.launch_pdl(cfg) }
}

/// Bins of the top-p cut (SAMP_LIN_BINS in the source; also the most
/// tokens of the cut bin the split top-p draw sorts, SAMP_LIN_CAND).
const LIN_BINS: usize = 2048;

/// Grid of the split kernels of 1024 threads (the top-k and top-p draws):
/// chunks of at least [`SPLIT_CHUNK`] logits, at most
/// [`TOPK_SPLIT_BLOCKS_PER_SM`] blocks per SM over all rows; None for no
/// rows. Checks the rows against the workspace and the grid.
fn wide_split_config(
    dev: &CudaDevice,
    what: &str,
    rows: usize,
    vocab: usize,
    ws: &ArgmaxWorkspace,
) -> Result<Option<(LaunchConfig, i32)>> {
    if rows == 0 {
        return Ok(None);
    }
    if rows > ws.rows || rows > 65_535 {
        return Err(CudaError::Shape(format!(
            "{what}: {rows} rows in a workspace for {} (grid limit 65535)",
            ws.rows
        )));
    }
    let per_row_cap = (TOPK_SPLIT_BLOCKS_PER_SM * dev.sm_count() / rows).max(1);
    // The top-p draw's last block keeps one sum per block of its row in a
    // shared array of LIN_BINS entries.
    let blocks = vocab
        .div_ceil(SPLIT_CHUNK)
        .min(per_row_cap)
        .clamp(1, LIN_BINS);
    let chunk = vocab.div_ceil(blocks);
    let chunk_i = to_i32(&format!("{what} chunk"), chunk)?;
    Ok(Some((
        LaunchConfig {
            grid_dim: (blocks as u32, rows as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        },
        chunk_i,
    )))
}

/// The split top-p draw (docs/CUDA.md change 87 (c)), two launches after
/// the split argmax. Rows whose cut bin holds more than [`LIN_BINS`]
/// tokens are flagged for the single-row kernel.
fn topp_split(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    draws: RowDraws<'_>,
    ws: &mut ArgmaxWorkspace,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let what = "split top-p draw";
    let Some((cfg, chunk_i)) = wide_split_config(dev, what, rows, vocab, ws)? else {
        return Ok(());
    };
    let blocks = mul(what, cfg.grid_dim.0 as usize, rows)?;
    check_len(&format!("{what} sums"), ws.block_sums.len(), 2 * blocks)?;
    let bins = mul(what, rows, LIN_BINS)?;
    check_len(&format!("{what} histogram"), ws.hist_mass.len(), bins)?;
    check_len(&format!("{what} histogram"), ws.hist_count.len(), bins)?;
    check_len(&format!("{what} candidates"), ws.cand_val.len(), bins)?;
    check_len(&format!("{what} candidates"), ws.cand_idx.len(), bins)?;
    check_len(&format!("{what} state"), ws.topp_state.len(), 4 * rows)?;
    check_len(&format!("{what} state"), ws.topp_state64.len(), 2 * rows)?;
    for second in [false, true] {
        let name = if second {
            draws.entry("samp_draw_topp_split_b", "samp_draw_topp_split_rows_b")
        } else {
            draws.entry("samp_draw_topp_split_a", "samp_draw_topp_split_rows_a")
        };
        let func = dev.function(MODULE, SOURCE, name, 0)?;
        let mut b = KernelLaunch::new(dev, &func, name);
        push_draw_args(&mut b, logits, out, (vocab as i32, chunk_i), draws);
        b.arg(&ws.block_sums);
        if second {
            b.arg(&ws.cand_val).arg(&ws.cand_idx);
        } else {
            b.arg(&ws.hist_mass).arg(&ws.hist_count);
        }
        b.arg(&ws.topp_state).arg(&ws.topp_state64).arg(&ws.tickets);
        // SAFETY: argument order and types match samp_draw_topp_split_{a,b}
        // / samp_draw_topp_split_rows_{a,b}; logits hold rows*vocab values,
        // out (and uniforms or rows*SAMP_PARAM_WORDS params: the callers
        // checked them) rows; sums 2 per block, histogram and candidates
        // LIN_BINS per row, state 4 + 2 words per row (checked above); the
        // histogram, tickets and slot counters are zero between launches;
        // each waits on its predecessor before reading.
        unsafe { b.launch_pdl(cfg) }?;
    }
    Ok(())
}

/// One token per row of `logits (rows, vocab)`, each row by its own choice:
/// `params` holds [`pack_row_choices`]' words for the rows (a device buffer,
/// so that a captured graph reads each step's choices from it).
pub fn sample_rows_each(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: &CudaSlice<u32>,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    check_logits("sample_rows_each", logits.len(), rows, vocab, out.len())?;
    check_len(
        "sample_rows_each params",
        params.len(),
        mul("sample_rows_each params", rows, ROW_PARAM_WORDS)?,
    )?;
    if rows == 0 {
        return Ok(());
    }
    let func = dev.function(MODULE, SOURCE, "samp_draw_rows", 0)?;
    let vocab_i = vocab as i32;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(logits).arg(params).arg(out).arg(&vocab_i);
    // SAFETY: argument order and types match samp_draw_rows; logits hold
    // rows*vocab values, params rows*SAMP_PARAM_WORDS words (validated by
    // pack_row_choices when the caller built them with it), out rows.
    unsafe { b.launch(row_config(rows)) }.map_err(|e| driver_err("launch samp_draw_rows", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> DeviceSampling {
        DeviceSampling {
            temperature,
            top_k,
            top_p,
            min_p: 0.0,
        }
    }

    #[test]
    fn sampling_params() {
        let v = 1000;
        assert_eq!(check_sampling(&params(0.0, 40, 0.9), v).unwrap(), None);
        assert_eq!(check_sampling(&params(0.8, 1, 0.9), v).unwrap(), None);
        assert_eq!(check_sampling(&params(1e-45, 40, 0.9), v).unwrap(), None);
        assert_eq!(
            check_sampling(&params(0.5, 0, 1.0), v).unwrap(),
            Some((0, 2.0))
        );
        assert_eq!(
            check_sampling(&params(0.5, 5000, 1.0), v).unwrap(),
            Some((0, 2.0))
        );
        assert_eq!(
            check_sampling(&params(0.5, 256, 1.0), v).unwrap(),
            Some((256, 2.0))
        );
        assert!(check_sampling(&params(0.5, 257, 1.0), v).is_err());
        assert!(check_sampling(&params(0.5, 40, 0.0), v).is_err());
        assert!(check_sampling(&params(0.5, 40, 1.5), v).is_err());
        assert!(check_sampling(&params(f32::NAN, 40, 0.9), v).is_err());
        let bad_min_p = DeviceSampling {
            min_p: 1.5,
            ..params(0.5, 40, 0.9)
        };
        assert!(check_sampling(&bad_min_p, v).is_err());
    }

    #[test]
    fn split_draw_takes_draws_without_top_k_and_top_p() {
        assert!(split_draw(0, 1.0));
        assert!(!split_draw(40, 1.0));
        assert!(!split_draw(0, 0.95));
        // check_sampling turns a top-k at or above the vocabulary into 0.
        let (k, _) = check_sampling(&params(0.8, 5000, 1.0), 1000)
            .unwrap()
            .unwrap();
        assert!(split_draw(k, 1.0));
    }

    #[test]
    fn row_choices_pack_eight_words_a_row() {
        let draw = RowChoice::Draw {
            params: DeviceSampling {
                min_p: 0.05,
                ..params(0.5, 40, 0.9)
            },
            uniform: 0.25,
        };
        let greedy_draw = RowChoice::Draw {
            params: params(0.0, 40, 0.9),
            uniform: 0.25,
        };
        let words = pack_row_choices(&[RowChoice::Argmax, draw, greedy_draw], 1000).unwrap();
        assert_eq!(words.len(), 3 * ROW_PARAM_WORDS);
        assert_eq!(&words[..8], &[0; 8]);
        assert_eq!(
            &words[8..16],
            &[
                1,
                2.0f32.to_bits(),
                40,
                0.9f32.to_bits(),
                0.05f32.to_bits(),
                0.25f32.to_bits(),
                0,
                0
            ]
        );
        assert_eq!(&words[16..], &[0; 8], "temperature 0 is the argmax");
        let outside = RowChoice::Draw {
            params: params(0.5, 40, 0.9),
            uniform: 1.0,
        };
        assert!(pack_row_choices(&[outside], 1000).is_err());
        let wide_k = RowChoice::Draw {
            params: params(0.5, 300, 0.9),
            uniform: 0.5,
        };
        assert!(pack_row_choices(&[wide_k], 1000).is_err());
    }

    #[test]
    fn logits_shapes() {
        assert!(check_logits("s", 12, 3, 4, 3).is_ok());
        assert!(check_logits("s", 11, 3, 4, 3).is_err());
        assert!(check_logits("s", 12, 3, 4, 2).is_err());
        assert!(check_logits("s", 0, 0, 0, 0).is_err());
    }
}
