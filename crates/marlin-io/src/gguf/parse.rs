//! The GGUF byte parser. Every count, size and offset read from the file is
//! checked against the bytes that remain before anything is allocated, and
//! all arithmetic on them is checked.
//!
//! Layout (little-endian): magic `GGUF`, version u32 (2 or 3), tensor count
//! u64, KV count u64, the KVs, the tensor infos, padding to the alignment,
//! then the tensor data section; tensor offsets are relative to its start.

use std::collections::HashMap;

use super::types::ggml_type_info;
use super::value::{GgufArray, GgufValue, GgufValueType};
use super::TensorInfo;
use crate::error::{IoError, Result};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `general.alignment` must be a power of two in 1..=MAX_ALIGNMENT; 64 KiB
/// covers every page size in use, larger values only serve to make the
/// padding arithmetic overflow or skip the data.
pub const MAX_ALIGNMENT: u64 = 1 << 16;
/// GGUF keys are at most 65535 bytes (GGUF spec).
pub const MAX_KEY_LEN: u64 = u16::MAX as u64;
/// Longest string value accepted (chat templates are a few KiB).
pub const MAX_STRING_LEN: u64 = 1 << 28;
/// Longest array accepted (vocabularies and merge lists are < 1M entries).
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// Deepest nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: usize = 3;
/// Most KV pairs and most tensors accepted.
pub const MAX_KV_COUNT: u64 = 1 << 20;
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Longest tensor name accepted (ggml itself stops at 63 bytes).
pub const MAX_TENSOR_NAME_LEN: u64 = 1 << 10;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: u32 = 4;
/// Fewest bytes a KV pair occupies: key length u64, a 1-byte key, the value
/// type u32 and a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes a tensor info occupies: name length u64, a 1-byte name,
/// n_dims u32, one u64 dim, type u32, offset u64.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// Everything a GGUF says about itself, parsed from its bytes.
#[derive(Debug)]
pub(crate) struct ParsedGguf {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: usize,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn error(&self, reason: impl Into<String>) -> IoError {
        error_at(self.pos, reason)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let n_usize = usize::try_from(n).map_err(|_| self.error(format!("{what}: {n} bytes")))?;
        if n_usize > self.remaining() {
            return Err(self.error(format!(
                "{what}: needs {n} bytes, {} left (truncated file?)",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 length-prefixed UTF-8 string of at most `max_len` bytes.
    fn string(&mut self, max_len: u64, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        if len > max_len {
            return Err(error_at(
                start,
                format!("{what}: length {len} exceeds limit {max_len}"),
            ));
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(error_at(start, format!("{what}: invalid UTF-8 ({e})"))),
        }
    }

    /// A count of items each at least `min_item_bytes` long, checked against
    /// `max` and against the bytes that remain, so it is safe to allocate.
    fn count(&mut self, max: u64, min_item_bytes: u64, what: &str) -> Result<usize> {
        let start = self.pos;
        let n = self.u64(what)?;
        if n > max {
            return Err(error_at(start, format!("{what} {n} exceeds limit {max}")));
        }
        let needed = n
            .checked_mul(min_item_bytes)
            .ok_or_else(|| error_at(start, format!("{what} {n} overflows")))?;
        if needed > self.remaining() as u64 {
            return Err(error_at(
                start,
                format!(
                    "{what} {n} needs at least {needed} bytes, {} left (truncated file?)",
                    self.remaining()
                ),
            ));
        }
        usize::try_from(n).map_err(|_| error_at(start, format!("{what} {n} too large")))
    }
}

fn error_at(offset: usize, reason: impl Into<String>) -> IoError {
    IoError::MalformedGguf {
        offset: offset as u64,
        reason: reason.into(),
    }
}

/// Parses header, metadata and tensor infos of a GGUF held in `bytes`, and
/// checks that every tensor's data lies inside `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedGguf> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic: [u8; 4] = cur.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(error_at(0, format!("not a GGUF file (magic {magic:02x?})")));
    }
    let version = cur.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(error_at(
                4,
                "GGUF version 1 is not supported (only 2 and 3)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(error_at(4, "big-endian GGUF is not supported"))
        }
        v => return Err(error_at(4, format!("unsupported GGUF version {v}"))),
    }
    // Read both counts first; each is bounded by the bytes left after the
    // header, so neither can drive an allocation larger than the file.
    let tensor_count_pos = cur.pos;
    let tensor_count = cur.u64("tensor count")?;
    let kv_count = cur.count(MAX_KV_COUNT, MIN_KV_BYTES, "KV count")?;
    if tensor_count > MAX_TENSOR_COUNT {
        return Err(error_at(
            tensor_count_pos,
            format!("tensor count {tensor_count} exceeds limit {MAX_TENSOR_COUNT}"),
        ));
    }

    let mut metadata = Vec::with_capacity(kv_count);
    let mut key_index = HashMap::with_capacity(kv_count);
    for _ in 0..kv_count {
        let key_pos = cur.pos;
        let key = cur.string(MAX_KEY_LEN, "metadata key")?;
        if key.is_empty() {
            return Err(error_at(key_pos, "empty metadata key"));
        }
        let value = read_value(&mut cur, &key)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(error_at(key_pos, format!("duplicate metadata key `{key}`")));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(error_at(
                        cur.pos,
                        format!(
                            "general.alignment {v} is not a power of two in 1..={MAX_ALIGNMENT}"
                        ),
                    ))
                }
            }
        }
    };

    // tensor_count was checked against the limit; now against the bytes.
    let tensor_count_usize = usize::try_from(tensor_count)
        .ok()
        .filter(|&n| (n as u64).saturating_mul(MIN_TENSOR_INFO_BYTES) <= cur.remaining() as u64)
        .ok_or_else(|| {
            error_at(
                tensor_count_pos,
                format!(
                    "tensor count {tensor_count} needs more bytes than the {} left (truncated file?)",
                    cur.remaining()
                ),
            )
        })?;
    let mut tensors = Vec::with_capacity(tensor_count_usize);
    let mut tensor_index = HashMap::with_capacity(tensor_count_usize);
    for _ in 0..tensor_count_usize {
        let info_pos = cur.pos;
        let info = read_tensor_info(&mut cur, alignment)?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(error_at(
                info_pos,
                format!("duplicate tensor `{}`", info.name),
            ));
        }
        tensors.push(info);
    }

    let data_offset = align_up(cur.pos as u64, alignment)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| cur.error("data section offset overflows"))?;
    check_tensor_data(&tensors, data_offset, bytes.len())?;

    Ok(ParsedGguf {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

fn read_value(cur: &mut Cursor<'_>, key: &str) -> Result<GgufValue> {
    let type_pos = cur.pos;
    let type_id = cur.u32("value type")?;
    let ty = GgufValueType::from_id(type_id).ok_or_else(|| {
        error_at(
            type_pos,
            format!("key `{key}`: unknown value type {type_id}"),
        )
    })?;
    read_typed_value(cur, ty, key)
}

fn read_typed_value(cur: &mut Cursor<'_>, ty: GgufValueType, key: &str) -> Result<GgufValue> {
    use GgufValueType as T;
    Ok(match ty {
        T::U8 => GgufValue::U8(u8::from_le_bytes(cur.array(key)?)),
        T::I8 => GgufValue::I8(i8::from_le_bytes(cur.array(key)?)),
        T::U16 => GgufValue::U16(u16::from_le_bytes(cur.array(key)?)),
        T::I16 => GgufValue::I16(i16::from_le_bytes(cur.array(key)?)),
        T::U32 => GgufValue::U32(u32::from_le_bytes(cur.array(key)?)),
        T::I32 => GgufValue::I32(i32::from_le_bytes(cur.array(key)?)),
        T::U64 => GgufValue::U64(u64::from_le_bytes(cur.array(key)?)),
        T::I64 => GgufValue::I64(i64::from_le_bytes(cur.array(key)?)),
        T::F32 => GgufValue::F32(f32::from_le_bytes(cur.array(key)?)),
        T::F64 => GgufValue::F64(f64::from_le_bytes(cur.array(key)?)),
        T::Bool => GgufValue::Bool(read_bool(cur, key)?),
        T::String => GgufValue::String(cur.string(MAX_STRING_LEN, key)?),
        T::Array => GgufValue::Array(read_array(cur, key, 1)?),
    })
}

fn read_bool(cur: &mut Cursor<'_>, key: &str) -> Result<bool> {
    let pos = cur.pos;
    match cur.array::<1>(key)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(error_at(
            pos,
            format!("key `{key}`: bool byte {b} is neither 0 nor 1"),
        )),
    }
}

/// Reads `n` fixed-size little-endian elements (the count was already
/// checked against the remaining bytes).
fn read_fixed<T, const N: usize>(
    cur: &mut Cursor<'_>,
    n: usize,
    key: &str,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let bytes = cur.take((n as u64).saturating_mul(N as u64), key)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            conv(a)
        })
        .collect())
}

fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<GgufArray> {
    let type_pos = cur.pos;
    let type_id = cur.u32("array element type")?;
    let ty = GgufValueType::from_id(type_id).ok_or_else(|| {
        error_at(
            type_pos,
            format!("key `{key}`: unknown array element type {type_id}"),
        )
    })?;
    if ty == GgufValueType::Array && depth >= MAX_ARRAY_DEPTH {
        return Err(error_at(
            type_pos,
            format!("key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
        ));
    }
    let n = cur.count(MAX_ARRAY_LEN, ty.min_wire_size() as u64, "array length")?;
    use GgufValueType as T;
    Ok(match ty {
        T::U8 => GgufArray::U8(read_fixed(cur, n, key, u8::from_le_bytes)?),
        T::I8 => GgufArray::I8(read_fixed(cur, n, key, i8::from_le_bytes)?),
        T::U16 => GgufArray::U16(read_fixed(cur, n, key, u16::from_le_bytes)?),
        T::I16 => GgufArray::I16(read_fixed(cur, n, key, i16::from_le_bytes)?),
        T::U32 => GgufArray::U32(read_fixed(cur, n, key, u32::from_le_bytes)?),
        T::I32 => GgufArray::I32(read_fixed(cur, n, key, i32::from_le_bytes)?),
        T::U64 => GgufArray::U64(read_fixed(cur, n, key, u64::from_le_bytes)?),
        T::I64 => GgufArray::I64(read_fixed(cur, n, key, i64::from_le_bytes)?),
        T::F32 => GgufArray::F32(read_fixed(cur, n, key, f32::from_le_bytes)?),
        T::F64 => GgufArray::F64(read_fixed(cur, n, key, f64::from_le_bytes)?),
        T::Bool => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(cur, key)?);
            }
            GgufArray::Bool(v)
        }
        T::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(cur.string(MAX_STRING_LEN, key)?);
            }
            GgufArray::String(v)
        }
        T::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cur, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}

fn read_tensor_info(cur: &mut Cursor<'_>, alignment: u64) -> Result<TensorInfo> {
    let start = cur.pos;
    let name = cur.string(MAX_TENSOR_NAME_LEN, "tensor name")?;
    let err = |reason: String| error_at(start, format!("tensor `{name}`: {reason}"));
    let n_dims = cur.u32("tensor n_dims")?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(err(format!("{n_dims} dimensions (must be 1..={MAX_DIMS})")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    // The product of the non-zero dims bounds every partial product (the
    // element count, the row count of the 2D view), so none can overflow
    // later even when a zero dim makes the element count itself 0.
    let mut nonzero_product: u64 = 1;
    for _ in 0..n_dims {
        let d = cur.u64("tensor dim")?;
        nonzero_product = nonzero_product
            .checked_mul(d.max(1))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| err(format!("element count overflows at dim {d}")))?;
        dims.push(usize::try_from(d).map_err(|_| err(format!("dim {d} too large")))?);
    }
    let type_id = cur.u32("tensor type")?;
    let offset = cur.u64("tensor offset")?;
    if offset % alignment != 0 {
        return Err(err(format!(
            "data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    // Size = (dims[0] / block) * type_size * dims[1] * dims[2] * dims[3]; an
    // unknown type keeps `None` so the file can still be inspected.
    let byte_size = match ggml_type_info(type_id) {
        None => None,
        Some(t) => {
            if dims[0] % t.block_size != 0 {
                return Err(err(format!(
                    "{} rows need a multiple of {} elements, dims[0] = {}",
                    t.name, t.block_size, dims[0]
                )));
            }
            let row_bytes = (dims[0] / t.block_size)
                .checked_mul(t.type_size)
                .ok_or_else(|| err("row size overflows".into()))?;
            let size = dims[1..]
                .iter()
                .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| err("byte size overflows".into()))?;
            Some(size)
        }
    };
    let offset = usize::try_from(offset).map_err(|_| err(format!("offset {offset} too large")))?;
    Ok(TensorInfo {
        name,
        dims,
        type_id,
        offset,
        byte_size,
    })
}

/// Checks that every tensor's bytes lie inside the file, after the data
/// section start, and that no two tensors overlap.
fn check_tensor_data(tensors: &[TensorInfo], data_offset: usize, file_len: usize) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let data_len = file_len.checked_sub(data_offset).ok_or_else(|| {
        error_at(
            file_len,
            format!(
                "data section starts at {data_offset}, past the end of the file ({file_len} bytes)"
            ),
        )
    })?;
    // (start, end, index) of every tensor with a known size, relative to the
    // data section.
    let mut spans = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let size = t.byte_size.unwrap_or(0);
        let end = t.offset.checked_add(size).filter(|&e| e <= data_len).ok_or_else(|| {
            error_at(
                data_offset,
                format!(
                    "tensor `{}`: data [{}, {}+{size}) runs past the end of the data section ({data_len} bytes)",
                    t.name, t.offset, t.offset
                ),
            )
        })?;
        // Empty tensors occupy no bytes and cannot overlap anything.
        if size > 0 {
            spans.push((t.offset, end, i));
        }
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        let (_, prev_end, a) = w[0];
        let (start, _, b) = w[1];
        if start < prev_end {
            return Err(error_at(
                data_offset,
                format!(
                    "tensors `{}` and `{}` overlap in the data section",
                    tensors[a].name, tensors[b].name
                ),
            ));
        }
    }
    Ok(())
}
