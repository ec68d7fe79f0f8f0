//! Tokenizers from Hugging Face directories: `tokenizer.json` for the pipeline,
//! `tokenizer_config.json` / `chat_template.jinja` / `generation_config.json` beside it for
//! BOS/EOS and the chat template.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer as HfTokenizer;

use super::error::{backend, catch_backend_panic, Result, TokenizerError};
use super::Tokenizer;

/// Largest tokenizer file read (tokenizer.json of a 256k vocabulary is about 35 MB).
const MAX_TOKENIZER_FILE_BYTES: u64 = 256 << 20;

/// Reads a file of at most `MAX_TOKENIZER_FILE_BYTES`; `Ok(None)` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let io_err = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if metadata.len() > MAX_TOKENIZER_FILE_BYTES {
        return Err(TokenizerError::FileTooLarge {
            path: path.to_path_buf(),
            size: metadata.len(),
            limit: MAX_TOKENIZER_FILE_BYTES,
        });
    }
    std::fs::read(path).map(Some).map_err(io_err)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TokenizerError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn load_pipeline(path: &Path) -> Result<HfTokenizer> {
    let bytes = read_optional(path)?.ok_or_else(|| TokenizerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let json_err = |message: String| TokenizerError::Json {
        path: path.to_path_buf(),
        message,
    };
    // The `tokenizers` crate panics instead of erroring on a `decoder` that is not valid JSON;
    // checking the syntax first makes that a plain error (other panics: catch_backend_panic).
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| json_err(e.to_string()))?;
    let parsed = catch_backend_panic("loading tokenizer.json", || HfTokenizer::from_bytes(&bytes));
    parsed.map_err(|e| json_err(backend(e).to_string()))
}

/// A special-token entry of tokenizer_config.json: `"<s>"`, `{"content": "<s>", ...}` or null.
fn token_text<'v>(config: &'v Value, key: &str, path: &Path) -> Result<Option<&'v str>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Object(map)) => match map.get("content") {
            Some(Value::String(text)) => Ok(Some(text)),
            _ => Err(wrong_type(
                path,
                key,
                "an object without a string \"content\"",
            )),
        },
        Some(_) => Err(wrong_type(path, key, "neither a string nor an object")),
    }
}

fn wrong_type(path: &Path, key: &str, what: &str) -> TokenizerError {
    TokenizerError::Json {
        path: path.to_path_buf(),
        message: format!("field {key:?} is {what}"),
    }
}

/// `chat_template` of tokenizer_config.json: a string, or a list of `{name, template}` of
/// which the one named "default" (else the first) is used.
fn config_chat_template(config: &Value, path: &Path) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(source)) => Ok(Some(source.clone())),
        Some(Value::Array(entries)) => {
            let named =
                |entry: &&Value| entry.get("name").and_then(Value::as_str) == Some("default");
            let entry = entries.iter().find(named).or_else(|| entries.first());
            match entry.map(|e| e.get("template")) {
                None => Ok(None),
                Some(Some(Value::String(source))) => Ok(Some(source.clone())),
                Some(_) => Err(wrong_type(
                    path,
                    "chat_template",
                    "a list whose entry has no string \"template\"",
                )),
            }
        }
        Some(_) => Err(wrong_type(
            path,
            "chat_template",
            "neither a string nor a list",
        )),
    }
}

/// Token ids in generation_config.json: an integer or a list of integers.
fn config_ids(config: &Value, key: &str, path: &Path) -> Result<Vec<u32>> {
    let as_id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match config.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| as_id(v).ok_or_else(|| wrong_type(path, key, "a list with a non-id entry")))
            .collect(),
        Some(v) => as_id(v)
            .map(|id| vec![id])
            .ok_or_else(|| wrong_type(path, key, "not a token id")),
    }
}

pub(crate) fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let inner = load_pipeline(path)?;
    Tokenizer::from_pipeline(inner, None, Vec::new(), None, None)
}

pub(crate) fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
    let tokenizer_json: PathBuf = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(TokenizerError::MissingTokenizerJson(dir.to_path_buf()));
    }
    let inner = load_pipeline(&tokenizer_json)?;
    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?.unwrap_or(Value::Null);
    let generation_path = dir.join("generation_config.json");
    let generation = read_json(&generation_path)?.unwrap_or(Value::Null);

    let id_of = |text: Option<&str>| text.and_then(|t| inner.token_to_id(t));
    let bos_id = id_of(token_text(&config, "bos_token", &config_path)?).or(config_ids(
        &generation,
        "bos_token_id",
        &generation_path,
    )?
    .first()
    .copied());
    let mut eos_ids: Vec<u32> = id_of(token_text(&config, "eos_token", &config_path)?)
        .into_iter()
        .collect();
    eos_ids.extend(config_ids(&generation, "eos_token_id", &generation_path)?);
    let add_bos = config.get("add_bos_token").and_then(Value::as_bool);

    // chat_template.jinja takes precedence over the copy in tokenizer_config.json, as in
    // transformers.
    let jinja_path = dir.join("chat_template.jinja");
    let chat_template = match read_optional(&jinja_path)? {
        Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| TokenizerError::Json {
            path: jinja_path.clone(),
            message: "not valid UTF-8".to_string(),
        })?),
        None => config_chat_template(&config, &config_path)?,
    };
    Tokenizer::from_pipeline(inner, bos_id, eos_ids, add_bos, chat_template)
}
