//! The decoder's fused kernels (`kernels/ops.cu`, "fused decode"): each
//! replaces several launches of a decode step, and reads or writes the
//! activations next to a GEMM in that GEMM's own type ([`ActElem`]: f32, or
//! f16 for the INT4 kernels), so that no conversion kernel runs between
//! them.
//!
//! - [`resid_norm`]: residual add (with Gemma's optional post-norm of the
//!   added output) + RMSNorm, output in the next GEMM's input type;
//! - [`qkv_rope_kv`]: QK-norm + RoPE of queries and keys + the KV-cache
//!   write, reading q, k and v in place from one fused projection output;
//! - [`glu`]: SwiGLU / GeGLU over a fused gate|up output;
//! - [`logits_from_f16`]: an f16 LM head's output to f32 logits (with the
//!   soft-cap);
//! - [`spin`]: a timed wait that the per-stage profile of
//!   `marlin bench decode` enqueues ahead of each layer.

use std::sync::Mutex;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use half::f16;

use super::elementwise::check_elementwise;
use super::kv::GpuKvCache;
use super::launch::KernelLaunch;
use super::paged::PagedKvPool;
use super::rope::GpuRope;
use super::{check_len, grid_stride, mul, to_i32, OPS_MODULE, OPS_SOURCE};
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use marlin_cpu::ops::RopeStyle;

/// Element type of the activations a GEMM reads or writes: f32 (GGUF and
/// dense weights) or f16 (INT4 weights). Picks the kernel entry.
pub trait ActElem: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// `f16` when the kernels store f16 bits.
    const IS_F16: bool;
    /// `f32_name` or `f16_name`, by the element type.
    fn pick(f32_name: &'static str, f16_name: &'static str) -> &'static str {
        if Self::IS_F16 {
            f16_name
        } else {
            f32_name
        }
    }
}

impl ActElem for f32 {
    const IS_F16: bool = false;
}

impl ActElem for f16 {
    const IS_F16: bool = true;
}

/// Largest head_dim of [`qkv_rope_kv`] (MOPS_QKV_MAX_HD in the source).
pub const QKV_MAX_HEAD_DIM: usize = 256;
/// Warps (one per head) per block of [`qkv_rope_kv`] (MOPS_QKV_WARPS).
const QKV_WARPS: usize = 4;

/// Threads of the one-block-per-row norm: about 8 elements per thread, so
/// that a single row (decode at batch 1) is spread over many warps.
fn norm_threads(dim: usize) -> u32 {
    (dim.div_ceil(8).div_ceil(32) * 32).clamp(64, 1024) as u32
}

/// Which kernel [`resid_norm_with`] launches (docs/CUDA.md change 44).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormForm {
    /// `mops_resid_norm_*`: 16 values of each array per thread in registers,
    /// 4-byte (f32) / 2-byte (f16) accesses; 128 registers per thread (512
    /// threads at a 4096-wide row: a whole SM's register file).
    Scalar,
    /// `mops_resid_norm_vec_*`: chunks of 4 values through 16-byte (f32) /
    /// 8-byte (f16) accesses, 8 values per thread, at most 64 registers,
    /// one barrier per block sum. Rows with `dim % 4 == 0` and `dim <=`
    /// [`NORM_VEC_MAX_DIM`] on 16-byte aligned buffers; other calls run
    /// [`NormForm::Scalar`].
    Vector,
}

/// Widest row of [`NormForm::Vector`]: 1024 threads of 8 values
/// (MOPS_NORM_VEC_CHUNKS chunks of 4 in the source).
pub const NORM_VEC_MAX_DIM: usize = 1024 * 8;

impl NormForm {
    /// The process default: [`NormForm::Vector`], or [`NormForm::Scalar`]
    /// with `MARLIN_CUDA_NORM_VEC=0` (read once; docs/CUDA.md change 44:
    /// the vector form measured 65-68 / 102-104 / 72-89 us faster per graph
    /// step at batch 1 / 8 / 32 on the H100, three interleaved rounds; the GPU decoder's
    /// `Scratch::norm_form` in marlin-models starts from it, a field that
    /// tests and same-process comparisons set).
    pub fn from_env() -> Self {
        static VEC: crate::knobs::Switch = crate::knobs::Switch::new("MARLIN_CUDA_NORM_VEC", true);
        if VEC.get() {
            NormForm::Vector
        } else {
            NormForm::Scalar
        }
    }
}

/// Threads of the vector norm's block: 8 values each, whole warps.
fn norm_vec_threads(dim: usize) -> u32 {
    ((dim / 4).div_ceil(2).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Whether a row of `dim` values fits [`NormForm::Vector`] (alignment of
/// the buffers aside).
fn norm_vec_fits(dim: usize) -> bool {
    dim.is_multiple_of(4) && dim <= NORM_VEC_MAX_DIM
}

/// Whether `s` starts on a 16-byte boundary (its rows then do too when
/// `dim % 4 == 0`: f32 rows are 16-byte, f16 rows 8-byte multiples).
fn aligned16<T>(dev: &CudaDevice, s: &CudaSlice<T>) -> bool {
    let (p, _sync) = s.device_ptr(dev.stream());
    p.is_multiple_of(16)
}

/// Most threads a block of kernel `name` may have (its registers decide;
/// the driver asked once per entry), in whole warps.
fn max_block_threads(func: &CudaFunction, name: &'static str) -> Result<u32> {
    static SEEN: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .map_err(|_| CudaError::NotAvailable("block size cache lock poisoned".into()))?;
    if let Some(&(_, n)) = seen.iter().find(|(n, _)| *n == name) {
        return Ok(n);
    }
    let max = func
        .max_threads_per_block()
        .map_err(|e| driver_err(&format!("threads per block of {name}"), e))?;
    let n = ((max.max(32) as u32) / 32 * 32).min(1024);
    seen.push((name, n));
    Ok(n)
}

/// `resid (rows, dim) += delta` (after an RMSNorm of `delta` with `post_w`
/// when given: Gemma's post-attention / post-FFN norm), then
/// `out = rms_norm(resid) * (w + w_offset)`; without `delta`, only the norm.
/// The kernel form of this process ([`NormForm::from_env`]).
#[allow(clippy::too_many_arguments)]
pub fn resid_norm<T: ActElem>(
    dev: &CudaDevice,
    resid: &mut CudaSlice<f32>,
    delta: Option<&CudaSlice<T>>,
    post_w: Option<&CudaSlice<f32>>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    w_offset: f32,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let form = NormForm::from_env();
    resid_norm_with(
        dev, form, resid, delta, post_w, w, rows, dim, eps, w_offset, out,
    )
}

/// [`resid_norm`] with the kernel form `form` (same results up to the
/// order of the sums: f32 rounding, one f16 ulp of the output).
#[allow(clippy::too_many_arguments)]
pub fn resid_norm_with<T: ActElem>(
    dev: &CudaDevice,
    form: NormForm,
    resid: &mut CudaSlice<f32>,
    delta: Option<&CudaSlice<T>>,
    post_w: Option<&CudaSlice<f32>>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    w_offset: f32,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let n =
        super::elementwise::check_norm("resid_norm", resid.len(), w.len(), rows, dim, out.len())?;
    if let Some(d) = delta {
        check_len("resid_norm delta", d.len(), n)?;
    }
    if let Some(p) = post_w {
        if delta.is_none() {
            return Err(CudaError::Shape(
                "resid_norm: a post-norm weight without a delta".into(),
            ));
        }
        check_len("resid_norm post weight", p.len(), dim)?;
    }
    if rows == 0 {
        return Ok(());
    }
    let vector = form == NormForm::Vector
        && norm_vec_fits(dim)
        && aligned16(dev, resid)
        && aligned16(dev, w)
        && aligned16(dev, out)
        && delta.is_none_or(|d| aligned16(dev, d))
        && post_w.is_none_or(|p| aligned16(dev, p));
    let vec_name = T::pick("mops_resid_norm_vec_f32", "mops_resid_norm_vec_f16");
    let vec_func = if vector {
        let f = dev.function(OPS_MODULE, OPS_SOURCE, vec_name, 0)?;
        // __launch_bounds__(1024) makes this hold; checked, not assumed.
        (norm_vec_threads(dim) <= max_block_threads(&f, vec_name)?).then_some(f)
    } else {
        None
    };
    let (name, func, threads) = match vec_func {
        Some(f) => (vec_name, f, norm_vec_threads(dim)),
        None => {
            let name = T::pick("mops_resid_norm_f32", "mops_resid_norm_f16");
            let f = dev.function(OPS_MODULE, OPS_SOURCE, name, 0)?;
            // The scalar kernel compiles to ~128 registers per thread, so
            // the driver refuses more than 512 threads: rows wider than
            // 512 x 16 values take its loop instead of failing to launch.
            let threads = norm_threads(dim).min(max_block_threads(&f, name)?);
            (name, f, threads)
        }
    };
    let dim_i = dim as i32;
    let null: u64 = 0;
    let mut b = KernelLaunch::new(dev, &func, name);
    b.arg(resid);
    match delta {
        Some(d) => b.arg(d),
        None => b.arg(&null),
    };
    match post_w {
        Some(p) => b.arg(p),
        None => b.arg(&null),
    };
    b.arg(w).arg(out).arg(&dim_i).arg(&eps).arg(&w_offset);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument order and types match mops_resid_norm_* and
    // mops_resid_norm_vec_* (the same parameters); resid, out (and delta)
    // hold rows*dim values, w (and post_w) dim, null pointers only where
    // the kernel tests for them (checked above); the vector entry only for
    // dim % 4 == 0, dim <= its 1024 threads x 8 values, every buffer
    // 16-byte aligned (its 16- / 8-byte accesses); the kernel waits on its
    // predecessor first (launch_pdl's contract).
    unsafe { b.launch_pdl(cfg) }
}

/// Where [`qkv_rope_kv`] reads one projection: `(rows, stride)` values of
/// which each row's head vectors start at element 0 of the row.
pub struct ProjRows<'a, T> {
    pub data: CudaView<'a, T>,
    /// Elements from one row to the next (the fused projection's width, or
    /// the part's own width).
    pub stride: usize,
}

/// Where [`qkv_rope_kv`] puts the roped keys and the values.
pub enum KvDest<'a> {
    /// Layer `layer` of the f16 cache, at (`row_seq[r]`, `row_pos[r]`).
    Cache {
        cache: &'a mut GpuKvCache,
        layer: usize,
    },
    /// f32 rows (rows, n_kv_heads, head_dim) each, for another KV store.
    Rows {
        k: &'a mut CudaSlice<f32>,
        v: &'a mut CudaSlice<f32>,
    },
    /// Layer `layer` of the paged pool, through its current block tables
    /// (table `row_seq[r]`, position `row_pos[r]`; what `paged_kv_write`
    /// stores, in the same launch as the RoPE).
    Paged {
        pool: &'a mut PagedKvPool,
        layer: usize,
    },
}

/// Head layout of [`qkv_rope_kv`].
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Checks the projection rows of one layer against the head shape, the
/// optional QK-norm weights and the RoPE table (shared by [`qkv_rope_kv`]
/// and the fused decode attention); returns the q and k/v row strides.
pub(crate) fn check_projections<T: ActElem>(
    q: &ProjRows<'_, T>,
    k: &ProjRows<'_, T>,
    v: &ProjRows<'_, T>,
    rows: usize,
    shape: HeadShape,
    qk_norm: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
    rope: &GpuRope,
) -> Result<[i32; 2]> {
    let HeadShape {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
    } = shape;
    if hd == 0 || hd > QKV_MAX_HEAD_DIM || rope.head_dim() != hd || rope.n_rot() > hd {
        return Err(CudaError::Shape(format!(
            "qkv_rope_kv: head_dim {hd} (rope {} / {}, at most {QKV_MAX_HEAD_DIM})",
            rope.head_dim(),
            rope.n_rot()
        )));
    }
    let (qd, kvd) = (
        mul("qkv_rope_kv", n_heads, hd)?,
        mul("qkv_rope_kv", n_kv, hd)?,
    );
    // Each part: stride >= its width; (rows - 1) * stride + width elements.
    let need = |what: &str, p: &ProjRows<'_, T>, width: usize| -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        if p.stride < width {
            return Err(CudaError::Shape(format!(
                "qkv_rope_kv {what}: row stride {} below its width {width}",
                p.stride
            )));
        }
        let n = mul("qkv_rope_kv", rows - 1, p.stride)?
            .checked_add(width)
            .ok_or_else(|| CudaError::Shape("qkv_rope_kv: size overflows".into()))?;
        check_len(&format!("qkv_rope_kv {what}"), p.data.len(), n)
    };
    need("q", q, qd)?;
    need("k", k, kvd)?;
    need("v", v, kvd)?;
    if k.stride != v.stride {
        return Err(CudaError::Shape(format!(
            "qkv_rope_kv: k and v row strides differ ({} vs {})",
            k.stride, v.stride
        )));
    }
    if let Some((qn, kn)) = qk_norm {
        check_len("qkv_rope_kv q norm", qn.len(), hd)?;
        check_len("qkv_rope_kv k norm", kn.len(), hd)?;
    }
    let tasks = mul("qkv_rope_kv", rows, n_heads + n_kv)?;
    to_i32("qkv_rope_kv tasks", tasks)?;
    Ok([
        to_i32("qkv_rope_kv q stride", q.stride)?,
        to_i32("qkv_rope_kv kv stride", k.stride)?,
    ])
}

/// Queries, keys and values of one layer into attention's input: for each
/// of `rows` rows, the query heads of `q` and the kv heads of `k` get the
/// optional QK-norm (`qk_norm` = (q weight, k weight), each `head_dim`,
/// plus `w_offset`) and RoPE at `row_pos[row]`; queries go to
/// `q_out (rows, n_heads, head_dim)` (f32), keys and the values of `v` to
/// `dest` (the cache skips rows whose sequence or position is out of its
/// range).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_kv<T: ActElem>(
    dev: &CudaDevice,
    q: &ProjRows<'_, T>,
    k: &ProjRows<'_, T>,
    v: &ProjRows<'_, T>,
    rows: usize,
    shape: HeadShape,
    qk_norm: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
    eps: f32,
    w_offset: f32,
    rope: &GpuRope,
    dest: KvDest<'_>,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    q_out: &mut CudaSlice<f32>,
) -> Result<()> {
    let strides = check_projections(q, k, v, rows, shape, qk_norm, rope)?;
    let HeadShape {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
    } = shape;
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    match &dest {
        KvDest::Cache { cache, layer } => {
            if *layer >= cache.n_layers() || cache.n_kv_heads() != n_kv || cache.head_dim() != hd {
                return Err(CudaError::Shape(format!(
                    "qkv_rope_kv: layer {layer}, {n_kv} kv heads of {hd} into a cache of {} layers, {} x {}",
                    cache.n_layers(),
                    cache.n_kv_heads(),
                    cache.head_dim()
                )));
            }
        }
        KvDest::Rows { k, v } => {
            let n = mul("qkv_rope_kv", rows, kvd)?;
            check_len("qkv_rope_kv k out", k.len(), n)?;
            check_len("qkv_rope_kv v out", v.len(), n)?;
        }
        KvDest::Paged { pool, layer } => {
            if *layer >= pool.n_layers() || pool.n_kv_heads() != n_kv || pool.head_dim() != hd {
                return Err(CudaError::Shape(format!(
                    "qkv_rope_kv: layer {layer}, {n_kv} kv heads of {hd} into a pool of {} layers, {} x {}",
                    pool.n_layers(),
                    pool.n_kv_heads(),
                    pool.head_dim()
                )));
            }
            if pool.n_tables == 0 {
                return Err(CudaError::Shape(
                    "qkv_rope_kv: no block tables set on the pool".into(),
                ));
            }
        }
    }
    check_len(
        "qkv_rope_kv q_out",
        q_out.len(),
        mul("qkv_rope_kv", rows, qd)?,
    )?;
    check_len("qkv_rope_kv row_seq", row_seq.len(), rows)?;
    check_len("qkv_rope_kv row_pos", row_pos.len(), rows)?;
    let tasks = rows * (n_heads + n_kv);
    if rows == 0 {
        return Ok(());
    }
    let name = T::pick("mops_qkv_rope_kv_f32", "mops_qkv_rope_kv_f16");
    let func = dev.function(OPS_MODULE, OPS_SOURCE, name, 0)?;
    let null: u64 = 0;
    let n_rot = rope.n_rot() as i32;
    let neox = i32::from(rope.style() == RopeStyle::Neox);
    let (rows_i, heads_i, kv_i, hd_i) = (rows as i32, n_heads as i32, n_kv as i32, hd as i32);
    let mut b = KernelLaunch::new(dev, &func, name);
    b.arg(&q.data)
        .arg(&k.data)
        .arg(&v.data)
        .arg(&strides[0])
        .arg(&strides[1])
        .arg(q_out);
    match qk_norm {
        Some((qn, kn)) => b.arg(qn).arg(kn),
        None => b.arg(&null).arg(&null),
    };
    b.arg(&eps)
        .arg(&w_offset)
        .arg(&rope.inv_freq)
        .arg(&n_rot)
        .arg(&neox);
    let (n_layers, layer_i, n_seqs, capacity);
    // The paged pool's table geometry (0 for the other destinations).
    let (mut table_width, mut block_size, mut n_blocks) = (0i32, 0i32, 0i32);
    let mut tables = None;
    match dest {
        KvDest::Cache { cache, layer } => {
            (n_layers, layer_i) = (cache.n_layers() as i32, layer as i32);
            (n_seqs, capacity) = (cache.n_seqs() as i32, cache.capacity() as i32);
            b.arg(&cache.k).arg(&cache.v).arg(&null).arg(&null);
        }
        KvDest::Rows { k, v } => {
            (n_layers, layer_i, n_seqs, capacity) = (1, 0, 1, 1);
            b.arg(&null).arg(&null).arg(k).arg(v);
        }
        KvDest::Paged { pool, layer } => {
            // i32 throughout: the pool's constructor and set_block_tables
            // checked every count and the widest table's positions.
            (n_layers, layer_i) = (pool.n_layers() as i32, layer as i32);
            (n_seqs, capacity) = (pool.n_tables as i32, pool.table_positions() as i32);
            (table_width, block_size) = (pool.table_width as i32, pool.block_size() as i32);
            n_blocks = pool.n_blocks() as i32;
            b.arg(&pool.k).arg(&pool.v).arg(&null).arg(&null);
            tables = Some(&pool.tables);
        }
    }
    b.arg(row_seq)
        .arg(row_pos)
        .arg(&rows_i)
        .arg(&heads_i)
        .arg(&kv_i)
        .arg(&hd_i)
        .arg(&n_layers)
        .arg(&layer_i)
        .arg(&n_seqs)
        .arg(&capacity);
    match tables {
        Some(t) => b.arg(t),
        None => b.arg(&null),
    };
    b.arg(&table_width).arg(&block_size).arg(&n_blocks);
    let cfg = LaunchConfig {
        grid_dim: (tasks.div_ceil(QKV_WARPS) as u32, 1, 1),
        block_dim: (32 * QKV_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument order and types match mops_qkv_rope_kv_*; every row's
    // reads stay inside q / k / v (strides and lengths checked above),
    // q_out holds rows*n_heads*head_dim, inv_freq n_rot/2 <= head_dim/2
    // values, head_dim <= the kernel's shared buffer; cache writes are
    // bounds-checked by the kernel (sequence and position) and the cache
    // matches the head shape, or k_out / v_out hold rows*n_kv*head_dim, or
    // the pool's writes go through its validated tables (n_tables x
    // table_width ids, each id checked against n_blocks by the kernel);
    // the kernel waits on its predecessor first (launch_pdl's contract).
    unsafe { b.launch_pdl(cfg) }
}

/// `out (rows, ffn) = act(gate) * up` with act SiLU (`gelu` false) or the
/// tanh GELU; row `r` of gate / up starts at `r * in_stride` of its view.
#[allow(clippy::too_many_arguments)]
pub fn glu<T: ActElem>(
    dev: &CudaDevice,
    gate: &CudaView<'_, T>,
    up: &CudaView<'_, T>,
    in_stride: usize,
    rows: usize,
    ffn: usize,
    gelu: bool,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    if in_stride < ffn {
        return Err(CudaError::Shape(format!(
            "glu: row stride {in_stride} below the width {ffn}"
        )));
    }
    let n = mul("glu", rows, ffn)?;
    if rows > 0 {
        let need = mul("glu", rows - 1, in_stride)?
            .checked_add(ffn)
            .ok_or_else(|| CudaError::Shape("glu: size overflows".into()))?;
        check_len("glu gate", gate.len(), need)?;
        check_len("glu up", up.len(), need)?;
    }
    check_elementwise("glu out", n, &[out.len()])?;
    let (stride_i, rows_i, ffn_i) = (
        to_i32("glu stride", in_stride)?,
        to_i32("glu rows", rows)?,
        to_i32("glu ffn", ffn)?,
    );
    if n == 0 {
        return Ok(());
    }
    let name = T::pick("mops_glu_f32", "mops_glu_f16");
    let func = dev.function(OPS_MODULE, OPS_SOURCE, name, 0)?;
    let gelu_i = i32::from(gelu);
    let mut b = KernelLaunch::new(dev, &func, name);
    b.arg(gate)
        .arg(up)
        .arg(&stride_i)
        .arg(out)
        .arg(&rows_i)
        .arg(&ffn_i)
        .arg(&gelu_i);
    // SAFETY: argument order and types match mops_glu_*; gate / up hold
    // (rows-1)*in_stride + ffn values, out rows*ffn (checked above); the
    // kernel waits on its predecessor first.
    unsafe { b.launch_pdl(grid_stride(dev, n)) }
}

/// `out = x` widened to f32 (`n` values), soft-capped (`cap * tanh(x /
/// cap)`) when `cap` is given.
pub fn logits_from_f16(
    dev: &CudaDevice,
    x: &CudaSlice<f16>,
    n: usize,
    cap: Option<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let cap = match cap {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            return Err(CudaError::Shape(format!(
                "logits_from_f16: cap {c} must be positive"
            )))
        }
        Some(c) => c,
        None => 0.0,
    };
    check_len("logits_from_f16 x", x.len(), n)?;
    let n64 = check_elementwise("logits_from_f16 out", n, &[out.len()])?;
    if n == 0 {
        return Ok(());
    }
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_logits_from_f16", 0)?;
    let mut b = KernelLaunch::new(dev, &func, "mops_logits_from_f16");
    b.arg(x).arg(out).arg(&n64).arg(&cap);
    // SAFETY: argument order and types match mops_logits_from_f16; x and out
    // hold n values (checked above); it waits on its predecessor first.
    unsafe { b.launch_pdl(grid_stride(dev, n)) }
}

/// Enqueues a one-thread kernel that busy-waits `ns` nanoseconds of GPU
/// time (per-stage timing: the host queues the work behind it meanwhile).
pub fn spin(dev: &CudaDevice, ns: u64) -> Result<()> {
    let func = dev.function(OPS_MODULE, OPS_SOURCE, "mops_spin", 0)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(&ns);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: mops_spin takes one u64 and touches no memory.
    unsafe { b.launch(cfg) }.map_err(|e| driver_err("launch mops_spin", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_threads_cover_the_row() {
        assert_eq!(norm_threads(4096), 512);
        assert_eq!(norm_threads(64), 64);
        assert_eq!(norm_threads(1 << 20), 1024);
        assert_eq!(norm_threads(576), 96);
        assert_eq!(f16::pick("a", "b"), "b");
        // Vector form: 8 values per thread in whole warps, up to 1024 threads.
        assert_eq!(norm_vec_threads(4096), 512);
        assert_eq!(norm_vec_threads(8192), 1024);
        assert_eq!(norm_vec_threads(576), 96);
        assert_eq!(norm_vec_threads(4), 32);
        assert!(norm_vec_fits(4096) && norm_vec_fits(NORM_VEC_MAX_DIM) && norm_vec_fits(576));
        assert!(!norm_vec_fits(4097) && !norm_vec_fits(NORM_VEC_MAX_DIM + 4) && !norm_vec_fits(2));
        for dim in [4, 64, 576, 640, 2304, 4096, 8192] {
            assert!(norm_vec_threads(dim) as usize * 8 >= dim, "dim {dim}");
        }
        assert_eq!(f32::pick("a", "b"), "a");
    }
}
