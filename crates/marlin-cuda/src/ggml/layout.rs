//! Lossless host-side repack of ggml blocks into two planes, and the
//! host-side shape checks of the GPU entry points.
//!
//! Each block is split into its quant bits ("codes", a multiple of 16 bytes
//! per block, so that every row starts 16-byte aligned and the decode kernels
//! read them with 16-byte loads) and everything else ("meta": scales, mins,
//! fifth bits), padded to an aligned size. Every byte of the block lands in
//! exactly one place, so [`unsplit`] rebuilds the original bytes.

use marlin_quant::{GgmlTensor, GgmlType};

use crate::error::{CudaError, Result};

/// How one block of a type is split: byte ranges of the ggml block copied,
/// in order, into the codes plane and into the meta plane (the meta record
/// is then zero-padded to `meta_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct BlockSplit {
    pub ty: GgmlType,
    /// Short name used in kernel names ("q4_k").
    pub kernel_name: &'static str,
    pub codes: &'static [(usize, usize)],
    pub meta: &'static [(usize, usize)],
    pub meta_bytes: usize,
}

impl BlockSplit {
    /// Code bytes per block.
    pub fn code_bytes(&self) -> usize {
        self.codes.iter().map(|(a, b)| b - a).sum()
    }
}

/// The split of every block type the GPU kernels read (keep in sync with the
/// `Layout<T>` table and the `dequant32` readers in kernels/ggml_blocks.cu).
pub fn block_split(ty: GgmlType) -> Option<BlockSplit> {
    use GgmlType::*;
    let s = |kernel_name, codes, meta, meta_bytes| BlockSplit {
        ty,
        kernel_name,
        codes,
        meta,
        meta_bytes,
    };
    Some(match ty {
        // { f16 d; u8 qs[16] } -> codes qs, meta d.
        Q4_0 => s("q4_0", &[(2, 18)], &[(0, 2)], 2),
        // { f16 d; f16 m; u8 qs[16] } -> codes qs, meta d m.
        Q4_1 => s("q4_1", &[(4, 20)], &[(0, 4)], 4),
        // { f16 d; u8 qh[4]; u8 qs[16] } -> codes qs, meta { qh, d, 0 }.
        Q5_0 => s("q5_0", &[(6, 22)], &[(2, 6), (0, 2)], 8),
        // { f16 d; f16 m; u8 qh[4]; u8 qs[16] } -> codes qs, meta { qh, d, m }.
        Q5_1 => s("q5_1", &[(8, 24)], &[(4, 8), (0, 4)], 8),
        // { f16 d; i8 qs[32] } -> codes qs, meta d.
        Q8_0 => s("q8_0", &[(2, 34)], &[(0, 2)], 2),
        // { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] } -> codes qs,
        // meta { d, dmin, scales }.
        Q4K => s("q4_k", &[(16, 144)], &[(0, 16)], 16),
        // { d; dmin; scales[12]; qh[32]; qs[128] } -> codes { qs, qh }.
        Q5K => s("q5_k", &[(48, 176), (16, 48)], &[(0, 16)], 16),
        // { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d } -> codes { ql, qh },
        // meta { scales, d, 0 }.
        Q6K => s("q6_k", &[(0, 192)], &[(192, 210)], 20),
        _ => return None,
    })
}

/// Types [`super::GgmlGpuWeight`] accepts.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || block_split(ty).is_some()
}

/// The error for a type the GPU does not run.
pub fn unsupported(ty: GgmlType) -> CudaError {
    CudaError::Unsupported(format!(
        "ggml type {} on the GPU (supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, \
         q4_K, q5_K, q6_K)",
        ty.name()
    ))
}

/// Codes and meta planes of a block tensor, (rows * blocks_per_row) records
/// each, in row-major block order.
pub struct SplitPlanes {
    pub codes: Vec<u8>,
    pub meta: Vec<u8>,
}

/// Splits every block of `t` (checked: `t.data` holds rows x cols of `t.ty`).
pub fn split(t: &GgmlTensor, s: &BlockSplit) -> Result<SplitPlanes> {
    let ts = s.ty.type_size();
    let want =
        s.ty.row_bytes(t.cols)
            .and_then(|rb| {
                rb.checked_mul(t.rows)
                    .ok_or_else(|| marlin_quant::QuantError::Shape("overflow".into()))
            })
            .map_err(|e| CudaError::Shape(format!("ggml tensor {}x{}: {e}", t.rows, t.cols)))?;
    if t.ty != s.ty || t.data.len() != want {
        return Err(CudaError::Shape(format!(
            "{} tensor {}x{} holds {} bytes, want {want} of {}",
            t.ty.name(),
            t.rows,
            t.cols,
            t.data.len(),
            s.ty.name()
        )));
    }
    let blocks = t.data.len() / ts;
    let mut codes = Vec::with_capacity(blocks * s.code_bytes());
    let mut meta = Vec::with_capacity(blocks * s.meta_bytes);
    for blk in t.data.chunks_exact(ts) {
        for &(a, b) in s.codes {
            codes.extend_from_slice(&blk[a..b]);
        }
        let start = meta.len();
        for &(a, b) in s.meta {
            meta.extend_from_slice(&blk[a..b]);
        }
        meta.resize(start + s.meta_bytes, 0);
    }
    Ok(SplitPlanes { codes, meta })
}

/// Rebuilds the ggml bytes from the two planes (the inverse of [`split`]).
pub fn unsplit(p: &SplitPlanes, s: &BlockSplit) -> Result<Vec<u8>> {
    let cb = s.code_bytes();
    let blocks = p.codes.len() / cb.max(1);
    if p.codes.len() != blocks * cb || p.meta.len() != blocks * s.meta_bytes {
        return Err(CudaError::Shape(format!(
            "{} planes of {} + {} bytes are not whole blocks",
            s.ty.name(),
            p.codes.len(),
            p.meta.len()
        )));
    }
    let ts = s.ty.type_size();
    let mut out = vec![0u8; blocks * ts];
    for (i, blk) in out.chunks_exact_mut(ts).enumerate() {
        let mut c = i * cb;
        for &(a, b) in s.codes {
            blk[a..b].copy_from_slice(&p.codes[c..c + b - a]);
            c += b - a;
        }
        let mut m = i * s.meta_bytes;
        for &(a, b) in s.meta {
            blk[a..b].copy_from_slice(&p.meta[m..m + b - a]);
            m += b - a;
        }
    }
    Ok(out)
}

/// Largest dimension the kernels index with 32-bit ints.
const MAX_DIM: usize = i32::MAX as usize;

/// Checks a matmul call: x holds >= m*cols values, y >= m*rows, and the
/// sizes fit the kernels' 32-bit dimensions.
pub fn check_matmul(rows: usize, cols: usize, m: usize, x_len: usize, y_len: usize) -> Result<()> {
    let need_x = m
        .checked_mul(cols)
        .ok_or_else(|| CudaError::Shape(format!("matmul m={m} x cols={cols} overflows")))?;
    let need_y = m
        .checked_mul(rows)
        .ok_or_else(|| CudaError::Shape(format!("matmul m={m} x rows={rows} overflows")))?;
    if x_len < need_x || y_len < need_y {
        return Err(CudaError::Shape(format!(
            "ggml matmul ({rows}x{cols}) with m={m}: x has {x_len} values (needs {need_x}), \
             y has {y_len} (needs {need_y})"
        )));
    }
    if m > MAX_DIM || need_x > MAX_DIM * 4 || need_y > MAX_DIM * 4 {
        return Err(CudaError::Shape(format!(
            "ggml matmul m={m} rows={rows} cols={cols} exceeds the kernels' 32-bit indexing"
        )));
    }
    Ok(())
}

/// Checks a get_rows call: ids holds >= n ids, out >= n*cols values.
pub fn check_get_rows(cols: usize, n: usize, ids_len: usize, out_len: usize) -> Result<()> {
    let need = n
        .checked_mul(cols)
        .ok_or_else(|| CudaError::Shape(format!("get_rows n={n} x cols={cols} overflows")))?;
    if ids_len < n || out_len < need {
        return Err(CudaError::Shape(format!(
            "ggml get_rows of {n} rows of {cols}: ids has {ids_len} entries, out has {out_len} \
             values (needs {need})"
        )));
    }
    if n > 65_535 * 1024 {
        return Err(CudaError::Shape(format!(
            "get_rows of {n} rows in one call"
        )));
    }
    Ok(())
}

/// Checks a tensor's shape for the GPU: consistent data, 32-bit dimensions.
pub fn check_tensor(t: &GgmlTensor) -> Result<()> {
    if t.rows == 0 || t.cols == 0 {
        return Err(CudaError::Shape(format!(
            "{} tensor {}x{} is empty",
            t.ty.name(),
            t.rows,
            t.cols
        )));
    }
    if t.rows > MAX_DIM || t.cols > MAX_DIM {
        return Err(CudaError::Shape(format!(
            "{} tensor {}x{} exceeds 32-bit dimensions",
            t.ty.name(),
            t.rows,
            t.cols
        )));
    }
    let want =
        t.ty.row_bytes(t.cols)
            .ok()
            .and_then(|rb| rb.checked_mul(t.rows));
    if want != Some(t.data.len()) {
        return Err(CudaError::Shape(format!(
            "{} tensor {}x{} has {} bytes of data (want {want:?})",
            t.ty.name(),
            t.rows,
            t.cols,
            t.data.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::random::random_ggml_tensor;

    const BLOCK_TYPES: [GgmlType; 8] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    #[test]
    fn split_is_lossless_and_aligned() {
        for ty in BLOCK_TYPES {
            let s = block_split(ty).expect("block type");
            // Every byte of the block is used exactly once.
            let mut seen = vec![0u8; ty.type_size()];
            for &(a, b) in s.codes.iter().chain(s.meta) {
                seen[a..b].iter_mut().for_each(|v| *v += 1);
            }
            assert!(seen.iter().all(|&v| v == 1), "{ty:?}: {seen:?}");
            assert_eq!(s.code_bytes() % 16, 0, "{ty:?}");
            let t = random_ggml_tensor(ty, 3, 512, 7).expect("random tensor");
            let planes = split(&t, &s).expect("split");
            assert_eq!(unsplit(&planes, &s).expect("unsplit"), t.data, "{ty:?}");
        }
    }

    #[test]
    fn unsupported_types_are_reported() {
        for ty in [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Mxfp4, GgmlType::Q8K] {
            assert!(!is_supported(ty));
            assert!(matches!(unsupported(ty), CudaError::Unsupported(_)));
        }
        assert!(is_supported(GgmlType::BF16));
    }

    #[test]
    fn shape_checks() {
        assert!(check_matmul(10, 64, 3, 192, 30).is_ok());
        assert!(check_matmul(10, 64, 3, 191, 30).is_err());
        assert!(check_matmul(10, 64, 3, 192, 29).is_err());
        assert!(check_matmul(10, 64, usize::MAX, 192, 30).is_err());
        assert!(check_get_rows(64, 4, 4, 256).is_ok());
        assert!(check_get_rows(64, 4, 3, 256).is_err());
        assert!(check_get_rows(64, 4, 4, 255).is_err());
        let mut t = random_ggml_tensor(GgmlType::Q4_0, 2, 64, 1).expect("random");
        assert!(check_tensor(&t).is_ok());
        t.data.pop();
        assert!(check_tensor(&t).is_err());
        t.cols = 0;
        assert!(check_tensor(&t).is_err());
    }
}
