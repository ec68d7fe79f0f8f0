//! From a loaded source (GGUF or Hugging Face directory) to the Hugging Face
//! conventions of a marlin checkpoint: tensor names, Llama Q/K row order
//! (llama.cpp permutes them for adjacent-pair RoPE), Gemma norm weights
//! (GGUF stores `1 + w`, Hugging Face `w`), and `config.json`.

use crate::QuantizeError;
use marlin_models::config::{HParam, HValue};
use marlin_models::source::{hf_tensor_name, SourceKind, TensorData, WeightSource};
use serde_json::{json, Map, Value};

/// Every hyper-parameter written to config.json (those with a GGUF key).
const HPARAMS: &[HParam] = &[
    HParam::VocabSize,
    HParam::ContextLength,
    HParam::EmbeddingLength,
    HParam::BlockCount,
    HParam::FeedForwardLength,
    HParam::HeadCount,
    HParam::HeadCountKv,
    HParam::HeadDim,
    HParam::RmsEps,
    HParam::RopeFreqBase,
    HParam::RopeFreqBaseLocal,
    HParam::RopeScalingType,
    HParam::RopeScalingFactor,
    HParam::RopeScalingOrigContext,
    HParam::RopeScalingLowFreqFactor,
    HParam::RopeScalingHighFreqFactor,
    HParam::SlidingWindow,
    HParam::SlidingWindowPattern,
    HParam::FinalLogitSoftcap,
    HParam::QueryPreAttnScalar,
];

/// Architectures the pipeline converts (their loaders and name maps exist).
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "mistral", "gemma3", "gemma3_text", "qwen3"];

/// Shapes the pipeline needs, read once from the source.
#[derive(Clone, Debug)]
pub struct ModelShape {
    pub arch: String,
    pub kind: SourceKind,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub tied_embeddings: bool,
}

fn bad(reason: impl Into<String>) -> QuantizeError {
    QuantizeError::BadInput(reason.into())
}

fn hparam_usize(src: &dyn WeightSource, key: HParam) -> Result<Option<usize>, QuantizeError> {
    match src.hparam(key)? {
        None => Ok(None),
        Some(HValue::Num(v)) if v >= 0.0 && v.fract() == 0.0 && v < 1e12 => Ok(Some(v as usize)),
        Some(v) => Err(bad(format!("{key:?} is {v:?}, expected a count"))),
    }
}

impl ModelShape {
    /// Reads and checks the architecture and shapes.
    pub fn read(src: &dyn WeightSource) -> Result<Self, QuantizeError> {
        let arch = src.architecture().to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(bad(format!(
                "unsupported architecture `{arch}` (supported: {})",
                SUPPORTED_ARCHS.join(", ")
            )));
        }
        if src.contains("rope_freqs.weight") {
            return Err(bad(
                "rope frequency factors (rope_freqs.weight) have no config.json form here",
            ));
        }
        let need = |key| hparam_usize(src, key)?.ok_or_else(|| bad(format!("missing {key:?}")));
        let n_layers = need(HParam::BlockCount)?;
        let n_heads = need(HParam::HeadCount)?;
        let hidden = need(HParam::EmbeddingLength)?;
        let n_kv_heads = hparam_usize(src, HParam::HeadCountKv)?.unwrap_or(n_heads);
        let head_dim = match hparam_usize(src, HParam::HeadDim)? {
            Some(d) => d,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        if n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || hidden == 0 {
            return Err(bad("zero layers, heads, head size or hidden size"));
        }
        if !n_heads.is_multiple_of(n_kv_heads) || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "{n_heads} heads over {n_kv_heads} KV heads of size {head_dim}"
            )));
        }
        let tied_embeddings = !src.contains("output.weight");
        Ok(Self {
            kind: src.kind(),
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            tied_embeddings,
            arch,
        })
    }

    fn is_gemma(&self) -> bool {
        self.arch.starts_with("gemma")
    }

    /// What the model adds to stored norm weights in this source
    /// (Gemma from a Hugging Face directory multiplies by `1 + w`).
    fn source_norm_offset(&self) -> f32 {
        match (self.is_gemma(), self.kind) {
            (true, SourceKind::HfDir) => 1.0,
            _ => 0.0,
        }
    }

    /// What a Hugging Face checkpoint of this architecture expects to be
    /// added to its stored norm weights.
    fn hf_norm_offset(&self) -> f32 {
        if self.is_gemma() {
            1.0
        } else {
            0.0
        }
    }

    /// Norm weights as the model multiplies by them (`γ`), from the source.
    pub fn effective_norm(
        &self,
        src: &dyn WeightSource,
        name: &str,
    ) -> Result<Vec<f32>, QuantizeError> {
        let mut v = src.vector(name)?;
        let off = self.source_norm_offset();
        v.iter_mut().for_each(|x| *x += off);
        check_finite_tensor(name, &v)?;
        Ok(v)
    }

    /// `γ` back to what a Hugging Face checkpoint stores.
    pub fn stored_hf_norm(&self, mut gamma: Vec<f32>) -> Vec<f32> {
        let off = self.hf_norm_offset();
        gamma.iter_mut().for_each(|x| *x -= off);
        gamma
    }

    /// Whether Q/K rows are in llama.cpp's permuted order in this source.
    fn qk_permuted(&self) -> bool {
        self.kind == SourceKind::Gguf && matches!(self.arch.as_str(), "llama" | "mistral")
    }

    /// A matrix of the source as f32 (N, K) in Hugging Face row order.
    pub fn dense_hf(&self, src: &dyn WeightSource, name: &str) -> Result<Dense, QuantizeError> {
        let (rows, cols, mut data) = match src.tensor(name)? {
            TensorData::F32 { rows, cols, data } => (rows, cols, data),
            TensorData::Ggml(t) => (t.rows, t.cols, t.dequantize()?),
            TensorData::Quant(t) => (t.rows, t.cols, t.dequantize()?),
            // MR-GPTQ input: back to the original basis (`Ŵr·R`).
            TensorData::RotatedQuant { tensor, rotation } => {
                let rotated = tensor.dequantize()?;
                let data = marlin_models::layers::hadamard::unrotate_rows(
                    &rotation,
                    &rotated,
                    tensor.rows,
                );
                (tensor.rows, rotation.k, data)
            }
        };
        check_finite_tensor(name, &data)?;
        if self.qk_permuted() {
            let heads = if name.ends_with(".attn_q.weight") {
                Some(self.n_heads)
            } else if name.ends_with(".attn_k.weight") {
                Some(self.n_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                data = unpermute_rope_rows(&data, rows, cols, heads)?;
            }
        }
        Ok(Dense { rows, cols, data })
    }

    /// The Hugging Face name of GGUF-style `name`, or an error naming it.
    pub fn hf_name(&self, name: &str) -> Result<String, QuantizeError> {
        let arch = if self.arch == "gemma3" {
            "gemma3_text"
        } else {
            &self.arch
        };
        hf_tensor_name(arch, name)
            .ok_or_else(|| bad(format!("tensor `{name}` has no Hugging Face name")))
    }

    /// config.json of the checkpoint (without `quantization_config`).
    pub fn hf_config(&self, src: &dyn WeightSource) -> Result<Value, QuantizeError> {
        let mut root = Map::new();
        let model_type = if self.arch == "gemma3" {
            "gemma3_text"
        } else {
            &self.arch
        };
        root.insert("model_type".into(), json!(model_type));
        let class = match model_type {
            "gemma3_text" => "Gemma3ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        root.insert("architectures".into(), json!([class]));
        root.insert("torch_dtype".into(), json!("float32"));
        root.insert("tie_word_embeddings".into(), json!(self.tied_embeddings));
        root.insert("head_dim".into(), json!(self.head_dim));
        if let Some(HValue::Num(rot)) = src.hparam(HParam::RopeDimCount)? {
            if rot != self.head_dim as f64 {
                return Err(bad(format!(
                    "partial RoPE ({rot} of {} dims) has no config.json form here",
                    self.head_dim
                )));
            }
        }
        for &key in HPARAMS {
            let Some(value) = src.hparam(key)? else {
                continue;
            };
            let value = match (key, value, self.kind) {
                // llama.cpp's `attention.scale` is the score multiplier;
                // Hugging Face's query_pre_attn_scalar s gives 1/sqrt(s).
                (HParam::QueryPreAttnScalar, HValue::Num(m), SourceKind::Gguf) if m > 0.0 => {
                    json!(1.0 / (m * m))
                }
                (_, HValue::Num(x), _) if x.fract() == 0.0 && x.abs() < 9e15 => json!(x as i64),
                (_, HValue::Num(x), _) => json!(x),
                (_, HValue::Bool(b), _) => json!(b),
                (_, HValue::Str(s), _) => json!(s),
            };
            let Some(path) = key.hf_paths().first() else {
                continue;
            };
            insert_path(&mut root, path, value);
        }
        Ok(Value::Object(root))
    }
}

fn insert_path(root: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            root.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let child = root
                .entry((*first).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = child {
                insert_path(m, rest, value);
            }
        }
    }
}

/// A dense row-major (rows, cols) matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

pub(crate) fn check_finite_tensor(name: &str, v: &[f32]) -> Result<(), QuantizeError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(bad(format!("tensor `{name}` has {} at index {i}", v[i]))),
        None => Ok(()),
    }
}

/// Undoes llama.cpp's Q/K permutation: within each head of `head_dim`
/// rows, GGUF row `2j + t` is Hugging Face row `t · head_dim/2 + j`.
pub fn unpermute_rope_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>, QuantizeError> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || w.len() != rows * cols
    {
        return Err(bad(format!(
            "{rows} x {cols} Q/K matrix does not split into {heads} heads of even size"
        )));
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0.0f32; w.len()]; // (rows, cols)
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * hd + 2 * j + t) * cols;
                let dst = (h * hd + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (convert_hf_to_gguf.py), the forward direction.
    fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let hd = rows / heads;
        let half = hd / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..heads {
            for t in 0..2 {
                for j in 0..half {
                    let src = (h * hd + t * half + j) * cols;
                    let dst = (h * hd + 2 * j + t) * cols;
                    out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (rows, cols, heads) = (24, 3, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let back = unpermute_rope_rows(&permute(&w, rows, cols, heads), rows, cols, heads).unwrap();
        assert_eq!(back, w);
        assert!(unpermute_rope_rows(&w, rows, cols, 5).is_err());
        assert!(unpermute_rope_rows(&w, rows, cols, 0).is_err());
    }
}
