//! A [`QuantScheme`] as a small JSON object, stored per quantized tensor in
//! the safetensors `__metadata__` of a marlin checkpoint:
//! `{"element":"int","bits":4,"signed":false,"granularity":"group",
//! "group_size":128,"scale_dtype":"f16","zero_point":"int",
//! "global_scale":false}`.

use crate::error::{IoError, Result};
use marlin_quant::{ElementType, Granularity, Layout, QuantScheme, ScaleDType, ZeroPoint};
use serde_json::{json, Map, Value};

fn bad(reason: impl Into<String>) -> IoError {
    IoError::ModelDir(format!("quantization scheme: {}", reason.into()))
}

/// The scheme as JSON (layout is always `KMajorDense` and not written).
pub fn scheme_to_json(s: &QuantScheme) -> Value {
    let mut m = Map::new();
    match s.element {
        ElementType::Int { bits, signed } => {
            m.insert("element".into(), json!("int"));
            m.insert("bits".into(), json!(bits));
            m.insert("signed".into(), json!(signed));
        }
        ElementType::Fp4E2M1 => {
            m.insert("element".into(), json!("fp4_e2m1"));
        }
        ElementType::Fp8E4M3 => {
            m.insert("element".into(), json!("fp8_e4m3"));
        }
        ElementType::Fp8E5M2 => {
            m.insert("element".into(), json!("fp8_e5m2"));
        }
        ElementType::Nf4 => {
            m.insert("element".into(), json!("nf4"));
        }
    }
    match s.granularity {
        Granularity::PerTensor => {
            m.insert("granularity".into(), json!("tensor"));
        }
        Granularity::PerChannel => {
            m.insert("granularity".into(), json!("channel"));
        }
        Granularity::PerGroup { group_size } => {
            m.insert("granularity".into(), json!("group"));
            m.insert("group_size".into(), json!(group_size));
        }
        Granularity::Block2d { rows, cols } => {
            m.insert("granularity".into(), json!("block2d"));
            m.insert("block_rows".into(), json!(rows));
            m.insert("block_cols".into(), json!(cols));
        }
    }
    let scale = match s.scale_dtype {
        ScaleDType::F32 => "f32",
        ScaleDType::F16 => "f16",
        ScaleDType::BF16 => "bf16",
        ScaleDType::E8M0 => "e8m0",
        ScaleDType::E4M3 => "e4m3",
    };
    m.insert("scale_dtype".into(), json!(scale));
    let zero = match s.zero_point {
        ZeroPoint::None => "none",
        ZeroPoint::Int => "int",
        ZeroPoint::Float => "float",
    };
    m.insert("zero_point".into(), json!(zero));
    m.insert("global_scale".into(), json!(s.global_scale));
    Value::Object(m)
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("missing string field `{key}`")))
}

fn usize_field(m: &Map<String, Value>, key: &str) -> Result<usize> {
    m.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| bad(format!("missing integer field `{key}`")))
}

/// Parses [`scheme_to_json`]'s form and checks it with
/// [`QuantScheme::validate_scheme`].
pub fn scheme_from_json(v: &Value) -> Result<QuantScheme> {
    let m = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let element = match str_field(m, "element")? {
        "int" => {
            let bits =
                u8::try_from(usize_field(m, "bits")?).map_err(|_| bad("`bits` out of range"))?;
            let signed = m
                .get("signed")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad("missing bool field `signed`"))?;
            ElementType::Int { bits, signed }
        }
        "fp4_e2m1" => ElementType::Fp4E2M1,
        "fp8_e4m3" => ElementType::Fp8E4M3,
        "fp8_e5m2" => ElementType::Fp8E5M2,
        "nf4" => ElementType::Nf4,
        other => return Err(bad(format!("unknown element `{other}`"))),
    };
    let granularity = match str_field(m, "granularity")? {
        "tensor" => Granularity::PerTensor,
        "channel" => Granularity::PerChannel,
        "group" => Granularity::PerGroup {
            group_size: usize_field(m, "group_size")?,
        },
        "block2d" => Granularity::Block2d {
            rows: usize_field(m, "block_rows")?,
            cols: usize_field(m, "block_cols")?,
        },
        other => return Err(bad(format!("unknown granularity `{other}`"))),
    };
    let scale_dtype = match str_field(m, "scale_dtype")? {
        "f32" => ScaleDType::F32,
        "f16" => ScaleDType::F16,
        "bf16" => ScaleDType::BF16,
        "e8m0" => ScaleDType::E8M0,
        "e4m3" => ScaleDType::E4M3,
        other => return Err(bad(format!("unknown scale dtype `{other}`"))),
    };
    let zero_point = match str_field(m, "zero_point")? {
        "none" => ZeroPoint::None,
        "int" => ZeroPoint::Int,
        "float" => ZeroPoint::Float,
        other => return Err(bad(format!("unknown zero point `{other}`"))),
    };
    let global_scale = m
        .get("global_scale")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad("missing bool field `global_scale`"))?;
    let scheme = QuantScheme {
        element,
        granularity,
        scale_dtype,
        zero_point,
        global_scale,
        layout: Layout::KMajorDense,
    };
    scheme.validate_scheme()?;
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_constructor() {
        let schemes = [
            QuantScheme::int4_asym(128),
            QuantScheme::int4_sym(32),
            QuantScheme::int3_asym(128),
            QuantScheme::int2_asym(64),
            QuantScheme::int8_per_channel(),
            QuantScheme::mxfp4(),
            QuantScheme::nvfp4(),
            QuantScheme::fp8_e4m3_per_channel(),
            QuantScheme::fp8_e4m3_block128(),
            QuantScheme::fp8_e5m2_per_channel(),
            QuantScheme::nf4(64),
        ];
        for s in schemes {
            assert_eq!(scheme_from_json(&scheme_to_json(&s)).unwrap(), s);
        }
    }

    #[test]
    fn rejects_bad_schemes() {
        for v in [
            json!(1),
            json!({"element": "int"}),
            json!({"element":"int","bits":40,"signed":true,"granularity":"channel","scale_dtype":"f32","zero_point":"none","global_scale":false}),
            json!({"element":"int","bits":4,"signed":true,"granularity":"group","group_size":0,"scale_dtype":"f32","zero_point":"none","global_scale":false}),
            json!({"element":"fp4_e2m1","granularity":"group","group_size":32,"scale_dtype":"e8m0","zero_point":"int","global_scale":false}),
            json!({"element":"int4","granularity":"channel","scale_dtype":"f32","zero_point":"none","global_scale":false}),
        ] {
            assert!(scheme_from_json(&v).is_err(), "{v}");
        }
    }
}
