//! The Hadamard rotation of a rotated quantized linear (MR-GPTQ).
//!
//! MR-GPTQ quantizes `W·Rᵀ` instead of `W`, where `R` is block-diagonal with
//! normalised Sylvester Hadamard blocks of a power-of-two size b along the
//! input features K (zero-padded up to `padded_k`, a multiple of b). The
//! stored tensor is then (N, padded_k), and inference must compute
//! `y = (x·Rᵀ)·Ŵᵀ`: the activations are rotated the same way before the
//! product. The descriptor is stored as JSON under the `__metadata__` key
//! `marlin.rotation.<base>` of the shard that holds `<base>.qcodes`; a
//! linear without that key is not rotated at inference (either it never
//! was, or its rotation was absorbed offline into the producer of its
//! input, see docs/QUANTIZATION.md).

use super::QuantTensorNames;
use crate::error::{IoError, Result};
use crate::hf::HfModelDir;
use serde::{Deserialize, Serialize};

/// `__metadata__` key prefix of a rotated linear's rotation.
pub const ROTATION_METADATA_PREFIX: &str = "marlin.rotation.";
/// The only rotation kind written today.
pub const BLOCK_HADAMARD: &str = "block_hadamard";

/// A block-diagonal Hadamard rotation of K input features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActivationRotation {
    /// Hadamard block size b (a power of two).
    pub block_size: usize,
    /// Input features of the original linear.
    pub k: usize,
    /// K zero-padded to a multiple of b: the stored tensor's columns.
    pub padded_k: usize,
}

impl ActivationRotation {
    /// A rotation of K features in blocks of `block_size`, padding K up to a
    /// multiple of it. Errors: K = 0, a block that is not a power of two.
    pub fn new(k: usize, block_size: usize) -> Result<Self> {
        let bad = |reason: String| IoError::ModelDir(format!("Hadamard rotation: {reason}"));
        if k == 0 {
            return Err(bad("K = 0".into()));
        }
        if !block_size.is_power_of_two() {
            return Err(bad(format!(
                "block size {block_size} is not a power of two"
            )));
        }
        let padded_k = k
            .div_ceil(block_size)
            .checked_mul(block_size)
            .ok_or_else(|| bad(format!("K = {k} padded to {block_size} overflows")))?;
        Ok(Self {
            block_size,
            k,
            padded_k,
        })
    }

    /// Checks the invariants of [`Self::new`] (the fields are public and
    /// come from files).
    pub fn validate(&self) -> Result<()> {
        let expected = Self::new(self.k, self.block_size)?;
        if expected != *self {
            return Err(IoError::ModelDir(format!(
                "Hadamard rotation of K = {} in blocks of {} has padded K {}, expected {}",
                self.k, self.block_size, self.padded_k, expected.padded_k
            )));
        }
        Ok(())
    }

    /// The JSON stored under `marlin.rotation.<base>`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": BLOCK_HADAMARD,
            "block_size": self.block_size,
            "k": self.k,
            "padded_k": self.padded_k,
        })
    }

    /// Parses and validates [`Self::to_json`]'s output.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let kind = v.get("type").and_then(|t| t.as_str());
        if kind != Some(BLOCK_HADAMARD) {
            return Err(IoError::ModelDir(format!(
                "rotation type {kind:?} (supported: {BLOCK_HADAMARD})"
            )));
        }
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| IoError::ModelDir(format!("rotation has no `{k}`")))
        };
        let r = Self {
            block_size: field("block_size")?,
            k: field("k")?,
            padded_k: field("padded_k")?,
        };
        r.validate()?;
        Ok(r)
    }
}

/// The rotation of quantized linear `base`, `None` when it is not rotated
/// at inference. Errors when the descriptor is malformed or does not match
/// the stored tensor's columns (`marlin.scheme.<base>`'s `cols`).
pub fn read_rotation(dir: &HfModelDir, base: &str) -> Result<Option<ActivationRotation>> {
    let names = QuantTensorNames::new(base);
    let Some(shard) = dir.shards().iter().find(|s| s.contains(&names.codes)) else {
        return Ok(None);
    };
    let key = format!("{ROTATION_METADATA_PREFIX}{base}");
    let Some(text) = shard.metadata().get(&key) else {
        return Ok(None);
    };
    let bad = |reason: String| IoError::TensorShape {
        name: names.codes.clone(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("rotation metadata: {e}")))?;
    let r = ActivationRotation::from_json(&v).map_err(|e| bad(e.to_string()))?;
    let scheme_key = format!("{}{base}", super::SCHEME_METADATA_PREFIX);
    let cols = shard
        .metadata()
        .get(&scheme_key)
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|m| m.get("cols").and_then(|c| c.as_u64()));
    if cols != Some(r.padded_k as u64) {
        return Err(bad(format!(
            "rotation pads K to {} but the stored tensor has {cols:?} columns",
            r.padded_k
        )));
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trips_and_is_checked() {
        let r = ActivationRotation::new(576, 64).unwrap();
        assert_eq!(r.padded_k, 576);
        assert_eq!(ActivationRotation::from_json(&r.to_json()).unwrap(), r);
        let p = ActivationRotation::new(100, 32).unwrap();
        assert_eq!(p.padded_k, 128);
        assert!(ActivationRotation::new(64, 48).is_err());
        assert!(ActivationRotation::new(0, 16).is_err());
        let mut v = p.to_json();
        v["padded_k"] = 100.into();
        assert!(ActivationRotation::from_json(&v).is_err());
        v["padded_k"] = 128.into();
        v["type"] = "givens".into();
        assert!(ActivationRotation::from_json(&v).is_err());
    }
}
