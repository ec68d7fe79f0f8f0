//! safetensors and Hugging Face directory tests: a fixture written by the
//! reference Python writer, crafted malformed headers, and model
//! directories (single file, sharded with index, malformed index).

use std::path::{Path, PathBuf};

use marlin_io::hf::HfModelDir;
use marlin_io::safetensors::{Dtype, SafetensorsFile};
use marlin_io::IoError;
use serde_json::json;

/// A safetensors file from (name, dtype, shape, data) entries, laid out in
/// order; `header` may be overridden to craft malformed files.
fn st_bytes(entries: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    with_header(&serde_json::Value::Object(header).to_string(), &data)
}

fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn malformed(bytes: Vec<u8>, needle: &str) {
    match SafetensorsFile::from_bytes(bytes) {
        Ok(f) => panic!("malformed file accepted: {f:?}"),
        Err(e @ IoError::MalformedSafetensors(_)) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
        }
        Err(e) => panic!("wrong error kind: {e}"),
    }
}

#[test]
fn reads_reference_writer_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_numpy.safetensors");
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.metadata().get("format").map(String::as_str), Some("np"));
    assert_eq!(f.tensors().len(), 4);
    let w = f.tensor("w.f32").unwrap();
    assert_eq!((w.dtype, w.shape), (Dtype::F32, &[3usize, 5][..]));
    let want: Vec<f32> = (0..15).map(|i| i as f32 - 7.5).collect();
    assert_eq!(w.to_f32().unwrap(), want);
    assert_eq!(
        f.tensor("b.f16").unwrap().to_f32().unwrap(),
        [0.5, 1.5, 2.5, 3.5]
    );
    let g = f.tensor("g_idx.i32").unwrap();
    assert_eq!((g.dtype, g.shape), (Dtype::I32, &[2usize, 3][..]));
    let ints: Vec<i32> = g
        .data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ints, [-3, -2, -1, 0, 1, 2]);
    assert_eq!(f.tensor("packed.u8").unwrap().data, [0, 1, 2, 3, 4, 5, 6]);
    // Raw integer tensors do not silently become floats.
    assert!(g.to_f32().is_err());
    assert!(matches!(f.tensor("nope"), Err(IoError::MissingTensor(_))));
}

#[test]
fn bf16_and_empty_tensors() {
    let bf16: Vec<u8> = [1.0f32, -2.0, 0.15625]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let f = SafetensorsFile::from_bytes(st_bytes(&[
        ("empty", "F32", vec![0, 4], vec![]),
        ("x", "BF16", vec![3], bf16),
        ("scalar", "F32", vec![], f32_bytes(&[4.0])),
    ]))
    .unwrap();
    assert_eq!(
        f.tensor("x").unwrap().to_f32().unwrap(),
        [1.0, -2.0, 0.15625]
    );
    assert_eq!(f.tensor("scalar").unwrap().to_f32().unwrap(), [4.0]);
    assert!(f.tensor("empty").unwrap().data.is_empty());
}

#[test]
fn malformed_headers_rejected() {
    malformed(vec![1, 2, 3], "no header length");
    // Header length past the end of the file, and absurdly large.
    malformed(with_header("{}", b"")[..9].to_vec(), "header length");
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    malformed(b, "header length");
    malformed(with_header("{not json", b""), "header JSON");
    malformed(with_header("[1, 2]", b""), "header JSON");
    let entry = |e: serde_json::Value| with_header(&json!({ "t": e }).to_string(), &[0; 16]);
    malformed(entry(json!({"dtype": "F32", "shape": [2]})), "tensor `t`");
    malformed(
        entry(json!({"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]})),
        "unsupported dtype Q9",
    );
    // Offsets past the data section, reversed, or not matching the shape.
    malformed(
        entry(json!({"dtype": "F32", "shape": [8], "data_offsets": [0, 32]})),
        "outside the data section",
    );
    malformed(
        entry(json!({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})),
        "outside the data section",
    );
    malformed(
        entry(json!({"dtype": "F32", "shape": [3], "data_offsets": [0, 16]})),
        "needs 12 bytes",
    );
    // dtype size x shape product overflows.
    malformed(
        entry(json!({"dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, 16]})),
        "overflows",
    );
    malformed(
        entry(json!({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})),
        "tensor `t`",
    );
    malformed(
        entry(json!({"dtype": "U8", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 1]})),
        "rank",
    );
    malformed(
        with_header(&json!({"__metadata__": {"k": 1}}).to_string(), b""),
        "__metadata__",
    );
    // Two tensors sharing bytes.
    let h = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    });
    malformed(with_header(&h.to_string(), &[0; 16]), "overlap");
}

#[test]
fn every_truncated_prefix_is_an_error() {
    let full = st_bytes(&[
        ("a", "F32", vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
        ("b", "F16", vec![3], vec![0; 6]),
    ]);
    SafetensorsFile::from_bytes(full.clone()).unwrap();
    for len in 0..full.len() {
        assert!(
            SafetensorsFile::from_bytes(full[..len].to_vec()).is_err(),
            "prefix {len} accepted"
        );
    }
}

// ---- Hugging Face directories ------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("marlin_hf_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> String {
    json!({"model_type": "qwen3", "hidden_size": 8, "num_hidden_layers": 2}).to_string()
}

#[test]
fn single_file_directory() {
    let d = TempDir::new("single");
    d.write("config.json", config());
    d.write("tokenizer.json", "{}");
    d.write("chat_template.jinja", "{{ messages }}");
    d.write(
        "model.safetensors",
        st_bytes(&[("embed", "F32", vec![2], f32_bytes(&[1.0, 2.0]))]),
    );
    let m = HfModelDir::open(&d.0).unwrap();
    assert_eq!(m.model_type(), Some("qwen3"));
    assert_eq!(m.config()["hidden_size"], 8);
    assert_eq!(m.tensor_names(), ["embed"]);
    assert_eq!(m.tensor("embed").unwrap().to_f32().unwrap(), [1.0, 2.0]);
    assert!(m.tokenizer_json().is_some());
    assert!(m.chat_template_jinja().is_some());
    assert!(m.tokenizer_config_json().is_none());
}

#[test]
fn sharded_directory_with_index() {
    let d = TempDir::new("sharded");
    d.write("config.json", config());
    d.write("tokenizer_config.json", "{}");
    d.write(
        "model-00001-of-00002.safetensors",
        st_bytes(&[
            ("layers.0.w", "F32", vec![1], f32_bytes(&[0.5])),
            ("embed", "F32", vec![2], f32_bytes(&[1.0, 2.0])),
        ]),
    );
    d.write(
        "model-00002-of-00002.safetensors",
        st_bytes(&[("layers.1.w", "F32", vec![1], f32_bytes(&[-0.5]))]),
    );
    let index = json!({"metadata": {"total_size": 16}, "weight_map": {
        "embed": "model-00001-of-00002.safetensors",
        "layers.0.w": "model-00001-of-00002.safetensors",
        "layers.1.w": "model-00002-of-00002.safetensors",
    }});
    d.write("model.safetensors.index.json", index.to_string());
    let m = HfModelDir::open(&d.0).unwrap();
    assert_eq!(m.shards().len(), 2);
    assert_eq!(m.tensor_names(), ["embed", "layers.0.w", "layers.1.w"]);
    assert_eq!(m.tensor("layers.1.w").unwrap().to_f32().unwrap(), [-0.5]);
    assert!(m.tokenizer_config_json().is_some());

    // The index names a tensor its shard does not hold.
    let bad = json!({"weight_map": {"ghost": "model-00002-of-00002.safetensors"}});
    d.write("model.safetensors.index.json", bad.to_string());
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(msg.contains("ghost"), "{msg}");

    // The index points outside the directory.
    for evil in ["../x.safetensors", "/etc/passwd", "..", "a/b.safetensors"] {
        let bad = json!({"weight_map": {"embed": evil}});
        d.write("model.safetensors.index.json", bad.to_string());
        let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
        assert!(msg.contains("not a plain file name"), "{evil}: {msg}");
    }
}

#[test]
fn unindexed_shards_must_not_repeat_tensors() {
    let d = TempDir::new("dup");
    d.write("config.json", config());
    let shard = st_bytes(&[("w", "F32", vec![1], f32_bytes(&[1.0]))]);
    d.write("a.safetensors", &shard);
    d.write("b.safetensors", &shard);
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(msg.contains("more than one"), "{msg}");
}

#[test]
fn broken_directories_give_one_line_errors() {
    let d = TempDir::new("broken");
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    d.write("config.json", "{oops");
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(msg.contains("config.json") && msg.contains("JSON"), "{msg}");
    d.write("config.json", config());
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(msg.contains("no *.safetensors"), "{msg}");
    d.write("model.safetensors", b"\x05\x00\x00");
    let msg = HfModelDir::open(&d.0).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("header"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(HfModelDir::open(d.0.join("missing")).is_err());
}
