//! Token embeddings. Quantized tables stay quantized: only the rows looked
//! up are dequantized.

use crate::error::{ModelError, Result};
use crate::source::TensorData;
use marlin_quant::ggml::dequantize_row;
use marlin_quant::GgmlTensor;

enum Table {
    /// (vocab, d) in its ggml block layout.
    Ggml(GgmlTensor),
    /// (vocab, d) row-major.
    F32(Vec<f32>),
}

pub struct Embedding {
    table: Table,
    vocab: usize,
    dim: usize,
}

impl Embedding {
    pub fn from_data(name: &str, data: TensorData) -> Result<Self> {
        let (vocab, dim) = data.shape();
        let table = match data {
            TensorData::Ggml(t) => Table::Ggml(t),
            TensorData::F32 { data, .. } => Table::F32(data),
            TensorData::Quant(_) => {
                return Err(ModelError::tensor(
                    name,
                    "embedding tables in dense-packed quantized form are not supported",
                ))
            }
        };
        Ok(Self { table, vocab, dim })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `tokens` (m) -> new (m, d), every value multiplied by `scale`.
    pub fn forward(&self, tokens: &[u32], scale: f32) -> Result<Vec<f32>> {
        let d = self.dim;
        let mut out = vec![0.0f32; tokens.len() * d]; // (m, d)
        for (&tok, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
            let id = tok as usize;
            if id >= self.vocab {
                return Err(ModelError::TokenOutOfRange {
                    id: tok,
                    vocab: self.vocab,
                });
            }
            match &self.table {
                Table::Ggml(t) => dequantize_row(t.ty, t.row(id)?, row)?,
                Table::F32(data) => row.copy_from_slice(&data[id * d..(id + 1) * d]),
            }
            if scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(out)
    }
}
