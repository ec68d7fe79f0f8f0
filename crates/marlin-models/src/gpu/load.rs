//! Builds a [`GpuDecoder`] from a checkpoint: the same `WeightSource`, GGUF
//! tensor names and config as the CPU path; every weight uploaded once.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use marlin_cuda::ops::GpuRope;
use marlin_cuda::CudaDevice;

use super::decoder::{GateUpWeights, GpuBlock, GpuDecoder, GpuEmbedding, QkvWeights};
use super::linear::GpuLinear;
use super::spec::spec_from_source;
use super::{GpuError, Result};
use crate::source::{TensorData, WeightSource};
use marlin_quant::{GgmlTensor, Granularity, QuantTensor};

/// Uploads norm weight `name` (`len` values) with the spec's offset added.
fn norm(
    dev: &CudaDevice,
    src: &dyn WeightSource,
    name: &str,
    len: usize,
    offset: f32,
) -> Result<CudaSlice<f32>> {
    let mut w = src.vector(name)?;
    if w.len() != len {
        return Err(GpuError::Tensor {
            name: name.to_string(),
            reason: format!("{} values, expected {len}", w.len()),
        });
    }
    if offset != 0.0 {
        w.iter_mut().for_each(|v| *v += offset);
    }
    Ok(dev.upload(name, &w)?)
}

/// Uploads linear `name` and checks it is (out, inp).
fn linear(
    dev: &Arc<CudaDevice>,
    src: &dyn WeightSource,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<GpuLinear> {
    let l = GpuLinear::upload(dev, name, src.tensor(name)?)?;
    if (l.rows(), l.cols()) != (out, inp) {
        return Err(GpuError::Tensor {
            name: name.to_string(),
            reason: format!(
                "shape {}x{}, expected {out}x{inp} (out x in)",
                l.rows(),
                l.cols()
            ),
        });
    }
    Ok(l)
}

/// Whether the loader fuses q|k|v and gate|up where their formats match
/// (not when `MARLIN_GPU_FUSE_PROJ=0`: measuring or bisecting).
fn fuse_projections() -> bool {
    std::env::var("MARLIN_GPU_FUSE_PROJ").map_or(true, |v| v.trim() != "0")
}

/// `parts` stacked along their rows (output features) into one tensor,
/// when they share a format whose rows are independent: the same GGUF
/// block type (each row is whole blocks), dense f32, or one quantized
/// scheme in the dense row-major layout with per-channel or per-group
/// scales (also per-tensor with equal scales), no act-order, equal
/// global scales. Every output row of the stack is computed from exactly
/// the bytes of the part's row, so the product is the parts' products
/// side by side. None when the formats differ (or a size overflows).
fn stack_rows(parts: &[TensorData]) -> Option<TensorData> {
    let rows = parts
        .iter()
        .try_fold(0usize, |acc, p| acc.checked_add(p.shape().0))?;
    let cols = parts.first()?.shape().1;
    if parts.iter().any(|p| p.shape().1 != cols) {
        return None;
    }
    match &parts[0] {
        TensorData::Ggml(first) => {
            let mut data = Vec::new();
            for p in parts {
                match p {
                    TensorData::Ggml(t) if t.ty == first.ty => data.extend_from_slice(&t.data),
                    _ => return None,
                }
            }
            GgmlTensor::new(first.ty, rows, cols, data)
                .ok()
                .map(TensorData::Ggml)
        }
        TensorData::F32 { .. } => {
            let mut data = Vec::new();
            for p in parts {
                match p {
                    TensorData::F32 { data: d, .. } => data.extend_from_slice(d),
                    _ => return None,
                }
            }
            Some(TensorData::F32 { rows, cols, data })
        }
        TensorData::Quant(first) => {
            let qs: Vec<&QuantTensor> = parts
                .iter()
                .map(|p| match p {
                    TensorData::Quant(t) => Some(t),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            let same = qs.iter().all(|t| {
                t.scheme == first.scheme
                    && t.g_idx.is_none()
                    && t.global_scale.to_bits() == first.global_scale.to_bits()
                    && t.zeros.is_some() == first.zeros.is_some()
            });
            let per_row = match first.scheme.granularity {
                Granularity::PerChannel | Granularity::PerGroup { .. } => true,
                // One scale (and zero point) for the whole stacked weight: every part must
                // carry the same ones.
                Granularity::PerTensor => qs
                    .iter()
                    .all(|t| t.scales == first.scales && t.zeros == first.zeros),
                Granularity::Block2d { .. } => false,
            };
            if !same || !per_row {
                return None;
            }
            let mut data = Vec::new();
            let mut scales = Vec::new();
            let mut zeros = first.zeros.as_ref().map(|_| Vec::new());
            for t in &qs {
                data.extend_from_slice(&t.data);
                if first.scheme.granularity != Granularity::PerTensor {
                    scales.extend_from_slice(&t.scales);
                    if let (Some(z), Some(tz)) = (zeros.as_mut(), t.zeros.as_ref()) {
                        z.extend_from_slice(tz);
                    }
                }
            }
            if first.scheme.granularity == Granularity::PerTensor {
                scales.clone_from(&first.scales);
                zeros.clone_from(&first.zeros);
            }
            Some(TensorData::Quant(QuantTensor {
                scheme: first.scheme,
                rows,
                cols,
                data,
                scales,
                zeros,
                global_scale: first.global_scale,
                g_idx: None,
            }))
        }
        TensorData::RotatedQuant { .. } => None,
    }
}

/// Tensors `names` (each `outs[i]` x `inp`) as one GPU weight of stacked
/// rows, or None when they do not stack (formats differ) or the stacked
/// weight is refused by its kernel (a shape constraint): the caller then
/// loads them one by one.
fn fused_linear(
    dev: &Arc<CudaDevice>,
    src: &dyn WeightSource,
    names: &[String],
    outs: &[usize],
    inp: usize,
) -> Result<Option<GpuLinear>> {
    if !fuse_projections() {
        return Ok(None);
    }
    let parts = names
        .iter()
        .map(|n| src.tensor(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for ((p, n), &out) in parts.iter().zip(names).zip(outs) {
        if p.shape() != (out, inp) {
            return Err(GpuError::Tensor {
                name: n.clone(),
                reason: format!(
                    "shape {}x{}, expected {out}x{inp} (out x in)",
                    p.shape().0,
                    p.shape().1
                ),
            });
        }
    }
    let Some(stacked) = stack_rows(&parts) else {
        return Ok(None);
    };
    drop(parts);
    match GpuLinear::upload(dev, &names.join("|"), stacked) {
        Ok(w) => Ok(Some(w)),
        // A shape or layout the stacked weight's kernel refuses (`upload` reports those as
        // the tensor's error): load the parts one by one. Anything else (out of memory, a
        // driver or compile error) is the caller's error.
        Err(GpuError::Tensor { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Loads every weight of `src` onto `dev`.
pub fn load_decoder(dev: &Arc<CudaDevice>, src: &dyn WeightSource) -> Result<GpuDecoder> {
    let tok = GpuLinear::upload(dev, "token_embd.weight", src.tensor("token_embd.weight")?)?;
    let table = match &tok {
        GpuLinear::Ggml(w) => Arc::clone(w),
        _ => {
            return Err(GpuError::Tensor {
                name: "token_embd.weight".into(),
                reason: "embedding lookups from Marlin-layout quantized tables are not supported"
                    .into(),
            })
        }
    };
    let mut spec = spec_from_source(src, tok.rows())?;
    let c = spec.cfg.clone();
    let d = c.hidden_size;
    if tok.cols() != d {
        return Err(GpuError::Tensor {
            name: "token_embd.weight".into(),
            reason: format!("{} columns, expected hidden size {d}", tok.cols()),
        });
    }
    let (qd, kvd, hd, ffn) = (
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.head_dim,
        c.ffn_size,
    );
    let off = spec.norm_offset;
    let mut blocks = Vec::with_capacity(c.n_layers);
    for il in 0..c.n_layers {
        let p = format!("blk.{il}");
        let opt_norm = |on: bool, name: &str, len: usize| -> Result<Option<CudaSlice<f32>>> {
            if on {
                Ok(Some(norm(dev, src, &format!("{p}.{name}"), len, off)?))
            } else {
                Ok(None)
            }
        };
        // One GEMM for q|k|v and one for gate|up where the checkpoint's
        // formats allow (decode reads the fused outputs in place).
        let qkv_names = ["attn_q", "attn_k", "attn_v"].map(|n| format!("{p}.{n}.weight"));
        let qkv = match fused_linear(dev, src, &qkv_names, &[qd, kvd, kvd], d)? {
            Some(w) => QkvWeights::Fused(w),
            None => QkvWeights::Separate {
                q: linear(dev, src, &qkv_names[0], qd, d)?,
                k: linear(dev, src, &qkv_names[1], kvd, d)?,
                v: linear(dev, src, &qkv_names[2], kvd, d)?,
            },
        };
        let gu_names = ["ffn_gate", "ffn_up"].map(|n| format!("{p}.{n}.weight"));
        let gate_up = match fused_linear(dev, src, &gu_names, &[ffn, ffn], d)? {
            Some(w) => GateUpWeights::Fused(w),
            None => GateUpWeights::Separate {
                gate: linear(dev, src, &gu_names[0], ffn, d)?,
                up: linear(dev, src, &gu_names[1], ffn, d)?,
            },
        };
        blocks.push(GpuBlock {
            attn_norm: norm(dev, src, &format!("{p}.attn_norm.weight"), d, off)?,
            qkv,
            wo: linear(dev, src, &format!("{p}.attn_output.weight"), d, qd)?,
            q_norm: opt_norm(spec.qk_norm, "attn_q_norm.weight", hd)?,
            k_norm: opt_norm(spec.qk_norm, "attn_k_norm.weight", hd)?,
            post_attn_norm: opt_norm(spec.post_norms, "post_attention_norm.weight", d)?,
            ffn_norm: norm(dev, src, &format!("{p}.ffn_norm.weight"), d, off)?,
            gate_up,
            down: linear(dev, src, &format!("{p}.ffn_down.weight"), d, ffn)?,
            post_ffn_norm: opt_norm(spec.post_norms, "post_ffw_norm.weight", d)?,
        });
    }
    spec.cfg.tied_embeddings = !src.contains("output.weight");
    // Tied: the LM head is the embedding table itself (one copy).
    let lm_head = if spec.cfg.tied_embeddings {
        tok
    } else {
        linear(dev, src, "output.weight", c.vocab_size, d)?
    };
    let ropes = spec
        .ropes
        .iter()
        .map(|r| GpuRope::new(dev, r))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(GpuDecoder {
        out_norm: norm(dev, src, "output_norm.weight", d, off)?,
        embed: GpuEmbedding::Table(table),
        blocks,
        ropes,
        lm_head,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use marlin_quant::{quantize_rtn, GgmlType, QuantScheme, RtnOptions, ScaleDType};

    fn weights(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn int4(rows: usize, cols: usize, seed: u32, asym: bool) -> QuantTensor {
        let g = Granularity::PerGroup { group_size: 32 };
        let scheme = if asym {
            QuantScheme::int_asym(4, g, ScaleDType::F16)
        } else {
            QuantScheme::int_sym(4, g, ScaleDType::F16)
        };
        quantize_rtn(
            &weights(rows, cols, seed),
            rows,
            cols,
            scheme,
            &RtnOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn stacked_quant_rows_dequantize_to_the_parts_side_by_side() {
        let (a, b, c) = (
            int4(8, 64, 1, true),
            int4(4, 64, 2, true),
            int4(4, 64, 3, true),
        );
        let parts = [a, b, c].map(TensorData::Quant);
        let Some(TensorData::Quant(s)) = stack_rows(&parts) else {
            panic!("INT4 g32 parts of one scheme must stack");
        };
        assert_eq!((s.rows, s.cols), (16, 64));
        let mut want = Vec::new();
        for p in &parts {
            let TensorData::Quant(t) = p else {
                unreachable!()
            };
            want.extend(t.dequantize().unwrap());
        }
        assert_eq!(s.dequantize().unwrap(), want);
        // Another scheme (symmetric), other columns, act-order: kept apart.
        let first = || TensorData::Quant(int4(8, 64, 1, true));
        let sym = TensorData::Quant(int4(4, 64, 4, false));
        assert!(stack_rows(&[first(), sym]).is_none());
        let wide = TensorData::Quant(int4(4, 96, 5, true));
        assert!(stack_rows(&[first(), wide]).is_none());
        let mut ordered = int4(4, 64, 6, true);
        ordered.g_idx = Some((0..64u32).map(|c| c / 32).collect());
        assert!(stack_rows(&[first(), TensorData::Quant(ordered)]).is_none());
    }

    #[test]
    fn per_tensor_parts_stack_only_with_the_same_scale_and_zero_point() {
        let per_tensor = |seed: u32| {
            let scheme = QuantScheme::int_asym(4, Granularity::PerTensor, ScaleDType::F32);
            quantize_rtn(&weights(4, 64, seed), 4, 64, scheme, &RtnOptions::default()).unwrap()
        };
        let a = per_tensor(1);
        let mut same = per_tensor(2);
        same.scales.clone_from(&a.scales);
        same.zeros.clone_from(&a.zeros);
        let Some(TensorData::Quant(s)) = stack_rows(&[
            TensorData::Quant(a.clone()),
            TensorData::Quant(same.clone()),
        ]) else {
            panic!("per-tensor parts with one scale and zero point must stack");
        };
        let want = [a.dequantize().unwrap(), same.dequantize().unwrap()].concat();
        assert_eq!(s.dequantize().unwrap(), want);
        // Same scale, another zero point: the stacked weight could not hold both.
        let mut other_zero = same;
        let z = other_zero
            .zeros
            .as_mut()
            .expect("asymmetric scheme has zero points");
        z[0] = if z[0] == 0.0 { 1.0 } else { 0.0 };
        assert!(stack_rows(&[TensorData::Quant(a), TensorData::Quant(other_zero)]).is_none());
    }

    #[test]
    fn stacked_ggml_and_f32_rows_are_the_parts_concatenated() {
        let f32_ggml = |rows: usize, seed: u32| {
            let w = weights(rows, 64, seed);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            TensorData::Ggml(GgmlTensor::new(GgmlType::F32, rows, 64, bytes).unwrap())
        };
        let (a, b) = (f32_ggml(3, 1), f32_ggml(5, 2));
        let Some(TensorData::Ggml(s)) = stack_rows(&[f32_ggml(3, 1), f32_ggml(5, 2)]) else {
            panic!("same-type GGUF parts must stack");
        };
        let (TensorData::Ggml(ta), TensorData::Ggml(tb)) = (&a, &b) else {
            unreachable!()
        };
        assert_eq!(s.rows, 8);
        assert_eq!(s.data, [ta.data.clone(), tb.data.clone()].concat());
        let f = |rows: usize, seed: u32| TensorData::F32 {
            rows,
            cols: 64,
            data: weights(rows, 64, seed),
        };
        let Some(TensorData::F32 { rows, data, .. }) = stack_rows(&[f(2, 1), f(3, 2)]) else {
            panic!("f32 parts must stack");
        };
        assert_eq!(rows, 5);
        assert_eq!(data, [weights(2, 64, 1), weights(3, 64, 2)].concat());
        // Mixed kinds stay separate.
        assert!(stack_rows(&[a, f(2, 1)]).is_none());
    }
}
