//! Kernels for GGUF block formats.
//!
//! Activations are quantized once per matmul to 8 bits (32-blocks for
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/MXFP4, 256-blocks for Q4_K/Q6_K; error bound in
//! [`act`]) and every output is an integer dot product per block.
//!
//! With the AVX2 table, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K weights are
//! repacked at preparation into groups of 8 rows ([`x8`]: lanes are weight
//! rows, the same kernel for every M); groups are split over
//! [`crate::pool`]. The other formats (and every format with the scalar
//! table) stay in ggml's block layout: output rows are split into chunks
//! over the pool; for m > 1, each chunk of weight rows is multiplied with
//! all m activation rows (in tiles of 1 weight row x 4 activation rows,
//! see [`Tile`]) while it is in cache.
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
#[cfg(target_arch = "x86_64")]
mod pair_avx2;
#[cfg(test)]
mod tests;
pub mod x8;
#[cfg(target_arch = "x86_64")]
mod x8_avx2;

use crate::CpuError;
use act::{ActQ8K, ActQ8x32};
use marlin_quant::ggml::*;
use marlin_quant::{GgmlTensor, GgmlType};
use std::sync::OnceLock;
use x8::{X8Dots, X8Q4K, X8Q4_1, X8Q5_0, X8Q6K, X8Q8_0};

/// Bytes of activation blocks a batched tile pass keeps in L1 while it
/// walks the weight rows of its chunk.
const ACT_TILE_BYTES: usize = 16 * 1024;

/// A micro-kernel over a tile of RM weight rows x RN activation rows, (RM,
/// RN) fixed by the kernel: `out[i * ostride + j]` = weight row i (blocks
/// `w[i * bpr..][..bpr]`) dotted with activation row j (`a[j * bpr..][..bpr]`).
///
/// Batch invariance: every kernel of one table computes each (weight row,
/// activation row) pair with the same operations in the same order, so an
/// output does not depend on the tile it was computed in, nor on M.
pub type Tile<B, A> = fn(w: &[B], a: &[A], bpr: usize, out: &mut [f32], ostride: usize);

/// The tile kernels of one format (shapes that fit the 16 AVX2 registers).
pub struct Dots<B: 'static, A: 'static> {
    /// (1, 1): the leftovers.
    pub one: Tile<B, A>,
    /// (2, 1): decode; two weight rows share each activation load.
    pub rows2: Tile<B, A>,
    /// (1, 4): batched; each decoded weight block serves four activation rows.
    pub acts4: Tile<B, A>,
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
    /// Row-interleaved kernels (see [`x8`]): when present, Q4_1 / Q5_0
    /// weights are repacked at preparation and run on these for every M.
    pub q4_1x8: Option<X8Dots<X8Q4_1>>,
    pub q5_0x8: Option<X8Dots<X8Q5_0>>,
    pub q4kx8: Option<X8Dots<X8Q4K, ActQ8K>>,
    pub q6kx8: Option<X8Dots<X8Q6K, ActQ8K>>,
    pub q8_0x8: Option<X8Dots<X8Q8_0>>,
    pub f32dot: fn(&[f32], &[f32]) -> f32,
}

/// Scalar `Dots`: every tile is a loop of single dots.
macro_rules! scalar_dots {
    ($f:path, $b:ty, $a:ty) => {{
        fn tile<const RM: usize, const RN: usize>(
            w: &[$b],
            a: &[$a],
            bpr: usize,
            out: &mut [f32],
            ostride: usize,
        ) {
            for i in 0..RM {
                for j in 0..RN {
                    out[i * ostride + j] = $f(&w[i * bpr..][..bpr], &a[j * bpr..][..bpr]);
                }
            }
        }
        Dots {
            one: tile::<1, 1>,
            rows2: tile::<2, 1>,
            acts4: tile::<1, 4>,
        }
    }};
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
        q4_1x8: None,
        q5_0x8: None,
        q4kx8: None,
        q6kx8: None,
        q8_0x8: None,
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
    /// Row-interleaved groups of 8 rows (see [`x8`]) and their kernels;
    /// the layouts of the same size as the ggml rows are kept as the bytes
    /// they were repacked in (blocks of alignment 1, cast on use).
    Q4_1x8(Vec<u8>, X8Dots<X8Q4_1>),
    Q5_0x8(Vec<u8>, X8Dots<X8Q5_0>),
    Q4Kx8(Vec<X8Q4K>, X8Dots<X8Q4K, ActQ8K>),
    Q6Kx8(Vec<u8>, X8Dots<X8Q6K, ActQ8K>),
    Q8_0x8(Vec<u8>, X8Dots<X8Q8_0>),
    /// Packed rows of a type without an integer kernel.
    Generic(Vec<u8>),
}

/// A `GgmlTensor` prepared once for the CPU kernels: (N, K) = (rows, cols).
pub struct PreparedGgml {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    weights: Weights,
    /// Boxed: the table is ~200 bytes of function pointers.
    kernels: Box<Kernels>,
}

/// The bytes as blocks (alignment 1, so any whole number of blocks casts).
/// Copies once, so a tensor briefly takes twice its size while loading.
fn to_blocks<B: bytemuck::Pod>(data: Vec<u8>) -> Result<Vec<B>, CpuError> {
    Ok(as_blocks::<B>(&data)?.to_vec())
}

fn as_blocks<B: bytemuck::Pod>(data: &[u8]) -> Result<&[B], CpuError> {
    bytemuck::try_cast_slice::<u8, B>(data)
        .map_err(|e| CpuError::Shape(format!("ggml data is not whole blocks: {e:?}")))
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
            Q4_1 => match kernels.q4_1x8 {
                Some(dots) => Weights::Q4_1x8(
                    x8::repack_in_place::<X8Q4_1>(t.data, rows, cols / 32)?,
                    dots,
                ),
                None => Weights::Q4_1(to_blocks(t.data)?),
            },
            Q5_0 => match kernels.q5_0x8 {
                Some(dots) => Weights::Q5_0x8(
                    x8::repack_in_place::<X8Q5_0>(t.data, rows, cols / 32)?,
                    dots,
                ),
                None => Weights::Q5_0(to_blocks(t.data)?),
            },
            Q5_1 => Weights::Q5_1(to_blocks(t.data)?),
            Q8_0 => match kernels.q8_0x8 {
                Some(dots) => Weights::Q8_0x8(
                    x8::repack_in_place::<X8Q8_0>(t.data, rows, cols / 32)?,
                    dots,
                ),
                None => Weights::Q8_0(to_blocks(t.data)?),
            },
            Mxfp4 => Weights::Mxfp4(to_blocks(t.data)?),
            Q4K => match kernels.q4kx8 {
                Some(dots) => {
                    Weights::Q4Kx8(x8::repack(as_blocks(&t.data)?, rows, cols / 256), dots)
                }
                None => Weights::Q4K(to_blocks(t.data)?),
            },
            Q6K => match kernels.q6kx8 {
                Some(dots) => Weights::Q6Kx8(
                    x8::repack_in_place::<X8Q6K>(t.data, rows, cols / 256)?,
                    dots,
                ),
                None => Weights::Q6K(to_blocks(t.data)?),
            },
            Q8_1 | Q2K | Q3K | Q5K | Q8K => Weights::Generic(t.data),
        };
        Ok(Self {
            ty,
            rows,
            cols,
            weights,
            kernels: Box::new(kernels),
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
            Weights::Q4_1x8(w, _) => w.len(),
            Weights::Q5_0x8(w, _) => w.len(),
            Weights::Q4Kx8(w, _) => size_of_val(w.as_slice()),
            Weights::Q6Kx8(w, _) => w.len(),
            Weights::Q8_0x8(w, _) => w.len(),
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
        let unpacked: Vec<u8>;
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
            Weights::Q4_1x8(w, _) => {
                let w = bytemuck::cast_slice::<u8, X8Q4_1>(w);
                unpacked = bytemuck::cast_slice(&x8::row_blocks(w, r, b32)).to_vec();
                &unpacked
            }
            Weights::Q5_0x8(w, _) => {
                let w = bytemuck::cast_slice::<u8, X8Q5_0>(w);
                unpacked = bytemuck::cast_slice(&x8::row_blocks(w, r, b32)).to_vec();
                &unpacked
            }
            Weights::Q4Kx8(w, _) => {
                unpacked = bytemuck::cast_slice(&x8::row_blocks(w, r, bk)).to_vec();
                &unpacked
            }
            Weights::Q6Kx8(w, _) => {
                let w = bytemuck::cast_slice::<u8, X8Q6K>(w);
                unpacked = bytemuck::cast_slice(&x8::row_blocks(w, r, bk)).to_vec();
                &unpacked
            }
            Weights::Q8_0x8(w, _) => {
                let w = bytemuck::cast_slice::<u8, X8Q8_0>(w);
                unpacked = bytemuck::cast_slice(&x8::row_blocks(w, r, b32)).to_vec();
                &unpacked
            }
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
            Weights::F32(w) => run_f32(w, x, m, n, k, y, kr.f32dot),
            Weights::Q4_0(w) => run_quantized(w, x, m, n, k, y, kr.q4_0),
            Weights::Q4_1(w) => run_quantized(w, x, m, n, k, y, kr.q4_1),
            Weights::Q5_0(w) => run_quantized(w, x, m, n, k, y, kr.q5_0),
            Weights::Q5_1(w) => run_quantized(w, x, m, n, k, y, kr.q5_1),
            Weights::Q8_0(w) => run_quantized(w, x, m, n, k, y, kr.q8_0),
            Weights::Mxfp4(w) => run_quantized(w, x, m, n, k, y, kr.mxfp4),
            Weights::Q4K(w) => run_quantized(w, x, m, n, k, y, kr.q4k),
            Weights::Q6K(w) => run_quantized(w, x, m, n, k, y, kr.q6k),
            Weights::Q4_1x8(w, dots) => {
                run_x8(bytemuck::cast_slice::<u8, X8Q4_1>(w), x, m, n, k, y, *dots)
            }
            Weights::Q5_0x8(w, dots) => {
                run_x8(bytemuck::cast_slice::<u8, X8Q5_0>(w), x, m, n, k, y, *dots)
            }
            Weights::Q4Kx8(w, dots) => run_x8(w, x, m, n, k, y, *dots),
            Weights::Q6Kx8(w, dots) => {
                run_x8(bytemuck::cast_slice::<u8, X8Q6K>(w), x, m, n, k, y, *dots)
            }
            Weights::Q8_0x8(w, dots) => {
                run_x8(bytemuck::cast_slice::<u8, X8Q8_0>(w), x, m, n, k, y, *dots)
            }
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

/// Quantizes x to activation blocks once, then runs the tile kernels.
#[allow(clippy::too_many_arguments)]
fn run_quantized<B: Sync, A: ActBlock>(
    w: &[B],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    dots: Dots<B, A>,
) -> Result<(), CpuError> {
    let bpr = k / A::LEN;
    let mut acts = vec![A::default(); m * bpr]; // (m, K / A::LEN)
    quantize_rows(x, k, &mut acts, bpr, A::quantize);
    let wrows = |r: usize, count: usize| &w[r * bpr..(r + count) * bpr];
    // Activation rows per pass over a chunk's weight rows: a multiple of 4
    // that keeps them in L1.
    let act_tile = (ACT_TILE_BYTES / (bpr * size_of::<A>()).max(1)).clamp(4, 64) / 4 * 4;
    par_row_chunks(n, m, k, y, |r0, out| {
        // out: (rows, m), output row r0 + i at out[i*m ..]
        let rows = out.len() / m;
        if m == 1 {
            let mut i = 0;
            while i + 2 <= rows {
                (dots.rows2)(wrows(r0 + i, 2), &acts, bpr, &mut out[i..], 1);
                i += 2;
            }
            for i in i..rows {
                (dots.one)(wrows(r0 + i, 1), &acts, bpr, &mut out[i..], 1);
            }
            return Ok(());
        }
        for j0 in (0..m).step_by(act_tile) {
            let j1 = (j0 + act_tile).min(m);
            for i in 0..rows {
                let wr = wrows(r0 + i, 1);
                let mut j = j0;
                while j + 4 <= j1 {
                    let a = &acts[j * bpr..(j + 4) * bpr];
                    (dots.acts4)(wr, a, bpr, &mut out[i * m + j..], m);
                    j += 4;
                }
                for j in j..j1 {
                    let a = &acts[j * bpr..(j + 1) * bpr];
                    (dots.one)(wr, a, bpr, &mut out[i * m + j..], m);
                }
            }
        }
        Ok(())
    })
}

/// Quantizes x to activation blocks once, then runs the x8 kernels.
fn run_x8<X: Sync, A: ActBlock>(
    w: &[X],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    dots: X8Dots<X, A>,
) -> Result<(), CpuError> {
    let bpr = k / A::LEN;
    let mut acts = vec![A::default(); m * bpr]; // (m, K / A::LEN)
    quantize_rows(x, k, &mut acts, bpr, A::quantize);
    x8::run_x8(w, &acts, m, n, bpr, y, dots)
}

/// Quantizes the m rows of x (in parallel when there are several).
fn quantize_rows<A: Send>(
    x: &[f32],
    k: usize,
    acts: &mut [A],
    bpr: usize,
    f: fn(&[f32], &mut [A]),
) {
    if bpr == 0 {
        return;
    }
    if acts.len() / bpr >= 4 {
        // Never fails: the closure returns Ok.
        let _ = crate::pool::current().try_for_each_chunk_mut(acts, bpr, |j, a| {
            f(&x[j * k..(j + 1) * k], a);
            Ok(())
        });
    } else {
        acts.chunks_mut(bpr)
            .zip(x.chunks(k))
            .for_each(|(a, xr)| f(xr, a));
    }
}

/// y (m, N) = x (m, K) · Wᵀ for f32 weights W (N, K), one `dot` per
/// (weight row, x row).
fn run_f32(
    w: &[f32],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    dot: fn(&[f32], &[f32]) -> f32,
) -> Result<(), CpuError> {
    par_row_chunks(n, m, k, y, |r0, out| {
        // out: (rows, m), output row r0 + i at out[i*m ..]
        for (i, out_r) in out.chunks_exact_mut(m).enumerate() {
            let wr = &w[(r0 + i) * k..(r0 + i + 1) * k];
            for (o, xr) in out_r.iter_mut().zip(x.chunks_exact(k)) {
                *o = dot(wr, xr);
            }
        }
        Ok(())
    })
}

/// Splits the N output rows into chunks over the thread pool
/// ([`crate::pool`]). `f(r0, out)` fills `out`, the (rows, m) block of yᵀ
/// for rows r0.., which is then written into y (m, N). `k` sizes the work
/// per row for the split.
fn par_row_chunks<F>(n: usize, m: usize, k: usize, y: &mut [f32], f: F) -> Result<(), CpuError>
where
    F: Fn(usize, &mut [f32]) -> Result<(), CpuError> + Sync,
{
    let pool = crate::pool::current();
    let threads = pool.threads();
    // Enough chunks to balance the threads (a descheduled thread delays only
    // its chunk), each big enough (>= ~16K multiply-adds) that claiming it
    // (one atomic add) stays negligible.
    let min_rows = (16_384 / (k * m).max(1)).max(1);
    let rows_per_task = n.div_ceil(threads * 4).max(min_rows).min(n);
    if m == 1 {
        // yᵀ of one row is y itself.
        return pool.try_for_each_chunk_mut(y, rows_per_task, |c, out| f(c * rows_per_task, out));
    }
    let mut yt = vec![0f32; n * m]; // (N, m)
    pool.try_for_each_chunk_mut(&mut yt, rows_per_task * m, |c, out| {
        f(c * rows_per_task, out)
    })?;
    for (r, col) in yt.chunks_exact(m).enumerate() {
        for (j, &v) in col.iter().enumerate() {
            y[j * n + r] = v;
        }
    }
    Ok(())
}
