//! A small GGUF v3 writer, for test fixtures and fuzz seeds: other crates'
//! tests build tiny models with it instead of committing binary files.

use super::parse::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT};
use super::value::{GgufArray, GgufValue};

/// Builds a GGUF file in memory. Tensors are laid out in the order added,
/// each padded to the alignment (`general.alignment` if set to a valid
/// value, else 32). Nothing is validated: malformed inputs give malformed
/// files, which is what hardening tests want.
#[derive(Clone, Debug, Default)]
pub struct GgufBuilder {
    kvs: Vec<(String, GgufValue)>,
    /// (name, dims in ggml order, ggml type id, data)
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(mut self, key: impl Into<String>, value: GgufValue) -> Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Adds a tensor; `dims` in ggml order (`dims[0]` contiguous).
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        type_id: u32,
        data: Vec<u8>,
    ) -> Self {
        self.tensors
            .push((name.into(), dims.to_vec(), type_id, data));
        self
    }

    fn alignment(&self) -> u64 {
        self.kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two() && *a <= MAX_ALIGNMENT)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment() as usize;
        let pad = |out: &mut Vec<u8>| out.resize(out.len().div_ceil(align) * align, 0);
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        pad(&mut out);
        for (i, (.., data)) in self.tensors.iter().enumerate() {
            out.extend_from_slice(data);
            // No padding after the last tensor: the file ends with its data.
            if i + 1 < self.tensors.len() {
                pad(&mut out);
            }
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T: Copy>(out: &mut Vec<u8>, v: &[T], f: impl Fn(T) -> GgufValue) {
        for &x in v {
            put_value(out, &f(x));
        }
    }
    match a {
        GgufArray::U8(v) => each(out, v, GgufValue::U8),
        GgufArray::I8(v) => each(out, v, GgufValue::I8),
        GgufArray::U16(v) => each(out, v, GgufValue::U16),
        GgufArray::I16(v) => each(out, v, GgufValue::I16),
        GgufArray::U32(v) => each(out, v, GgufValue::U32),
        GgufArray::I32(v) => each(out, v, GgufValue::I32),
        GgufArray::U64(v) => each(out, v, GgufValue::U64),
        GgufArray::I64(v) => each(out, v, GgufValue::I64),
        GgufArray::F32(v) => each(out, v, GgufValue::F32),
        GgufArray::F64(v) => each(out, v, GgufValue::F64),
        GgufArray::Bool(v) => each(out, v, GgufValue::Bool),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}
