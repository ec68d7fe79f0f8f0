//! Weights and hyper-parameters from a Hugging Face directory
//! (`config.json` + safetensors). Tensors are requested by GGUF names and
//! translated here, so architectures have one naming scheme. Quantized
//! linears of marlin checkpoints (`marlin_io::checkpoint`) load as
//! [`TensorData::Quant`], and so do GPTQ / AWQ / compressed-tensors
//! linears (`quantization_config.quant_method`), repacked by
//! `marlin_io::interop`.

use super::{SourceKind, TensorData, WeightSource};
use crate::config::{HParam, HValue};
use crate::error::{ModelError, Result};
use marlin_io::checkpoint;
use marlin_io::hf::HfModelDir;
use marlin_io::interop::ForeignFormat;
use std::path::Path;

pub struct HfDirSource {
    dir: HfModelDir,
    arch: String,
    /// GPTQ / AWQ / compressed-tensors checkpoints: how their linears are
    /// stored (None: marlin checkpoint or dense).
    foreign: Option<ForeignFormat>,
}

impl HfDirSource {
    pub fn open(path: &Path) -> Result<Self> {
        let dir = HfModelDir::open(path)?;
        let arch = dir
            .model_type()
            .ok_or_else(|| {
                ModelError::Config(format!("{}: config.json has no model_type", path.display()))
            })?
            .to_string();
        if arch == "gemma3" {
            // The multimodal checkpoint nests the text model under
            // `text_config` / `language_model.`; only the text-only layout
            // is mapped here.
            return Err(ModelError::UnsupportedArch(
                "gemma3 (multimodal HF directory; use a gemma3_text checkpoint or GGUF)".into(),
                crate::arch::supported_names(),
            ));
        }
        let foreign = ForeignFormat::of_dir(&dir)?;
        Ok(Self { dir, arch, foreign })
    }

    /// The opened directory (tensor names, tokenizer files).
    pub fn dir(&self) -> &HfModelDir {
        &self.dir
    }

    /// The Hugging Face name of GGUF-style tensor `name`.
    fn hf_name(&self, name: &str) -> Option<String> {
        hf_tensor_name(&self.arch, name)
    }

    /// The quantized linear stored for GGUF-style `name` in marlin's
    /// checkpoint layout (`<base>.qcodes` + scales ...), if there is one.
    fn quant_tensor(&self, name: &str) -> Result<Option<marlin_quant::QuantTensor>> {
        let Some(hf) = self.hf_name(name) else {
            return Ok(None);
        };
        let Some(base) = checkpoint::linear_base(&hf) else {
            return Ok(None);
        };
        if let Some(foreign) = &self.foreign {
            return Ok(foreign.read_linear(&self.dir, base)?);
        }
        Ok(checkpoint::read_quant_tensor(&self.dir, base)?)
    }

    fn view(&self, name: &str) -> Result<marlin_io::safetensors::TensorView<'_>> {
        let hf = self
            .hf_name(name)
            .ok_or_else(|| ModelError::tensor(name, "no Hugging Face equivalent"))?;
        Ok(self.dir.tensor(&hf)?)
    }
}

/// The Hugging Face name of GGUF-style tensor `name` for architecture
/// `arch` (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`),
/// or `None` when it has no equivalent. Checkpoint writers use the same map.
pub fn hf_tensor_name(arch: &str, name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gemma = arch.starts_with("gemma");
    let hf_tail = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        // Gemma has a norm after attention *and* one before the MLP;
        // Llama's "post_attention_layernorm" is the one before the MLP.
        "ffn_norm.weight" if gemma => "pre_feedforward_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "post_attention_norm.weight" if gemma => "post_attention_layernorm.weight",
        "post_ffw_norm.weight" if gemma => "post_feedforward_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_tail}"))
}

impl WeightSource for HfDirSource {
    fn kind(&self) -> SourceKind {
        SourceKind::HfDir
    }

    fn architecture(&self) -> &str {
        &self.arch
    }

    fn hparam(&self, key: HParam) -> Result<Option<HValue>> {
        for path in key.hf_paths() {
            let mut v = self.dir.config();
            let mut found = true;
            for part in path.iter() {
                match v.get(part) {
                    Some(x) => v = x,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if !found || v.is_null() {
                continue;
            }
            return match v {
                serde_json::Value::Number(n) => {
                    n.as_f64().map(|x| Some(HValue::Num(x))).ok_or_else(|| {
                        ModelError::Config(format!("config.json {}: bad number", path.join(".")))
                    })
                }
                serde_json::Value::Bool(b) => Ok(Some(HValue::Bool(*b))),
                serde_json::Value::String(s) => Ok(Some(HValue::Str(s.clone()))),
                _ => Err(ModelError::Config(format!(
                    "config.json {}: expected a number, bool or string",
                    path.join(".")
                ))),
            };
        }
        Ok(None)
    }

    fn contains(&self, name: &str) -> bool {
        self.hf_name(name).is_some_and(|hf| {
            self.dir.contains(&hf)
                || checkpoint::linear_base(&hf).is_some_and(|base| {
                    self.dir
                        .contains(&checkpoint::QuantTensorNames::new(base).codes)
                        || self
                            .foreign
                            .as_ref()
                            .is_some_and(|f| f.contains_linear(&self.dir, base))
                })
        })
    }

    /// A dense matrix, or (marlin checkpoints) the stored `QuantTensor` as
    /// it is: the CPU kernels run it without dequantizing.
    fn tensor(&self, name: &str) -> Result<TensorData> {
        if let Some(t) = self.quant_tensor(name)? {
            // MR-GPTQ linears carry the rotation their input needs.
            let rotation = match (&self.foreign, self.hf_name(name)) {
                (None, Some(hf)) => match checkpoint::linear_base(&hf) {
                    Some(base) => checkpoint::read_rotation(&self.dir, base)?,
                    None => None,
                },
                _ => None,
            };
            return Ok(match rotation {
                Some(rotation) => TensorData::RotatedQuant {
                    tensor: t,
                    rotation,
                },
                None => TensorData::Quant(t),
            });
        }
        let view = self.view(name)?;
        let (rows, cols) = match view.shape {
            [r, c] => (*r, *c),
            other => {
                return Err(ModelError::tensor(
                    name,
                    format!("shape {other:?}, expected a matrix"),
                ));
            }
        };
        Ok(TensorData::F32 {
            rows,
            cols,
            data: view.to_f32()?,
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.view(name)?.to_f32()?)
    }
}
