//! Token embeddings. The table stays in the checkpoint's format (quantized
//! tables stay quantized: only the rows looked up are dequantized), and a
//! tied LM head shares the same copy.

use super::Linear;
use crate::error::{ModelError, Result};
use marlin_cpu::CpuWeight;
use std::sync::Arc;

pub struct Embedding {
    /// (vocab, d)
    table: Arc<CpuWeight>,
    name: String,
}

impl Embedding {
    /// Looks tokens up in the weight of `linear` (vocab, d).
    pub fn from_linear(linear: &Linear) -> Self {
        Self {
            table: linear.shared_weight(),
            name: linear.name().to_string(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.table.rows()
    }

    pub fn dim(&self) -> usize {
        self.table.cols()
    }

    /// `tokens` (m) -> new (m, d), every value multiplied by `scale`.
    pub fn forward(&self, tokens: &[u32], scale: f32) -> Result<Vec<f32>> {
        let d = self.dim();
        let mut out = vec![0.0f32; tokens.len() * d]; // (m, d)
        for (&tok, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
            let id = tok as usize;
            if id >= self.vocab_size() {
                return Err(ModelError::TokenOutOfRange {
                    id: tok,
                    vocab: self.vocab_size(),
                });
            }
            match self.table.as_ref() {
                CpuWeight::Ggml(w) => w.row_f32(id, row)?,
                CpuWeight::Dense(w) => row.copy_from_slice(&w.data()[id * d..(id + 1) * d]),
                CpuWeight::Quant(_) => {
                    return Err(ModelError::tensor(
                        &self.name,
                        "embedding lookups from dense-packed quantized tables are not supported",
                    ))
                }
            }
            if scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(out)
    }
}
