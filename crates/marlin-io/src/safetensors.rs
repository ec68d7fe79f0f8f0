//! safetensors files, hardened: the header length is checked against the
//! file, the JSON header is parsed with serde_json, and every tensor's
//! dtype size x shape product must equal its byte range, which must lie
//! inside the data section without overlapping another tensor.
//!
//! Layout: header length u64 (little-endian), that many bytes of JSON
//! `{"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]},
//! "__metadata__": {"k": "v"}}`, then the data section; offsets are relative
//! to its start.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{IoError, Result};
use crate::mapped::{floats_to_f32, FileBytes, FloatEncoding};

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;

/// Element types of safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    F8E4M3,
    F8E5M2,
    F8E8M0,
}

impl Dtype {
    /// The dtype for its header name (`"BF16"`); `None` for names marlin
    /// does not read (sub-byte types such as `F4`).
    pub fn from_name(name: &str) -> Option<Self> {
        use Dtype::*;
        Some(match name {
            "BOOL" => Bool,
            "U8" => U8,
            "I8" => I8,
            "U16" => U16,
            "I16" => I16,
            "U32" => U32,
            "I32" => I32,
            "U64" => U64,
            "I64" => I64,
            "F16" => F16,
            "BF16" => BF16,
            "F32" => F32,
            "F64" => F64,
            "F8_E4M3" => F8E4M3,
            "F8_E5M2" => F8E5M2,
            "F8_E8M0" => F8E8M0,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            U16 => "U16",
            I16 => "I16",
            U32 => "U32",
            I32 => "I32",
            U64 => "U64",
            I64 => "I64",
            F16 => "F16",
            BF16 => "BF16",
            F32 => "F32",
            F64 => "F64",
            F8E4M3 => "F8_E4M3",
            F8E5M2 => "F8_E5M2",
            F8E8M0 => "F8_E8M0",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        use Dtype::*;
        match self {
            Bool | U8 | I8 | F8E4M3 | F8E5M2 | F8E8M0 => 1,
            U16 | I16 | F16 | BF16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsInfo {
    pub dtype: Dtype,
    /// Row-major shape, outermost first (`[out_features, in_features]`).
    pub shape: Vec<usize>,
    /// Byte range relative to the data section.
    pub data_offsets: Range<usize>,
}

/// A tensor's bytes with its dtype and shape, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    /// Little-endian elements, row-major.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements converted to f32 (F32, F16 and BF16 only).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let encoding = match self.dtype {
            Dtype::F32 => FloatEncoding::F32,
            Dtype::F16 => FloatEncoding::F16,
            Dtype::BF16 => FloatEncoding::BF16,
            other => {
                return Err(IoError::TensorShape {
                    name: self.name.to_string(),
                    reason: format!("dtype {} does not convert to f32", other.name()),
                })
            }
        };
        Ok(floats_to_f32(self.data, encoding))
    }
}

/// A parsed safetensors file with memory-mapped data.
pub struct SafetensorsFile {
    bytes: FileBytes,
    path: Option<PathBuf>,
    /// Tensors in data-offset order.
    tensors: Vec<(String, SafetensorsInfo)>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    data_offset: usize,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn malformed(reason: impl Into<String>) -> IoError {
    IoError::MalformedSafetensors(reason.into())
}

impl SafetensorsFile {
    /// Opens and parses `path`, memory-mapping it. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = FileBytes::map(path)?;
        let mut f = Self::from_file_bytes(bytes).map_err(|e| e.in_file(path))?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Parses a safetensors file held in memory.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        Self::from_file_bytes(FileBytes::Owned(bytes.into()))
    }

    fn from_file_bytes(bytes: FileBytes) -> Result<Self> {
        let b = bytes.bytes();
        let len_bytes: [u8; 8] = b
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| malformed(format!("file of {} bytes has no header length", b.len())))?;
        let header_len = u64::from_le_bytes(len_bytes);
        let available = (b.len() - 8) as u64;
        if header_len > MAX_HEADER_LEN || header_len > available {
            return Err(malformed(format!(
                "header length {header_len} exceeds the {available} bytes after it (limit {MAX_HEADER_LEN})"
            )));
        }
        // Both bounds were checked above.
        let data_offset = 8 + header_len as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&b[8..data_offset])
                .map_err(|e| malformed(format!("header JSON: {e}")))?;
        let data_len = b.len() - data_offset;

        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(header.len());
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value).map_err(|e| {
                    malformed(format!("__metadata__ must map strings to strings: {e}"))
                })?;
                continue;
            }
            let info = check_info(&name, value, data_len)?;
            tensors.push((name, info));
        }
        tensors.sort_by_key(|(_, info)| (info.data_offsets.start, info.data_offsets.end));
        for w in tensors.windows(2) {
            let (a, ia) = &w[0];
            let (b, ib) = &w[1];
            if ib.data_offsets.start < ia.data_offsets.end && !ia.data_offsets.is_empty() {
                return Err(malformed(format!("tensors `{a}` and `{b}` overlap")));
            }
        }
        // JSON object keys are unique, so the names are too.
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        Ok(Self {
            bytes,
            path: None,
            tensors,
            index,
            metadata,
            data_offset,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `__metadata__` of the header.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names and infos, in data-offset order.
    pub fn tensors(&self) -> &[(String, SafetensorsInfo)] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&SafetensorsInfo> {
        self.index.get(name).map(|&i| &self.tensors[i].1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A view of one tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))?;
        let (name, info) = &self.tensors[i];
        let r = &info.data_offsets;
        // Offsets were checked against the data length at parse time.
        let data = self
            .bytes
            .bytes()
            .get(self.data_offset + r.start..self.data_offset + r.end)
            .ok_or_else(|| IoError::MissingTensor(name.clone()))?;
        Ok(TensorView {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }
}

/// Validates one header entry against the data section's length.
fn check_info(name: &str, value: serde_json::Value, data_len: usize) -> Result<SafetensorsInfo> {
    let err = |reason: String| malformed(format!("tensor `{name}`: {reason}"));
    let raw: RawInfo = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
    let dtype = Dtype::from_name(&raw.dtype)
        .ok_or_else(|| err(format!("unsupported dtype {}", raw.dtype)))?;
    if raw.shape.len() > MAX_RANK {
        return Err(err(format!("rank {} exceeds {MAX_RANK}", raw.shape.len())));
    }
    let shape = raw
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| err("dimension does not fit usize".into()))?;
    // The product of the non-zero dims bounds every partial product (the
    // element count, a matrix view's rows x cols), so none can overflow later
    // even when a zero dim makes the tensor itself empty.
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d.max(1)))
        .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
    let n_bytes = dtype.size() * shape.iter().product::<usize>();
    let [begin, end] = raw.data_offsets;
    if begin > end || end > data_len as u64 {
        return Err(err(format!(
            "data_offsets [{begin}, {end}] outside the data section of {data_len} bytes"
        )));
    }
    // end <= data_len, so both fit usize.
    let (begin, end) = (begin as usize, end as usize);
    if end - begin != n_bytes {
        return Err(err(format!(
            "{} x {shape:?} needs {n_bytes} bytes, data_offsets span {}",
            dtype.name(),
            end - begin
        )));
    }
    Ok(SafetensorsInfo {
        dtype,
        shape,
        data_offsets: begin..end,
    })
}
