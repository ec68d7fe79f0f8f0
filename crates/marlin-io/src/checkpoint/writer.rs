//! Writing safetensors files (atomically: a temporary file renamed into
//! place, so a crash never leaves a truncated file under the final name)
//! and the tensors of one quantized linear.

use super::{QuantTensorNames, SCHEME_METADATA_PREFIX};
use crate::error::{IoError, Result};
use crate::safetensors::Dtype;
use marlin_quant::QuantTensor;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One tensor queued for writing.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Little-endian elements, row-major.
    bytes: Vec<u8>,
}

/// Collects tensors in memory, then writes one safetensors file.
#[derive(Default)]
pub struct SafetensorsWriter {
    entries: Vec<Entry>,
    metadata: BTreeMap<String, String>,
}

fn shape_err(name: &str, reason: impl Into<String>) -> IoError {
    IoError::TensorShape {
        name: name.to_string(),
        reason: reason.into(),
    }
}

impl SafetensorsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of the queued tensors, in insertion order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A `__metadata__` entry.
    pub fn metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Queues raw little-endian bytes; errors when the byte count does not
    /// match dtype x shape or the name is already queued.
    pub fn add_bytes(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        bytes: Vec<u8>,
    ) -> Result<()> {
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| shape_err(name, format!("shape {shape:?} overflows")))?;
        if bytes.len() != expected {
            return Err(shape_err(
                name,
                format!(
                    "{} bytes for {} x {shape:?} ({expected} bytes)",
                    bytes.len(),
                    dtype.name()
                ),
            ));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(shape_err(name, "written twice"));
        }
        self.entries.push(Entry {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes,
        });
        Ok(())
    }

    /// Queues f32 values of `shape`.
    pub fn add_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_bytes(name, Dtype::F32, shape, bytes)
    }

    /// Queues i32 values of `shape`.
    pub fn add_i32(&mut self, name: &str, shape: &[usize], values: &[i32]) -> Result<()> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_bytes(name, Dtype::I32, shape, bytes)
    }

    /// Queues the tensors of quantized linear `base` (see the module docs of
    /// [`super`] for names and dtypes) and its scheme in `__metadata__`.
    pub fn add_quant(&mut self, base: &str, t: &QuantTensor) -> Result<()> {
        t.validate()?;
        let names = QuantTensorNames::new(base);
        let (grid_rows, grid_cols) = t.scheme.scale_grid(t.rows, t.cols)?;
        let row_bytes = t.data.len() / t.rows; // validate() checked data = rows x row bytes
        self.add_bytes(
            &names.codes,
            Dtype::U8,
            &[t.rows, row_bytes],
            t.data.clone(),
        )?;
        self.add_f32(&names.scales, &[grid_rows, grid_cols], &t.scales)?;
        if let Some(zeros) = &t.zeros {
            self.add_f32(&names.zeros, &[grid_rows, grid_cols], zeros)?;
        }
        if let Some(g_idx) = &t.g_idx {
            let values = g_idx
                .iter()
                .map(|&g| i32::try_from(g).map_err(|_| shape_err(&names.g_idx, "entry > i32")))
                .collect::<Result<Vec<i32>>>()?;
            self.add_i32(&names.g_idx, &[t.cols], &values)?;
        }
        if t.scheme.global_scale {
            self.add_f32(&names.global_scale, &[1], &[t.global_scale])?;
        }
        let mut scheme = super::scheme_json::scheme_to_json(&t.scheme);
        if let Some(m) = scheme.as_object_mut() {
            m.insert("rows".into(), t.rows.into());
            m.insert("cols".into(), t.cols.into());
        }
        self.metadata(
            format!("{SCHEME_METADATA_PREFIX}{base}"),
            scheme.to_string(),
        );
        Ok(())
    }

    /// Records that quantized linear `base` (queued with [`Self::add_quant`],
    /// `padded_k` columns) holds Hadamard-rotated weights: inference rotates
    /// its input the same way (`marlin.rotation.<base>` in `__metadata__`).
    pub fn add_rotation(&mut self, base: &str, rotation: &super::ActivationRotation) -> Result<()> {
        rotation.validate()?;
        self.metadata(
            format!("{}{base}", super::ROTATION_METADATA_PREFIX),
            rotation.to_json().to_string(),
        );
        Ok(())
    }

    /// Writes the file atomically: `<path>.partial`, flushed and synced,
    /// then renamed to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(&self.metadata)?);
        }
        let mut offset = 0usize;
        for e in &self.entries {
            let end = offset + e.bytes.len();
            header.insert(
                e.name.clone(),
                serde_json::json!({
                    "dtype": e.dtype.name(),
                    "shape": e.shape,
                    "data_offsets": [offset, end],
                }),
            );
            offset = end;
        }
        let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header))?;
        // The data section starts 8-byte aligned, as the reference writer does.
        while (8 + header_bytes.len()) % 8 != 0 {
            header_bytes.push(b' ');
        }
        write_atomic(path, |f| {
            f.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
            f.write_all(&header_bytes)?;
            for e in &self.entries {
                f.write_all(&e.bytes)?;
            }
            Ok(())
        })
    }
}

/// Writes `path` through `<path>.partial` + fsync + rename.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let io = |source| IoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    fill(&mut w).map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Writes a JSON document atomically, pretty-printed.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    write_atomic(path, |f| f.write_all(&text))
}

/// Writes `model.safetensors.index.json` mapping each tensor to its shard.
pub fn write_index(
    dir: &Path,
    weight_map: &BTreeMap<String, String>,
    total_size: u64,
) -> Result<()> {
    let doc = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    write_json_atomic(&dir.join(crate::hf::INDEX_FILE), &doc)
}
