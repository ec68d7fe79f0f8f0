//! GGUF v2/v3 reader, hardened against malformed files.
//!
//! [`GgufFile::open`] memory-maps the file and parses its header, metadata
//! and tensor infos; tensor data stays in the map until asked for. Every
//! limit the parser enforces is a `pub const` in [`limits`].

mod keys;
mod parse;
mod types;
mod value;
mod write;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use marlin_quant::{GgmlTensor, GgmlType};

pub use keys::{GgufKey, KeyName, MetaKey, ARCHITECTURE_KEY};
pub use types::{ggml_type_info, GgmlTypeInfo};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use write::GgufBuilder;

use crate::error::{IoError, Result};
use crate::mapped::{floats_to_f32, FileBytes, FloatEncoding};

/// The parser's limits and defaults.
pub mod limits {
    pub use super::parse::{
        DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS,
        MAX_KEY_LEN, MAX_KV_COUNT, MAX_STRING_LEN, MAX_TENSOR_COUNT, MAX_TENSOR_NAME_LEN,
    };
}

/// Where and what one tensor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<usize>,
    /// Raw ggml type id, kept even when marlin does not know the type.
    pub type_id: u32,
    /// Offset of the data from the start of the data section.
    pub offset: usize,
    /// Bytes of data; `None` when the type id is unknown to ggml's table.
    pub byte_size: Option<usize>,
}

impl TensorInfo {
    /// The type if marlin-quant supports it.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    /// Block geometry if the id is any type ggml defines.
    pub fn type_info(&self) -> Option<GgmlTypeInfo> {
        ggml_type_info(self.type_id)
    }

    /// `q4_K`, `iq2_xs`, or `unknown(99)`.
    pub fn type_name(&self) -> String {
        match self.type_info() {
            Some(t) => t.name.to_string(),
            None => format!("unknown({})", self.type_id),
        }
    }

    /// Number of elements (the parser checked that the product fits).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// (rows, cols) of the 2D view: cols = dims[0], rows = product of the rest.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.dims.iter().skip(1).product(), cols)
    }
}

/// Bytes of tensor data copied between two releases of the file pages they came from
/// (the mapped pages resident at once while a model loads: they count in its peak RSS).
const RELEASE_CHUNK_BYTES: usize = 1 << 20;

/// A parsed GGUF file with memory-mapped tensor data.
pub struct GgufFile {
    backing: FileBytes,
    path: Option<PathBuf>,
    version: u32,
    /// Metadata in file order.
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`, memory-mapping it. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let backing = FileBytes::map(path)?;
        let mut g = Self::from_backing(backing).map_err(|e| e.in_file(path))?;
        g.path = Some(path.to_path_buf());
        Ok(g)
    }

    /// Parses a GGUF held in memory (tests, fuzzing, embedded models).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        Self::from_backing(FileBytes::Owned(bytes.into()))
    }

    fn from_backing(backing: FileBytes) -> Result<Self> {
        let p = parse::parse(backing.bytes())?;
        // The metadata and tensor infos are owned copies now: the header's file pages (the
        // vocabulary, megabytes) need not stay resident while the weights load.
        backing.release(0..p.data_offset.min(backing.bytes().len()));
        Ok(Self {
            backing,
            path: None,
            version: p.version,
            metadata: p.metadata,
            key_index: p.key_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    /// The path this was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> usize {
        self.backing.bytes().len()
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Drops the metadata entries for which `remove` returns true, freeing their memory: the
    /// tokenizer's vocabulary arrays (hundreds of thousands of strings) once the tokenizer is
    /// built, so they are not held while the weights load.
    pub fn remove_metadata(&mut self, mut remove: impl FnMut(&str) -> bool) {
        self.metadata.retain(|(key, _)| !remove(key));
        self.metadata.shrink_to_fit();
        self.key_index = self
            .metadata
            .iter()
            .enumerate()
            .map(|(index, (key, _))| (key.clone(), index))
            .collect();
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get(ARCHITECTURE_KEY).and_then(GgufValue::as_str)
    }

    /// The text of `key` in this file (`GgufKey::ContextLength` becomes
    /// `llama.context_length`).
    pub fn key_text<'k>(
        &self,
        key: &'k (impl MetaKey + ?Sized),
    ) -> Result<std::borrow::Cow<'k, str>> {
        key.key_text(self.architecture())
    }

    /// Raw lookup by key text.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key`, `None` if absent.
    pub fn value(&self, key: impl MetaKey) -> Result<Option<&GgufValue>> {
        let text = key.key_text(self.architecture())?;
        Ok(self.get(&text))
    }

    fn typed<'a, T>(
        &'a self,
        key: impl MetaKey,
        expected: &'static str,
        conv: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        let text = key.key_text(self.architecture())?;
        match self.get(&text) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| IoError::KeyType {
                key: text.into_owned(),
                expected,
                found: describe(v),
            }),
        }
    }

    fn required<T>(&self, key: impl MetaKey, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| match key.key_text(self.architecture()) {
            Ok(text) => IoError::MissingKey(text.into_owned()),
            Err(e) => e,
        })
    }

    /// An integer key of any width whose value fits u32 (`None` if absent).
    pub fn get_u32_opt(&self, key: impl MetaKey) -> Result<Option<u32>> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    /// An integer key of any width whose value is >= 0 (`None` if absent).
    pub fn get_u64_opt(&self, key: impl MetaKey) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    /// An integer key of any width whose value fits i64 (`None` if absent).
    pub fn get_i64_opt(&self, key: impl MetaKey) -> Result<Option<i64>> {
        self.typed(key, "an integer in i64 range", GgufValue::as_i64)
    }

    /// A float (f32 or f64) or integer key, as f32 (`None` if absent).
    pub fn get_f32_opt(&self, key: impl MetaKey) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn get_bool_opt(&self, key: impl MetaKey) -> Result<Option<bool>> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    pub fn get_str_opt(&self, key: impl MetaKey) -> Result<Option<&str>> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    pub fn get_array_opt(&self, key: impl MetaKey) -> Result<Option<&GgufArray>> {
        self.typed(key, "an array", GgufValue::as_array)
    }

    /// Like [`Self::get_u32_opt`] but a missing key is an error.
    pub fn get_u32(&self, key: impl MetaKey) -> Result<u32> {
        self.required(&key, self.get_u32_opt(&key))
    }

    pub fn get_u64(&self, key: impl MetaKey) -> Result<u64> {
        self.required(&key, self.get_u64_opt(&key))
    }

    pub fn get_i64(&self, key: impl MetaKey) -> Result<i64> {
        self.required(&key, self.get_i64_opt(&key))
    }

    pub fn get_f32(&self, key: impl MetaKey) -> Result<f32> {
        self.required(&key, self.get_f32_opt(&key))
    }

    pub fn get_bool(&self, key: impl MetaKey) -> Result<bool> {
        self.required(&key, self.get_bool_opt(&key))
    }

    pub fn get_str(&self, key: impl MetaKey) -> Result<&str> {
        self.required(&key, self.get_str_opt(&key))
    }

    pub fn get_array(&self, key: impl MetaKey) -> Result<&GgufArray> {
        self.required(&key, self.get_array_opt(&key))
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))
    }

    /// Absolute byte range of a tensor's data in the file.
    pub fn tensor_range(&self, name: &str) -> Result<Range<usize>> {
        let info = self.info_or_err(name)?;
        let size = info.byte_size.ok_or_else(|| unsupported(info))?;
        // The parser checked data_offset + offset + size <= file length.
        let start = self.data_offset + info.offset;
        Ok(start..start + size)
    }

    /// The raw bytes of a tensor, in its ggml block layout.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let range = self.tensor_range(name)?;
        self.backing
            .bytes()
            .get(range)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))
    }

    /// A copy of a tensor as a (rows, cols) ggml matrix: cols = dims[0],
    /// rows = product of dims[1..]. Errors for types marlin does not support.
    pub fn ggml_tensor(&self, name: &str) -> Result<GgmlTensor> {
        let info = self.info_or_err(name)?;
        let ty = info.ggml_type().ok_or_else(|| unsupported(info))?;
        let (rows, cols) = info.rows_cols();
        let range = self.tensor_range(name)?;
        let source = self.tensor_bytes(name)?;
        // Copied a slice at a time, each slice's file pages released once copied, so a large
        // tensor (Gemma 3's 170 MB embedding) is not resident twice while it is copied.
        let mut bytes = Vec::with_capacity(source.len());
        for (index, slice) in source.chunks(RELEASE_CHUNK_BYTES).enumerate() {
            bytes.extend_from_slice(slice);
            let start = range.start + index * RELEASE_CHUNK_BYTES;
            self.release_around(start..start + slice.len());
        }
        Ok(GgmlTensor::new(ty, rows, cols, bytes)?)
    }

    /// A float tensor (F32, F16 or BF16; norms, biases) converted to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info_or_err(name)?;
        let range = self.tensor_range(name)?;
        let bytes = self.tensor_bytes(name)?;
        let encoding = match info.ggml_type() {
            Some(GgmlType::F32) => FloatEncoding::F32,
            Some(GgmlType::F16) => FloatEncoding::F16,
            Some(GgmlType::BF16) => FloatEncoding::BF16,
            _ => {
                return Err(IoError::TensorShape {
                    name: name.to_string(),
                    reason: format!(
                        "type {} is not a float type (f32/f16/bf16); dequantize it instead",
                        info.type_name()
                    ),
                })
            }
        };
        let values = floats_to_f32(bytes, encoding);
        self.release_around(range);
        Ok(values)
    }

    /// Releases the file pages of `range` and of the neighbourhood a page fault maps with
    /// them (the kernel's fault-around, 64 KiB): a small tensor read (a norm) would otherwise
    /// leave 16 pages resident.
    fn release_around(&self, range: Range<usize>) {
        const FAULT_AROUND_BYTES: usize = 64 << 10;
        let end = range
            .end
            .saturating_add(FAULT_AROUND_BYTES)
            .min(self.backing.bytes().len());
        let start = range.start.saturating_sub(FAULT_AROUND_BYTES).min(end);
        self.backing.release(start..end);
    }
}

fn unsupported(info: &TensorInfo) -> IoError {
    IoError::UnsupportedTensorType {
        name: info.name.clone(),
        type_id: info.type_id,
        type_name: info.type_name(),
    }
}

/// `i32 (-1)` for error messages; arrays give their element type and length.
fn describe(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => a.type_description(),
        GgufValue::String(s) if s.len() > 40 => "string".to_string(),
        v => format!("{} ({v})", v.value_type().name()),
    }
}
