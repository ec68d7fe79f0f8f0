//! Kernels for GGUF block formats.
//!
//! Weights stay in ggml's block layout. Activations are quantized once per
//! matmul to 8 bits (32-blocks for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/MXFP4, 256-blocks
//! for Q4_K/Q6_K; error bound in [`act`]) and every output is an integer dot
//! product per block. Output rows are split into chunks over the rayon pool;
//! for m > 1, each chunk of weight rows is multiplied with all m activation
//! rows (in tiles of [`M_TILE`]) while it is in cache.
//!
//! Types without an integer kernel (Q8_1, Q2_K, Q3_K, Q5_K, Q8_K) take the
//! generic path: each weight row is dequantized to f32 with the reference
//! dequantizer, then dotted in f32 with the exact activations. F32, F16 and
//! BF16 weights are converted to f32 once at preparation (F16/BF16 take
//! twice their file size in memory).

pub mod act;
#[cfg(test)]
mod bench;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
pub mod dot_scalar;
#[cfg(test)]
mod tests;

use crate::CpuError;
use act::{ActQ8K, ActQ8x32};
use marlin_quant::ggml::*;
use marlin_quant::{GgmlTensor, GgmlType};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Activation rows multiplied with one weight row while it sits in L1.
const M_TILE: usize = 16;

/// One weight row (blocks B) dotted with one activation row (A).
pub type DotOne<B, A> = fn(&[B], &[A]) -> f32;
/// One weight row dotted with four activation rows at once (the weights
/// are decoded once for the four).
pub type DotFour<B, A> = fn(&[B], [&[A]; 4]) -> [f32; 4];

/// Dot products of one weight row (blocks B) with activation rows (A).
pub struct Dots<B: 'static, A: 'static> {
    pub one: DotOne<B, A>,
    pub four: DotFour<B, A>,
}

impl<B, A> Clone for Dots<B, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B, A> Copy for Dots<B, A> {}

/// The kernels of one ISA, per format.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub name: &'static str,
    pub q4_0: Dots<BlockQ4_0, ActQ8x32>,
    pub q4_1: Dots<BlockQ4_1, ActQ8x32>,
    pub q5_0: Dots<BlockQ5_0, ActQ8x32>,
    pub q5_1: Dots<BlockQ5_1, ActQ8x32>,
    pub q8_0: Dots<BlockQ8_0, ActQ8x32>,
    pub mxfp4: Dots<BlockMxfp4, ActQ8x32>,
    pub q4k: Dots<BlockQ4K, ActQ8K>,
    pub q6k: Dots<BlockQ6K, ActQ8K>,
    pub f32dot: fn(&[f32], &[f32]) -> f32,
}

/// Scalar `Dots`: four rows are four single dots.
macro_rules! scalar_dots {
    ($f:path, $b:ty, $a:ty) => {
        Dots {
            one: $f,
            four: |w: &[$b], a: [&[$a]; 4]| a.map(|r| $f(w, r)),
        }
    };
}

/// The portable kernels.
pub fn scalar_kernels() -> Kernels {
    use dot_scalar::*;
    Kernels {
        name: "scalar",
        q4_0: scalar_dots!(dot_q4_0, BlockQ4_0, ActQ8x32),
        q4_1: scalar_dots!(dot_q4_1, BlockQ4_1, ActQ8x32),
        q5_0: scalar_dots!(dot_q5_0, BlockQ5_0, ActQ8x32),
        q5_1: scalar_dots!(dot_q5_1, BlockQ5_1, ActQ8x32),
        q8_0: scalar_dots!(dot_q8_0, BlockQ8_0, ActQ8x32),
        mxfp4: scalar_dots!(dot_mxfp4, BlockMxfp4, ActQ8x32),
        q4k: scalar_dots!(dot_q4k, BlockQ4K, ActQ8K),
        q6k: scalar_dots!(dot_q6k, BlockQ6K, ActQ8K),
        f32dot: dot_f32,
    }
}

/// The AVX2+FMA+F16C kernels when this CPU has them.
pub fn avx2_kernels() -> Option<Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        dot_avx2::kernels()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The best kernels for this CPU, chosen once.
pub fn best_kernels() -> &'static Kernels {
    static BEST: OnceLock<Kernels> = OnceLock::new();
    BEST.get_or_init(|| avx2_kernels().unwrap_or_else(scalar_kernels))
}

/// Weights in the form the kernels read.
enum Weights {
    /// F32, F16, BF16 weights as f32, (N, K) row-major.
    F32(Vec<f32>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Vec<BlockQ8_0>),
    Mxfp4(Vec<BlockMxfp4>),
    Q4K(Vec<BlockQ4K>),
    Q6K(Vec<BlockQ6K>),
    /// Packed rows of a type without an integer kernel.
    Generic(Vec<u8>),
}

/// A `GgmlTensor` prepared once for the CPU kernels: (N, K) = (rows, cols).
pub struct PreparedGgml {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    weights: Weights,
    kernels: Kernels,
}

/// The bytes as blocks (alignment 1, so any whole number of blocks casts).
/// Copies once, so a tensor briefly takes twice its size while loading.
fn to_blocks<B: bytemuck::Pod>(data: Vec<u8>) -> Result<Vec<B>, CpuError> {
    Ok(bytemuck::try_cast_slice::<u8, B>(&data)
        .map_err(|e| CpuError::Shape(format!("ggml data is not whole blocks: {e:?}")))?
        .to_vec())
}

impl PreparedGgml {
    pub fn new(t: GgmlTensor) -> Result<Self, CpuError> {
        Self::with_kernels(t, *best_kernels())
    }

    /// As [`PreparedGgml::new`] with a given kernel table (tests use it to
    /// run the scalar kernels on an AVX2 machine).
    pub fn with_kernels(t: GgmlTensor, kernels: Kernels) -> Result<Self, CpuError> {
        // Re-check the invariant GgmlTensor::new established (fields are pub).
        let t = GgmlTensor::new(t.ty, t.rows, t.cols, t.data)?;
        let (ty, rows, cols) = (t.ty, t.rows, t.cols);
        use GgmlType::*;
        let weights = match ty {
            F32 | F16 | BF16 => Weights::F32(t.dequantize()?),
            Q4_0 => Weights::Q4_0(to_blocks(t.data)?),
            Q4_1 => Weights::Q4_1(to_blocks(t.data)?),
            Q5_0 => Weights::Q5_0(to_blocks(t.data)?),
            Q5_1 => Weights::Q5_1(to_blocks(t.data)?),
            Q8_0 => Weights::Q8_0(to_blocks(t.data)?),
            Mxfp4 => Weights::Mxfp4(to_blocks(t.data)?),
            Q4K => Weights::Q4K(to_blocks(t.data)?),
            Q6K => Weights::Q6K(to_blocks(t.data)?),
            Q8_1 | Q2K | Q3K | Q5K | Q8K => Weights::Generic(t.data),
        };
        Ok(Self {
            ty,
            rows,
            cols,
            weights,
            kernels,
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

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Whether this type runs on integer kernels (else the generic
    /// dequantize-then-f32 path).
    pub fn has_integer_kernel(&self) -> bool {
        !matches!(self.weights, Weights::F32(_) | Weights::Generic(_))
    }

    /// Bytes of weight data the kernels read per matmul.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(w) => w.len() * 4,
            Weights::Q4_0(w) => size_of_val(w.as_slice()),
            Weights::Q4_1(w) => size_of_val(w.as_slice()),
            Weights::Q5_0(w) => size_of_val(w.as_slice()),
            Weights::Q5_1(w) => size_of_val(w.as_slice()),
            Weights::Q8_0(w) => size_of_val(w.as_slice()),
            Weights::Mxfp4(w) => size_of_val(w.as_slice()),
            Weights::Q4K(w) => size_of_val(w.as_slice()),
            Weights::Q6K(w) => size_of_val(w.as_slice()),
            Weights::Generic(w) => w.len(),
        }
    }

    /// Row `r` of W (K values) dequantized into `out`, bit-identical to
    /// ggml's reference: lets a tied embedding share this one copy for
    /// token lookups.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), CpuError> {
        let k = self.cols;
        if r >= self.rows || out.len() != k {
            return Err(CpuError::Shape(format!(
                "row_f32: row {r} of {} into {} values (want {k})",
                self.rows,
                out.len()
            )));
        }
        fn row_bytes<B: bytemuck::Pod>(w: &[B], r: usize, per_row: usize) -> &[u8] {
            bytemuck::cast_slice(&w[r * per_row..(r + 1) * per_row])
        }
        let (b32, bk) = (k / 32, k / 256);
        let bytes = match &self.weights {
            Weights::F32(w) => {
                out.copy_from_slice(&w[r * k..(r + 1) * k]);
                return Ok(());
            }
            Weights::Q4_0(w) => row_bytes(w, r, b32),
            Weights::Q4_1(w) => row_bytes(w, r, b32),
            Weights::Q5_0(w) => row_bytes(w, r, b32),
            Weights::Q5_1(w) => row_bytes(w, r, b32),
            Weights::Q8_0(w) => row_bytes(w, r, b32),
            Weights::Mxfp4(w) => row_bytes(w, r, b32),
            Weights::Q4K(w) => row_bytes(w, r, bk),
            Weights::Q6K(w) => row_bytes(w, r, bk),
            Weights::Generic(w) => {
                let rb = self.ty.row_bytes(k)?;
                &w[r * rb..(r + 1) * rb]
            }
        };
        Ok(dequantize_row(self.ty, bytes, out)?)
    }

    /// `y (m, N) = x (m, K) · Wᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k) = (self.rows, self.cols);
        crate::check_matmul_shapes(x.len(), y.len(), m, n, k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let kr = &self.kernels;
        match &self.weights {
            Weights::F32(w) => run(w, k, x, k, m, n, k, y, kr.f32dot, None),
            Weights::Q4_0(w) => run_quantized(w, x, m, n, k, y, kr.q4_0),
            Weights::Q4_1(w) => run_quantized(w, x, m, n, k, y, kr.q4_1),
            Weights::Q5_0(w) => run_quantized(w, x, m, n, k, y, kr.q5_0),
            Weights::Q5_1(w) => run_quantized(w, x, m, n, k, y, kr.q5_1),
            Weights::Q8_0(w) => run_quantized(w, x, m, n, k, y, kr.q8_0),
            Weights::Mxfp4(w) => run_quantized(w, x, m, n, k, y, kr.mxfp4),
            Weights::Q4K(w) => run_quantized(w, x, m, n, k, y, kr.q4k),
            Weights::Q6K(w) => run_quantized(w, x, m, n, k, y, kr.q6k),
            Weights::Generic(w) => self.run_generic(w, x, m, y),
        }
    }

    /// Dequantize each weight row to f32, then f32 dots with exact x.
    fn run_generic(&self, w: &[u8], x: &[f32], m: usize, y: &mut [f32]) -> Result<(), CpuError> {
        let (n, k, ty) = (self.rows, self.cols, self.ty);
        let row_bytes = ty.row_bytes(k)?;
        let dot = self.kernels.f32dot;
        par_row_chunks(n, m, k, y, |r0, out| {
            let mut row = vec![0f32; k]; // (K) one dequantized weight row
            for (i, r) in (r0..r0 + out.len() / m).enumerate() {
                let bytes = w
                    .get(r * row_bytes..(r + 1) * row_bytes)
                    .ok_or_else(|| CpuError::Shape(format!("row {r} past the weight data")))?;
                dequantize_row(ty, bytes, &mut row)?;
                for (j, xr) in x.chunks_exact(k).enumerate() {
                    out[i * m + j] = dot(&row, xr);
                }
            }
            Ok(())
        })
    }
}

/// An 8-bit activation block type: how many activations it holds and how
/// a row of x becomes blocks.
trait ActBlock: Default + Clone + Send + Sync {
    const LEN: usize;
    fn quantize(x: &[f32], out: &mut [Self]);
}

impl ActBlock for ActQ8x32 {
    const LEN: usize = 32;
    fn quantize(x: &[f32], out: &mut [Self]) {
        act::quantize_x32(x, out)
    }
}

impl ActBlock for ActQ8K {
    const LEN: usize = 256;
    fn quantize(x: &[f32], out: &mut [Self]) {
        act::quantize_k(x, out)
    }
}

/// Quantizes x to activation blocks once, then runs the block kernel.
#[allow(clippy::too_many_arguments)]
fn run_quantized<B: Sync, A: ActBlock>(
    w: &[B],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    dot: Dots<B, A>,
) -> Result<(), CpuError> {
    let bpr = k / A::LEN;
    let mut acts = vec![A::default(); m * bpr]; // (m, K / A::LEN)
    quantize_rows(x, k, &mut acts, bpr, A::quantize);
    run(w, bpr, &acts, bpr, m, n, k, y, dot.one, Some(dot.four))
}

/// Quantizes the m rows of x (in parallel when there are several).
fn quantize_rows<A: Send>(
    x: &[f32],
    k: usize,
    acts: &mut [A],
    bpr: usize,
    f: fn(&[f32], &mut [A]),
) {
    if acts.len() / bpr.max(1) >= 4 {
        acts.par_chunks_mut(bpr)
            .zip(x.par_chunks(k))
            .for_each(|(a, xr)| f(xr, a));
    } else {
        acts.chunks_mut(bpr)
            .zip(x.chunks(k))
            .for_each(|(a, xr)| f(xr, a));
    }
}

/// y (m, N) from weight rows of `wpr` items and activation rows of `apr`
/// items, one `dot` per (weight row, activation row); k elements per row.
#[allow(clippy::too_many_arguments)]
fn run<B: Sync, A: Sync>(
    w: &[B],
    wpr: usize,
    acts: &[A],
    apr: usize,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    one: DotOne<B, A>,
    four: Option<DotFour<B, A>>,
) -> Result<(), CpuError> {
    let act = |j: usize| &acts[j * apr..(j + 1) * apr];
    par_row_chunks(n, m, k, y, |r0, out| {
        let rows = out.len() / m;
        // out: (rows, m), output row r0 + i at out[i*m ..]
        for j0 in (0..m).step_by(M_TILE) {
            let j1 = (j0 + M_TILE).min(m);
            for i in 0..rows {
                let r = r0 + i;
                let wr = &w[r * wpr..(r + 1) * wpr];
                let out_r = &mut out[i * m..(i + 1) * m];
                let mut j = j0;
                if let Some(four) = four {
                    while j + 4 <= j1 {
                        let ys = four(wr, [act(j), act(j + 1), act(j + 2), act(j + 3)]);
                        out_r[j..j + 4].copy_from_slice(&ys);
                        j += 4;
                    }
                }
                for (jj, o) in out_r[j..j1].iter_mut().enumerate() {
                    *o = one(wr, act(j + jj));
                }
            }
        }
        Ok(())
    })
}

/// Splits the N output rows into chunks over the rayon pool. `f(r0, out)`
/// fills `out`, the (rows, m) block of yᵀ for rows r0.., which is then
/// written into y (m, N). `k` sizes the work per row for the split.
fn par_row_chunks<F>(n: usize, m: usize, k: usize, y: &mut [f32], f: F) -> Result<(), CpuError>
where
    F: Fn(usize, &mut [f32]) -> Result<(), CpuError> + Sync,
{
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance the threads, each big enough (>= ~64K
    // multiply-adds) that the task overhead stays small.
    let min_rows = (65_536 / (k * m).max(1)).max(1);
    let rows_per_task = n.div_ceil(threads * 4).max(min_rows).min(n);
    if m == 1 {
        // yᵀ of one row is y itself.
        return y
            .par_chunks_mut(rows_per_task)
            .enumerate()
            .try_for_each(|(c, out)| f(c * rows_per_task, out));
    }
    let mut yt = vec![0f32; n * m]; // (N, m)
    yt.par_chunks_mut(rows_per_task * m)
        .enumerate()
        .try_for_each(|(c, out)| f(c * rows_per_task, out))?;
    for (r, col) in yt.chunks_exact(m).enumerate() {
        for (j, &v) in col.iter().enumerate() {
            y[j * n + r] = v;
        }
    }
    Ok(())
}
