//! Weights and hyper-parameters from a GGUF file.

use super::{SourceKind, TensorData, WeightSource};
use crate::config::{HParam, HValue};
use crate::error::{ModelError, Result};
use marlin_io::gguf::{GgufFile, GgufValue};
use std::path::Path;

pub struct GgufSource {
    file: GgufFile,
    arch: String,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::new(file)
    }

    pub fn new(file: GgufFile) -> Result<Self> {
        let arch = file
            .architecture()
            .ok_or_else(|| ModelError::Config("GGUF has no general.architecture".into()))?
            .to_string();
        Ok(Self { file, arch })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Gguf
    }

    fn architecture(&self) -> &str {
        &self.arch
    }

    fn hparam(&self, key: HParam) -> Result<Option<HValue>> {
        let Some(k) = key.gguf_key() else {
            return Ok(None);
        };
        Ok(match self.file.value(k)? {
            None => None,
            Some(GgufValue::String(s)) => Some(HValue::Str(s.clone())),
            Some(GgufValue::Bool(b)) => Some(HValue::Bool(*b)),
            Some(v) => match v.as_f64() {
                Some(x) => Some(HValue::Num(x)),
                None => {
                    return Err(ModelError::Config(format!(
                        "GGUF key for {key:?}: unexpected value {}",
                        v.type_description()
                    )))
                }
            },
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.file.tensor_info(name).is_some()
    }

    fn tensor(&self, name: &str) -> Result<TensorData> {
        Ok(TensorData::Ggml(self.file.ggml_tensor(name)?))
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.file.tensor_f32(name)?)
    }
}
