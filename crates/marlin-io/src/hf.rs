//! Hugging Face model directories: `config.json`, safetensors weights
//! (one file, or shards listed by `model.safetensors.index.json`), and the
//! tokenizer / chat-template files next to them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{IoError, Result};
use crate::safetensors::{SafetensorsFile, TensorView};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// A Hugging Face model directory with its safetensors memory-mapped.
#[derive(Debug)]
pub struct HfModelDir {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> index into `shards`.
    tensor_shard: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

fn dir_err(reason: impl Into<String>) -> IoError {
    IoError::ModelDir(reason.into())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|source| IoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| IoError::from(e).in_file(path))
}

impl HfModelDir {
    /// Opens `dir`: reads config.json and maps the weights, from the index
    /// if there is one, else `model.safetensors`, else every `*.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::open_inner(dir).map_err(|e| match e {
            // I/O and per-file errors already name their file.
            e @ (IoError::Io { .. } | IoError::File { .. }) => e,
            e => e.in_file(dir),
        })
    }

    fn open_inner(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(dir_err("not a directory"));
        }
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(dir_err(format!("no {CONFIG_FILE}")));
        }
        let config: serde_json::Value = read_json(&config_path)?;
        if !config.is_object() {
            return Err(dir_err(format!("{CONFIG_FILE} is not a JSON object")));
        }

        let mut shards = Vec::new();
        let mut tensor_shard = HashMap::new();
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            let index: IndexFile = read_json(&index_path)?;
            // Shard file name -> index into `shards`.
            let mut shard_ids: HashMap<&str, usize> = HashMap::new();
            for (tensor, file) in &index.weight_map {
                check_shard_name(file)?;
                let id = match shard_ids.get(file.as_str()) {
                    Some(&id) => id,
                    None => {
                        shards.push(SafetensorsFile::open(dir.join(file))?);
                        shard_ids.insert(file, shards.len() - 1);
                        shards.len() - 1
                    }
                };
                if !shards[id].contains(tensor) {
                    return Err(dir_err(format!(
                        "{INDEX_FILE} puts `{tensor}` in {file}, which does not hold it"
                    )));
                }
                tensor_shard.insert(tensor.clone(), id);
            }
        } else {
            let single = dir.join(SINGLE_WEIGHTS_FILE);
            let files = if single.is_file() {
                vec![single]
            } else {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|source| IoError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                files.sort();
                files
            };
            if files.is_empty() {
                return Err(dir_err("no *.safetensors weights"));
            }
            for path in files {
                let shard = SafetensorsFile::open(&path)?;
                let id = shards.len();
                for (name, _) in shard.tensors() {
                    if tensor_shard.insert(name.clone(), id).is_some() {
                        return Err(dir_err(format!(
                            "tensor `{name}` appears in more than one safetensors file"
                        )));
                    }
                }
                shards.push(shard);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensor_shard,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed config.json.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// `config["model_type"]`, e.g. `"qwen3"`.
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(|v| v.as_str())
    }

    /// The mapped weight files.
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensor_shard.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensor_shard.contains_key(name)
    }

    /// A view of one tensor, from whichever shard holds it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &id = self
            .tensor_shard
            .get(name)
            .ok_or_else(|| IoError::MissingTensor(name.to_string()))?;
        self.shards[id].tensor(name)
    }

    /// Path of a file in the directory if it exists.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(name);
        p.is_file().then_some(p)
    }

    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        self.file(TOKENIZER_FILE)
    }

    pub fn tokenizer_config_json(&self) -> Option<PathBuf> {
        self.file(TOKENIZER_CONFIG_FILE)
    }

    pub fn chat_template_jinja(&self) -> Option<PathBuf> {
        self.file(CHAT_TEMPLATE_FILE)
    }

    pub fn generation_config_json(&self) -> Option<PathBuf> {
        self.file(GENERATION_CONFIG_FILE)
    }
}

/// Shard names come from the index file: plain file names only, so an index
/// cannot make us open `../../etc/passwd` or an absolute path.
fn check_shard_name(file: &str) -> Result<()> {
    let plain = !file.is_empty()
        && file != "."
        && file != ".."
        && !file.contains(['/', '\\'])
        && Path::new(file).file_name().is_some_and(|n| n == file);
    if plain {
        Ok(())
    } else {
        Err(dir_err(format!(
            "{INDEX_FILE} names shard `{file}`, which is not a plain file name"
        )))
    }
}
