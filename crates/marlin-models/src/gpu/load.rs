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
use crate::source::WeightSource;

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
        blocks.push(GpuBlock {
            attn_norm: norm(dev, src, &format!("{p}.attn_norm.weight"), d, off)?,
            qkv: QkvWeights::Separate {
                q: linear(dev, src, &format!("{p}.attn_q.weight"), qd, d)?,
                k: linear(dev, src, &format!("{p}.attn_k.weight"), kvd, d)?,
                v: linear(dev, src, &format!("{p}.attn_v.weight"), kvd, d)?,
            },
            wo: linear(dev, src, &format!("{p}.attn_output.weight"), d, qd)?,
            q_norm: opt_norm(spec.qk_norm, "attn_q_norm.weight", hd)?,
            k_norm: opt_norm(spec.qk_norm, "attn_k_norm.weight", hd)?,
            post_attn_norm: opt_norm(spec.post_norms, "post_attention_norm.weight", d)?,
            ffn_norm: norm(dev, src, &format!("{p}.ffn_norm.weight"), d, off)?,
            gate_up: GateUpWeights::Separate {
                gate: linear(dev, src, &format!("{p}.ffn_gate.weight"), ffn, d)?,
                up: linear(dev, src, &format!("{p}.ffn_up.weight"), ffn, d)?,
            },
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
