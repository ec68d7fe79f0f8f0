//! The output directory of a run: per-layer shards, the progress manifest
//! that makes runs resumable, and the files written last (tokenizer, index,
//! config.json) that make the directory a checkpoint.

use super::calib::CalibrationSet;
use super::QuantizeJob;
use crate::QuantizeError;
use marlin_io::checkpoint::{
    write_atomic, write_index, write_json_atomic, FormatOverride, QuantizationConfig,
    SafetensorsWriter, QUANT_METHOD,
};
use marlin_io::safetensors::SafetensorsFile;
use marlin_io::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Rewritten after every finished layer; removed when the checkpoint is complete.
pub const MANIFEST_FILE: &str = "quantize-progress.json";
/// Shard of the tensors outside the layer stack.
const BASE_SHARD: &str = "model-base.safetensors";

fn layer_shard(il: usize) -> String {
    format!("model-layer-{il:05}.safetensors")
}

/// What a resumed run must match, and what is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job's options and the input's size and mtime, as JSON text.
    pub fingerprint: String,
    pub layers_done: BTreeSet<usize>,
}

impl Manifest {
    /// Options that change the output, plus the input file's identity.
    pub fn fingerprint(job: &QuantizeJob) -> Result<String, QuantizeError> {
        let meta = std::fs::metadata(&job.input).map_err(|source| QuantizeError::File {
            path: job.input.clone(),
            source,
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Ok(json!({
            "input": job.input.display().to_string(),
            "input_size": meta.len(),
            "input_mtime": mtime,
            "format": job.format.name(),
            "group_size": job.group_size,
            "method": job.method.name(),
            "act_order": job.act_order,
            "calib": job.calib_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "calib_samples": job.calib_samples,
            "calib_seq_len": job.calib_seq_len,
            "seed": job.seed,
            "preset": job.preset.name(),
            "overrides": job.overrides,
            "awq_rows": job.awq_rows,
        })
        .to_string())
    }
}

pub struct OutputDir {
    dir: PathBuf,
    pub manifest: Manifest,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuantizeError + '_ {
    move |source| QuantizeError::File {
        path: path.to_path_buf(),
        source,
    }
}

impl OutputDir {
    /// Creates `dir`, or resumes a run of the same job in it. Refuses a
    /// finished checkpoint, another job's progress, or a non-empty directory
    /// that is neither.
    pub fn prepare(dir: &Path, fingerprint: &str) -> Result<Self, QuantizeError> {
        let bad = |r: String| QuantizeError::BadInput(format!("{}: {r}", dir.display()));
        if dir.join(marlin_io::hf::CONFIG_FILE).exists() {
            return Err(bad(
                "already holds a finished checkpoint (config.json); remove it or pick another -o"
                    .into(),
            ));
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.is_file() {
            let text = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
            let mut manifest: Manifest = serde_json::from_slice(&text)
                .map_err(|e| bad(format!("unreadable {MANIFEST_FILE}: {e}")))?;
            if manifest.fingerprint != fingerprint {
                return Err(bad(format!(
                    "holds an unfinished run with other options ({MANIFEST_FILE}); \
                     rerun with the same options to resume, or remove the directory"
                )));
            }
            // Trust only shards that still parse.
            manifest
                .layers_done
                .retain(|&il| SafetensorsFile::open(dir.join(layer_shard(il))).is_ok());
            return Ok(Self {
                dir: dir.to_path_buf(),
                manifest,
            });
        }
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
            if entries.next().is_some() {
                return Err(bad("exists and is not empty".into()));
            }
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let out = Self {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                fingerprint: fingerprint.to_string(),
                layers_done: BTreeSet::new(),
            },
        };
        out.save_manifest()?;
        Ok(out)
    }

    fn save_manifest(&self) -> Result<(), QuantizeError> {
        let v = serde_json::to_value(&self.manifest)
            .map_err(|e| QuantizeError::Numerical(format!("manifest: {e}")))?;
        Ok(write_json_atomic(&self.dir.join(MANIFEST_FILE), &v)?)
    }

    /// Writes layer `il`'s shard, then records it as done.
    pub fn write_layer(&mut self, il: usize, w: &SafetensorsWriter) -> Result<(), QuantizeError> {
        w.write(&self.dir.join(layer_shard(il)))?;
        self.manifest.layers_done.insert(il);
        self.save_manifest()
    }

    pub fn write_base(&self, w: &SafetensorsWriter) -> Result<(), QuantizeError> {
        Ok(w.write(&self.dir.join(BASE_SHARD))?)
    }

    /// Tokenizer files, the index (read back from the shards on disk, so a
    /// resumed run indexes what is there), then config.json; removes the
    /// progress manifest.
    pub fn finish(&self, tok: &Tokenizer, config: &Value) -> Result<(), QuantizeError> {
        write_tokenizer(&self.dir, tok)?;
        let mut shards: Vec<String> = self
            .manifest
            .layers_done
            .iter()
            .map(|&il| layer_shard(il))
            .collect();
        shards.push(BASE_SHARD.to_string());
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for shard in &shards {
            let f = SafetensorsFile::open(self.dir.join(shard))?;
            for (name, info) in f.tensors() {
                total += (info.data_offsets.end - info.data_offsets.start) as u64;
                weight_map.insert(name.clone(), shard.clone());
            }
        }
        write_index(&self.dir, &weight_map, total)?;
        write_json_atomic(&self.dir.join(marlin_io::hf::CONFIG_FILE), config)?;
        let manifest = self.dir.join(MANIFEST_FILE);
        std::fs::remove_file(&manifest).map_err(io_err(&manifest))
    }
}

/// tokenizer.json (the pipeline serialised by `tokenizers`),
/// tokenizer_config.json (BOS / EOS / add_bos / chat template) and
/// generation_config.json (every end-of-generation id).
fn write_tokenizer(dir: &Path, tok: &Tokenizer) -> Result<(), QuantizeError> {
    let text = tok.to_tokenizer_json()?;
    write_atomic(&dir.join(marlin_io::hf::TOKENIZER_FILE), |f| {
        f.write_all(text.as_bytes())
    })?;
    let name = |id: Option<u32>| id.and_then(|i| tok.token_str(i)).map(str::to_string);
    let mut config = json!({
        "bos_token": name(tok.bos_id()),
        "eos_token": name(tok.eos_ids().first().copied()),
        "add_bos_token": tok.add_bos(),
    });
    if let (Some(t), Some(m)) = (tok.chat_template_source(), config.as_object_mut()) {
        m.insert("chat_template".into(), json!(t));
    }
    write_json_atomic(&dir.join(marlin_io::hf::TOKENIZER_CONFIG_FILE), &config)?;
    let generation = json!({
        "bos_token_id": tok.bos_id(),
        "eos_token_id": tok.eos_ids(),
    });
    Ok(write_json_atomic(
        &dir.join(marlin_io::hf::GENERATION_CONFIG_FILE),
        &generation,
    )?)
}

/// The `quantization_config` block.
pub fn quantization_config(
    job: &QuantizeJob,
    dense_linears: &[String],
    calib: Option<&CalibrationSet>,
    bits_per_weight: f64,
    rotation: Option<Value>,
) -> Value {
    let overrides = job
        .overrides
        .iter()
        .filter_map(|s| s.rsplit_once('='))
        .map(|(p, f)| FormatOverride {
            pattern: p.to_string(),
            format: f.to_string(),
        })
        .collect();
    let qc = QuantizationConfig {
        quant_method: QUANT_METHOD.to_string(),
        format: job.format.name().to_string(),
        method: job.method.name().to_string(),
        group_size: job.format.uses_group_size().then_some(job.group_size),
        act_order: job.act_order,
        rotation,
        preset: job.preset.name().to_string(),
        overrides,
        modules_not_quantized: dense_linears.to_vec(),
        calibration: calib.map(|c| {
            json!({
                "files": job.calib_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "samples": c.windows.len(),
                "seq_len": job.calib_seq_len,
                "seed": job.seed,
            })
        }),
    };
    let mut v = serde_json::to_value(qc).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("bits_per_weight".into(), json!(bits_per_weight));
    }
    v
}
