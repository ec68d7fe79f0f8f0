//! Which GPTQ lever matters for a format on a real model: the Hessian-
//! weighted output error `tr(D·H·Dᵀ) / tr(W·H·Wᵀ)` (D = W − Ŵ) of RTN and
//! GPTQ variants on a few linears, with the Hessians of a `--calib-cache`
//! file written by `marlin quantize`.
//!
//! cargo run --release -p marlin-quantize --example gptq_levers -- \
//!     MODEL.gguf CACHE.bin FORMAT GROUP LAYER...

use marlin_models::source::GgufSource;
use marlin_quant::{quantize_rtn, RtnOptions};
use marlin_quantize::grid::{ScaleSearch, SearchWeight};
use marlin_quantize::pipeline::calib::InputSite;
use marlin_quantize::pipeline::calib_cache;
use marlin_quantize::pipeline::convert::ModelShape;
use marlin_quantize::pipeline::presets::Format;
use marlin_quantize::{gptq_quantize, GptqOptions};

fn weighted(w: &[f32], h: &[f64], k: usize) -> f64 {
    w.chunks_exact(k)
        .map(|d| {
            let mut s = 0.0;
            for i in 0..k {
                let hi = &h[i * k..(i + 1) * k];
                let t: f64 = d.iter().zip(hi).map(|(&a, &b)| f64::from(a) * b).sum();
                s += f64::from(d[i]) * t;
            }
            s
        })
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let src = GgufSource::open(std::path::Path::new(&a[1]))?;
    let shape = ModelShape::read(&src)?;
    let stats = calib_cache::load(std::path::Path::new(&a[2]))?.ok_or("no cache")?;
    let format = Format::parse(&a[3])?;
    let scheme = format.scheme(a[4].parse()?).ok_or("dense")?;
    let layers: Vec<usize> = a[5..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let variants: Vec<(&str, Option<GptqOptions>)> = vec![
        ("rtn min-max", None),
        ("gptq", Some(GptqOptions::default())),
        (
            "gptq mse",
            Some(GptqOptions {
                scale_search: ScaleSearch::mse(),
                search_weight: SearchWeight::HessianDiag,
                ..GptqOptions::default()
            }),
        ),
        (
            "gptq damp 0.1",
            Some(GptqOptions {
                percdamp: 0.1,
                ..GptqOptions::default()
            }),
        ),
        ("gptq act", Some(GptqOptions::act_order())),
        (
            "gptq act mse",
            Some(GptqOptions {
                scale_search: ScaleSearch::mse(),
                search_weight: SearchWeight::HessianDiag,
                ..GptqOptions::act_order()
            }),
        ),
    ];
    for il in layers {
        for tail in ["attn_q", "attn_output", "ffn_up", "ffn_down"] {
            let name = format!("blk.{il}.{tail}.weight");
            let site = InputSite::of_linear(&name).ok_or("site")?;
            let h = &stats.get(&(il, site)).ok_or("no stats for layer")?.hessian;
            let w = shape.dense_hf(&src, &name)?;
            let base = weighted(&w.data, h.as_slice(), w.cols);
            let mut line = format!("{name:<26}");
            for (label, opts) in &variants {
                let t = match opts {
                    None => quantize_rtn(&w.data, w.rows, w.cols, scheme, &RtnOptions::min_max())?,
                    Some(o) => gptq_quantize(&w.data, w.rows, w.cols, h, &scheme, o)?,
                };
                let d: Vec<f32> = w
                    .data
                    .iter()
                    .zip(t.dequantize()?)
                    .map(|(a, b)| a - b)
                    .collect();
                line += &format!(
                    " | {label} {:.4}",
                    weighted(&d, h.as_slice(), w.cols) / base
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}
