//! `marlin inspect`: what a model file holds. Works on any well-formed GGUF,
//! even one that is not a complete model (it only reads metadata and tensor
//! infos; it never needs to understand every tensor type).

use anyhow::Context;
use marlin_io::gguf::{GgufArray, GgufFile, GgufValue};
use std::collections::BTreeMap;
use std::path::Path;

pub fn inspect(path: &Path, list_tensors: bool) -> anyhow::Result<()> {
    if path.is_dir() {
        return inspect_hf_dir(path);
    }
    let f = GgufFile::open(path)?;
    println!("file:          {}", path.display());
    println!("format:        GGUF v{}", f.version());
    println!("size:          {}", human_bytes(f.file_size() as u64));
    println!("alignment:     {}", f.alignment());
    let arch = f.architecture().unwrap_or("(none)");
    println!("architecture:  {arch}");

    println!("\nmetadata ({} keys):", f.metadata().len());
    for (key, value) in f.metadata() {
        println!("  {key:<48} {}", describe_value(value));
    }

    // Tensor types: count, elements, bytes.
    let mut by_type: BTreeMap<String, (usize, u128, u128)> = BTreeMap::new();
    let (mut total_elems, mut total_bytes) = (0u128, 0u128);
    for t in f.tensors() {
        let e = by_type.entry(t.type_name()).or_default();
        let n = t.n_elements() as u128;
        let b = t.byte_size.unwrap_or(0) as u128;
        e.0 += 1;
        e.1 += n;
        e.2 += b;
        total_elems += n;
        total_bytes += b;
    }
    println!("\ntensors: {}", f.tensors().len());
    println!(
        "  {:<10} {:>7} {:>16} {:>12} {:>8}",
        "type", "count", "elements", "bytes", "bpw"
    );
    for (ty, (count, elems, bytes)) in &by_type {
        println!(
            "  {ty:<10} {count:>7} {elems:>16} {:>12} {:>8.3}",
            human_bytes(*bytes as u64),
            bits_per_weight(*bytes, *elems)
        );
    }
    println!(
        "  {:<10} {:>7} {total_elems:>16} {:>12} {:>8.3}",
        "total",
        f.tensors().len(),
        human_bytes(total_bytes as u64),
        bits_per_weight(total_bytes, total_elems)
    );
    if list_tensors {
        println!();
        for t in f.tensors() {
            println!("  {:<48} {:<8} {:?}", t.name, t.type_name(), t.dims);
        }
    }

    if let Some(est) = kv_cache_estimate(&f, arch) {
        println!("\nmemory estimate (weights + f32 KV cache):");
        for ctx in [est.ctx.min(4096), est.ctx] {
            let kv = est.bytes_per_token * ctx as u64;
            println!(
                "  ctx {ctx:>7}: weights {} + KV {} = {}",
                human_bytes(total_bytes as u64),
                human_bytes(kv),
                human_bytes((total_bytes as u64).saturating_add(kv))
            );
        }
    }
    Ok(())
}

struct KvEstimate {
    ctx: usize,
    bytes_per_token: u64,
}

/// f32 K and V per layer per token, from the architecture's hyper-parameters
/// (absent for files that are not complete models).
fn kv_cache_estimate(f: &GgufFile, arch: &str) -> Option<KvEstimate> {
    let u = |suffix: &str| {
        f.get(&format!("{arch}.{suffix}"))
            .and_then(GgufValue::as_u64)
    };
    let layers = u("block_count")?;
    let d = u("embedding_length")?;
    let heads = u("attention.head_count")?.max(1);
    let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
    let head_dim_k = u("attention.key_length").unwrap_or(d / heads);
    let head_dim_v = u("attention.value_length").unwrap_or(head_dim_k);
    let ctx_u64 = u("context_length").unwrap_or(2048);
    let ctx = usize::try_from(ctx_u64).ok()?;
    // Every factor comes from the file: no estimate rather than an
    // overflow, for the per-token size and for the whole context.
    let per_token = layers
        .checked_mul(kv_heads)?
        .checked_mul(head_dim_k.checked_add(head_dim_v)?)?
        .checked_mul(4)?;
    per_token.checked_mul(ctx_u64)?;
    Some(KvEstimate {
        ctx,
        bytes_per_token: per_token,
    })
}

fn describe_value(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) => {
            let one_line: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
            if s.chars().count() > 80 {
                format!("\"{one_line}...\" ({} chars)", s.chars().count())
            } else {
                format!("\"{one_line}\"")
            }
        }
        GgufValue::Array(a) => describe_array(a),
        other => match (other.as_i64(), other.as_f64(), other.as_bool()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(x), _) => format!("{x}"),
            (_, _, Some(b)) => b.to_string(),
            _ => format!("{other:?}"),
        },
    }
}

fn describe_array(a: &GgufArray) -> String {
    let (ty, len, head) = match a {
        GgufArray::String(v) => (
            "string",
            v.len(),
            v.iter()
                .take(3)
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        GgufArray::F32(v) => ("f32", v.len(), join_head(v)),
        GgufArray::I32(v) => ("i32", v.len(), join_head(v)),
        GgufArray::U32(v) => ("u32", v.len(), join_head(v)),
        GgufArray::Bool(v) => ("bool", v.len(), join_head(v)),
        other => ("array", array_len(other), String::new()),
    };
    if len > 3 {
        format!("[{ty}; {len}] [{head}, ...]")
    } else {
        format!("[{ty}; {len}] [{head}]")
    }
}

fn join_head<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .take(3)
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn array_len(a: &GgufArray) -> usize {
    match a {
        GgufArray::U8(v) => v.len(),
        GgufArray::I8(v) => v.len(),
        GgufArray::U16(v) => v.len(),
        GgufArray::I16(v) => v.len(),
        GgufArray::U32(v) => v.len(),
        GgufArray::I32(v) => v.len(),
        GgufArray::U64(v) => v.len(),
        GgufArray::I64(v) => v.len(),
        GgufArray::F32(v) => v.len(),
        GgufArray::F64(v) => v.len(),
        GgufArray::Bool(v) => v.len(),
        GgufArray::String(v) => v.len(),
        GgufArray::Array(v) => v.len(),
    }
}

fn bits_per_weight(bytes: u128, elems: u128) -> f64 {
    if elems == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elems as f64
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", UNITS[u])
    }
}

/// A Hugging Face directory: its config.json, pretty-printed.
fn inspect_hf_dir(dir: &Path) -> anyhow::Result<()> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "{}: not a GGUF file or a Hugging Face model directory",
            dir.display()
        )
    })?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", cfg_path.display()))?;
    println!("directory:     {}", dir.display());
    println!("config.json:\n{}", serde_json::to_string_pretty(&cfg)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use marlin_io::gguf::GgufBuilder;

    fn file_with(kvs: &[(&str, u64)]) -> GgufFile {
        let b = kvs
            .iter()
            .fold(GgufBuilder::new(), |b, &(k, v)| b.kv(k, GgufValue::U64(v)));
        GgufFile::from_bytes(b.to_bytes()).unwrap()
    }

    #[test]
    fn kv_estimate_of_overflowing_hyper_parameters_is_absent() {
        let base = [
            ("llama.block_count", 2),
            ("llama.embedding_length", 64),
            ("llama.attention.head_count", 4),
        ];
        let est = kv_cache_estimate(&file_with(&base), "llama").unwrap();
        // 2 layers x 4 heads x (16 + 16) x 4 bytes.
        assert_eq!(est.bytes_per_token, 2 * 4 * 32 * 4);
        let mut huge = base.to_vec();
        huge[0].1 = u64::MAX / 2;
        assert!(kv_cache_estimate(&file_with(&huge), "llama").is_none());
        let mut long_ctx = base.to_vec();
        long_ctx.push(("llama.context_length", u64::MAX));
        assert!(kv_cache_estimate(&file_with(&long_ctx), "llama").is_none());
    }
}
