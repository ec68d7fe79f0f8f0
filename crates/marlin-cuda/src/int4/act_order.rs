//! INT4 act-order (GPTQ `desc_act`, a `g_idx` per K column) on the GPU,
//! without a kernel of its own for the GEMM: at load, K is permuted so that
//! each group's columns are contiguous (a stable sort of the columns by
//! g_idx), and the permuted weight is repacked as a plain grouped INT4
//! weight; at run time the activation columns are gathered through the same
//! permutation (`kernels/act_order.cu`, one small capture-safe kernel) into
//! a caller-provided scratch before the INT4 GEMM. The product is unchanged:
//! `sum_c A[:, c] W[:, c] = sum_j A[:, perm[j]] W[:, perm[j]]`.
//!
//! GPTQ checkpoints give every group exactly `group_size` columns; anything
//! else (groups of other sizes) is an `Unsupported` error.

use marlin_quant::{Granularity, QuantTensor};

use crate::error::{CudaError, Result};

/// The load-time K permutation of an act-order weight: `perm[j]` is the
/// original column of permuted column j (columns stable-sorted by g_idx).
/// Errors unless every group 0..K/group_size has exactly `group_size`
/// columns.
pub fn act_order_permutation(g_idx: &[u32], group_size: usize) -> Result<Vec<u32>> {
    let k = g_idx.len();
    if group_size == 0 || !k.is_multiple_of(group_size) {
        return Err(CudaError::Shape(format!(
            "act-order: K = {k} is not a multiple of the group size {group_size}"
        )));
    }
    let groups = k / group_size;
    let mut counts = vec![0usize; groups];
    for (c, &g) in g_idx.iter().enumerate() {
        let slot = counts.get_mut(g as usize).ok_or_else(|| {
            CudaError::Shape(format!(
                "act-order: g_idx[{c}] = {g} is out of range ({groups} groups)"
            ))
        })?;
        *slot += 1;
    }
    if let Some(g) = counts.iter().position(|&n| n != group_size) {
        return Err(CudaError::Unsupported(format!(
            "act-order on CUDA needs {group_size} columns per group, group {g} has {}",
            counts[g]
        )));
    }
    let k_u32 = u32::try_from(k).map_err(|_| CudaError::Shape(format!("K = {k} exceeds u32")))?;
    let mut perm: Vec<u32> = (0..k_u32).collect();
    perm.sort_by_key(|&c| g_idx[c as usize]);
    Ok(perm)
}

/// The act-order tensor with its K columns permuted (`perm`, from
/// [`act_order_permutation`]) and no g_idx: group `gg` of the result is
/// columns `gg*group_size..` and keeps its scales and zeros, so it is a
/// plain grouped tensor for `pack_int4`. Returns (tensor, perm).
pub fn permute_act_order(w: &QuantTensor) -> Result<(QuantTensor, Vec<u32>)> {
    let g_idx = w
        .g_idx
        .as_ref()
        .ok_or_else(|| CudaError::Shape("act-order: the tensor has no g_idx".into()))?;
    let group_size = match w.scheme.granularity {
        Granularity::PerGroup { group_size } => group_size,
        other => {
            return Err(CudaError::Unsupported(format!(
                "act-order needs per-group scales, got {other:?}"
            )))
        }
    };
    w.validate()
        .map_err(|e| CudaError::Shape(format!("invalid quantized tensor: {e}")))?;
    let perm = act_order_permutation(g_idx, group_size)?;
    let (n, k) = (w.rows, w.cols);
    let bits = w.scheme.element.bits();
    let row_bytes = w
        .scheme
        .row_bytes(k)
        .map_err(|e| CudaError::Shape(e.to_string()))?;
    let mut codes = Vec::with_capacity(n * k);
    for r in 0..n {
        let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
        for &c in &perm {
            let code = marlin_quant::pack::read_code(row, c as usize, bits)
                .ok_or_else(|| CudaError::Shape(format!("act-order: no code at ({r}, {c})")))?;
            codes.push(code);
        }
    }
    let data = marlin_quant::pack::pack_codes(&codes, n, k, bits)
        .map_err(|e| CudaError::Shape(e.to_string()))?;
    let permuted = QuantTensor {
        scheme: w.scheme,
        rows: n,
        cols: k,
        data,
        scales: w.scales.clone(),
        zeros: w.zeros.clone(),
        global_scale: w.global_scale,
        g_idx: None,
    };
    Ok((permuted, perm))
}

#[cfg(feature = "cuda")]
pub use device::*;

#[cfg(feature = "cuda")]
mod device {
    use std::sync::Arc;

    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
    use marlin_quant::QuantTensor;

    use super::permute_act_order;
    use crate::act::{Act, ActDtype};
    use crate::device::{driver_err, CudaDevice};
    use crate::error::{CudaError, Result};
    use crate::int4::gemm::{int4_gemm_prepared, GemmOptions, GemmPlan, GemmWorkspace, Int4Weight};

    const MODULE: &str = "act_order";
    const SOURCE: &str = include_str!("../kernels/act_order.cu");
    /// Moves 16-bit words: f16 and bf16 activations alike.
    const GATHER: &str = "act_order_gather_u16";

    /// An act-order INT4 weight on the device: the K-permuted weight in the
    /// INT4 kernels' layout and the permutation.
    pub struct Int4ActOrderWeight {
        /// The permuted weight (a plain grouped INT4 weight).
        pub weight: Int4Weight,
        /// (K) original column of each permuted column.
        perm: CudaSlice<u32>,
    }

    impl Int4ActOrderWeight {
        /// Permute and repack on the host, upload, and load the gather
        /// kernel (so that later calls never load a module).
        pub fn from_quant(dev: &CudaDevice, w: &QuantTensor) -> Result<Self> {
            let (permuted, perm) = permute_act_order(w)?;
            let weight = Int4Weight::from_quant(dev, &permuted)?;
            dev.function(MODULE, SOURCE, GATHER, 0)?;
            Ok(Self {
                weight,
                perm: dev.upload("act-order permutation", &perm)?,
            })
        }

        pub fn n(&self) -> usize {
            self.weight.n
        }

        pub fn k(&self) -> usize {
            self.weight.k
        }

        /// Bytes one product streams (the INT4 weight and the permutation).
        pub fn weight_bytes(&self) -> usize {
            self.weight.weight_bytes() + 4 * self.weight.k
        }
    }

    /// `out[row, j] = a[row, perm[j]]` for M rows (out >= M*K elements),
    /// f16 or bf16. Capture-safe: one launch, no allocation.
    pub fn gather_activations<T: ActDtype>(
        dev: &Arc<CudaDevice>,
        a: &CudaView<'_, T>,
        m: usize,
        w: &Int4ActOrderWeight,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let k = w.k();
        let total = m
            .checked_mul(k)
            .ok_or_else(|| CudaError::Shape("M*K overflows".into()))?;
        if a.len() < total || out.len() < total {
            return Err(CudaError::Shape(format!(
                "act-order gather M={m} K={k}: A has {} elements, the scratch {} (need {total})",
                a.len(),
                out.len()
            )));
        }
        let to_i32 =
            |v: usize| i32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} exceeds i32")));
        let (m_i32, k_i32) = (to_i32(m)?, to_i32(k)?);
        let blocks = u32::try_from(total.div_ceil(256))
            .map_err(|_| CudaError::Shape("gather grid too large".into()))?;
        let func = dev.function(MODULE, SOURCE, GATHER, 0)?;
        let stream = dev.stream();
        let mut launch = stream.launch_builder(&func);
        launch.arg(a).arg(&w.perm).arg(out).arg(&m_i32).arg(&k_i32);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match act_order_gather_u16 (T is a 16-bit
        // type: f16 or bf16); A and out hold >= M*K elements (checked),
        // perm holds K entries < K (built by act_order_permutation).
        unsafe { launch.launch(cfg) }.map_err(|e| driver_err(&format!("launch {GATHER}"), e))?;
        Ok(())
    }

    /// Prepare `ws` for [`int4_act_order_gemm_prepared`] of `m` rows with
    /// f16 activations (the INT4 GEMM of the permuted weight; the gather
    /// kernel was loaded at upload); [`prepare_act_order_for`] takes the
    /// activation type.
    pub fn prepare_act_order(
        dev: &Arc<CudaDevice>,
        ws: &mut GemmWorkspace,
        w: &Int4ActOrderWeight,
        m: usize,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        prepare_act_order_for(dev, ws, w, m, opts, Act::F16)
    }

    /// [`prepare_act_order`] for activation type `act`.
    pub fn prepare_act_order_for(
        dev: &Arc<CudaDevice>,
        ws: &mut GemmWorkspace,
        w: &Int4ActOrderWeight,
        m: usize,
        opts: GemmOptions,
        act: Act,
    ) -> Result<GemmPlan> {
        ws.prepare_for(dev, &w.weight, m, opts, act)
    }

    /// C (M, N) = A (M, K) . W^T for an act-order weight, f16 or bf16:
    /// gather A's columns into `gathered` (>= M*K elements), then the INT4
    /// GEMM. Capture-safe after [`prepare_act_order`] /
    /// [`prepare_act_order_for`]: two or three launches (gather, GEMM or
    /// dequantize + cuBLAS), no allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn int4_act_order_gemm_prepared<T: ActDtype>(
        dev: &Arc<CudaDevice>,
        a: &CudaView<'_, T>,
        m: usize,
        w: &Int4ActOrderWeight,
        c: &mut CudaViewMut<'_, T>,
        ws: &mut GemmWorkspace,
        gathered: &mut CudaViewMut<'_, T>,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        gather_activations(dev, a, m, w, gathered)?;
        int4_gemm_prepared(dev, &gathered.as_view(), m, &w.weight, c, ws, opts)
    }

    /// [`int4_act_order_gemm_prepared`] on whole buffers, preparing first
    /// (allocates the workspace at first use).
    #[allow(clippy::too_many_arguments)]
    pub fn int4_act_order_gemm<T: ActDtype>(
        dev: &Arc<CudaDevice>,
        a: &CudaSlice<T>,
        m: usize,
        w: &Int4ActOrderWeight,
        c: &mut CudaSlice<T>,
        ws: &mut GemmWorkspace,
        gathered: &mut CudaSlice<T>,
        opts: GemmOptions,
    ) -> Result<GemmPlan> {
        prepare_act_order_for(dev, ws, w, m, opts, T::ACT)?;
        int4_act_order_gemm_prepared(
            dev,
            &a.as_view(),
            m,
            w,
            &mut c.as_view_mut(),
            ws,
            &mut gathered.as_view_mut(),
            opts,
        )
    }
}

#[cfg(test)]
mod tests {
    use marlin_quant::{quantize_rtn, QuantScheme, RtnOptions};

    use super::{act_order_permutation, permute_act_order};
    use crate::error::CudaError;
    use crate::int4::random::XorShift;

    /// A GPTQ-style g_idx: a random column order, group = position / g.
    pub(crate) fn random_g_idx(k: usize, group_size: usize, seed: u64) -> Vec<u32> {
        let mut rng = XorShift::new(seed);
        let mut order: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut g_idx = vec![0u32; k];
        for (pos, &c) in order.iter().enumerate() {
            g_idx[c] = (pos / group_size) as u32;
        }
        g_idx
    }

    #[test]
    fn permuted_tensor_dequantizes_to_permuted_columns() {
        let (n, k, g) = (24, 256, 64);
        for scheme in [QuantScheme::int4_sym(g), QuantScheme::int4_asym(g)] {
            let mut rng = XorShift::new(5);
            let w: Vec<f32> = (0..n * k).map(|_| rng.next_f32() - 0.5).collect();
            let mut q = quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).expect("quantize");
            q.g_idx = Some(random_g_idx(k, g, 9));
            q.validate().expect("valid act-order tensor");
            let want = q.dequantize().expect("dequantize");
            let (p, perm) = permute_act_order(&q).expect("permute");
            assert!(p.g_idx.is_none());
            let got = p.dequantize().expect("dequantize permuted");
            for r in 0..n {
                for (j, &c) in perm.iter().enumerate() {
                    assert_eq!(got[r * k + j], want[r * k + c as usize], "({r}, {j})");
                }
            }
        }
    }

    #[test]
    fn uneven_groups_are_errors() {
        // Group 0 with 3 columns, group 1 with 1.
        let err = act_order_permutation(&[0, 0, 1, 0], 2).expect_err("uneven");
        assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
        let err = act_order_permutation(&[0, 0, 5, 1], 2).expect_err("out of range");
        assert!(matches!(err, CudaError::Shape(_)), "{err}");
        assert_eq!(
            act_order_permutation(&[1, 0, 1, 0], 2).expect("even"),
            vec![1, 3, 0, 2]
        );
    }
}
