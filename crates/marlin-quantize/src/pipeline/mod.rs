//! `marlin quantize`: a whole model, layer by layer, into a marlin
//! checkpoint (`marlin_io::checkpoint`).
//!
//! 1. Everything that can be wrong with the input is checked first
//!    (architecture, missing or unknown tensors, NaN weights, group sizes,
//!    calibration text), before any long work.
//! 2. Calibration (GPTQ, AWQ): the base model runs over the calibration
//!    windows with an activation hook that accumulates each linear input's
//!    Hessian, for as many layers at a time as `hessian_budget_bytes`
//!    allows (memory: the base model as loaded + those Hessians).
//! 3. Each layer is dequantized to f32 (one layer at a time), quantized and
//!    written to its own shard `model-layer-NNNNN.safetensors`; the
//!    progress manifest (`quantize-progress.json`) is rewritten after each,
//!    so an interrupted run resumes after the last finished layer.
//! 4. The non-layer tensors, tokenizer files and index are written, and
//!    `config.json` last: a directory without it is not a checkpoint.
//!
//! The Hessians come from the base model's activations (not from the
//! partially quantized model): one calibration pass serves many layers.

pub mod calib;
pub mod calib_cache;
pub mod compare;
pub mod convert;
mod layer;
mod output;
pub mod presets;

use crate::QuantizeError;
use calib::{collect_stats, CalibrationSet, InputSite};
use convert::ModelShape;
use layer::{
    absorbable_o_rotation, awq_group, fold_into_norm, fold_into_rows, quantize_one,
    rotate_output_rows, LayerCtx, LinearIn, LinearOut,
};
use marlin_io::checkpoint::SafetensorsWriter;
use marlin_io::tokenizer::Tokenizer;
use marlin_models::source::{GgufSource, HfDirSource, WeightSource};
use output::{Manifest, OutputDir};
use presets::{choose_format, Format, LayerClass, Override, Preset};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// `--method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest, min-max scales (no calibration).
    Rtn,
    /// GPTQ with Hessians from calibration (optionally act-order).
    Gptq,
    /// MR-GPTQ: GPTQ on block-Hadamard-rotated weights (FP4-grid scale
    /// search for FP4 formats); the loaders rotate the activations.
    MrGptq,
    /// AWQ scale search folded into norms / previous linears, then RTN.
    Awq,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self, QuantizeError> {
        match s {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "awq" => Ok(Method::Awq),
            "mr-gptq" => Ok(Method::MrGptq),
            other => Err(QuantizeError::InvalidOption(format!(
                "unknown method `{other}` (rtn, gptq, mr-gptq, awq)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::MrGptq => "mr-gptq",
            Method::Awq => "awq",
        }
    }

    fn needs_calibration(self) -> bool {
        self != Method::Rtn
    }
}

/// Everything `marlin quantize` was asked.
#[derive(Clone, Debug)]
pub struct QuantizeJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub format: Format,
    pub group_size: usize,
    pub method: Method,
    pub act_order: bool,
    pub calib_files: Vec<PathBuf>,
    pub calib_samples: usize,
    pub calib_seq_len: usize,
    pub seed: u64,
    pub preset: Preset,
    /// `RE=FORMAT` strings, first match wins.
    pub overrides: Vec<String>,
    /// Most bytes of Hessians held at once (decides layers per calibration pass).
    pub hessian_budget_bytes: usize,
    /// Rows kept per input site for AWQ's search.
    pub awq_rows: usize,
    /// Directory of cached calibration statistics (`--calib-cache`): a pass
    /// whose inputs match a cached one is read instead of recomputed.
    pub calib_cache: Option<PathBuf>,
}

impl QuantizeJob {
    /// A job with the CLI's defaults.
    pub fn new(input: PathBuf, output: PathBuf, format: Format, method: Method) -> Self {
        Self {
            input,
            output,
            format,
            group_size: 128,
            method,
            act_order: false,
            calib_files: Vec::new(),
            calib_samples: 32,
            calib_seq_len: 256,
            seed: 0,
            preset: Preset::Balanced,
            overrides: Vec::new(),
            hessian_budget_bytes: 512 << 20,
            // AWQ's search costs ~40 x rows x N x K per layer input: 128
            // rows keep a 135M model's AWQ within minutes on a CPU.
            awq_rows: 128,
            calib_cache: None,
        }
    }
}

/// What a finished run measured.
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    pub layers: usize,
    /// Layers done by this run (the rest were resumed).
    pub layers_done_now: usize,
    pub quantized_linears: usize,
    /// Storage bits per weight over the quantized linears.
    pub quantized_bpw: f64,
    /// Over every matrix, dense ones counted at 16 bits.
    pub total_bpw_dense16: f64,
    pub seconds: f64,
}

/// Per-layer tensors the pipeline knows (GGUF-style tails).
const LAYER_LINEARS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
const LAYER_NORMS_REQUIRED: [&str; 2] = ["attn_norm", "ffn_norm"];
const LAYER_NORMS_OPTIONAL: [&str; 4] = [
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "post_ffw_norm",
];

fn bad(reason: impl Into<String>) -> QuantizeError {
    QuantizeError::BadInput(reason.into())
}

/// Opens a GGUF file or a Hugging Face / marlin checkpoint directory.
fn open_source(path: &std::path::Path) -> Result<Input, QuantizeError> {
    Input::open(path)
}

/// The opened input: a GGUF file or a Hugging Face directory.
enum Input {
    Gguf(GgufSource),
    Hf(HfDirSource),
}

impl Input {
    fn open(path: &std::path::Path) -> Result<Self, QuantizeError> {
        if !path.exists() {
            return Err(bad(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
        Ok(if path.is_dir() {
            Input::Hf(HfDirSource::open(path)?)
        } else {
            Input::Gguf(GgufSource::open(path)?)
        })
    }

    fn src(&self) -> &dyn WeightSource {
        match self {
            Input::Gguf(s) => s,
            Input::Hf(s) => s,
        }
    }

    /// Every tensor name, translated to the GGUF-style names the models use
    /// (`None` entries: tensors with no GGUF-style equivalent).
    fn tensor_names(&self, shape: &ModelShape) -> Vec<(String, Option<String>)> {
        match self {
            Input::Gguf(s) => s
                .file()
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), Some(t.name.clone())))
                .collect(),
            Input::Hf(s) => {
                let known = known_names(shape, true);
                let by_hf: BTreeMap<String, String> = known
                    .into_iter()
                    .filter_map(|g| shape.hf_name(&g).ok().map(|h| (h, g)))
                    .collect();
                s.dir()
                    .tensor_names()
                    .into_iter()
                    .map(|h| (h.to_string(), by_hf.get(h).cloned()))
                    .collect()
            }
        }
    }

    fn tokenizer(&self) -> Result<Tokenizer, QuantizeError> {
        Ok(match self {
            Input::Gguf(s) => Tokenizer::from_gguf(s.file())?,
            Input::Hf(s) => Tokenizer::from_hf_dir(s.dir().dir())?,
        })
    }
}

/// GGUF-style names of every tensor the pipeline converts.
fn known_names(shape: &ModelShape, with_output: bool) -> Vec<String> {
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    if with_output {
        names.push("output.weight".into());
    }
    for il in 0..shape.n_layers {
        for tail in LAYER_LINEARS
            .iter()
            .chain(&LAYER_NORMS_REQUIRED)
            .chain(&LAYER_NORMS_OPTIONAL)
        {
            names.push(format!("blk.{il}.{tail}.weight"));
        }
    }
    names
}

/// The plan: the format and scheme of every matrix.
struct Plan {
    /// GGUF-style name -> (format, scheme (None: dense), (rows, cols)).
    formats: BTreeMap<String, PlanEntry>,
}

#[derive(Clone, Copy, Debug)]
struct PlanEntry {
    format: Format,
    scheme: Option<marlin_quant::QuantScheme>,
    rows: usize,
    cols: usize,
}

impl Plan {
    fn get(&self, name: &str) -> (Format, Option<marlin_quant::QuantScheme>) {
        self.formats
            .get(name)
            .map(|e| (e.format, e.scheme))
            .unwrap_or((Format::Dense, None))
    }
}

/// Checks the input and builds the plan, before any long work.
fn check_and_plan(
    job: &QuantizeJob,
    input: &Input,
    shape: &ModelShape,
    overrides: &[Override],
    progress: &mut dyn FnMut(&str),
) -> Result<Plan, QuantizeError> {
    let src = input.src();
    let known = known_names(shape, true);
    for (name, gguf) in input.tensor_names(shape) {
        if !gguf.as_ref().is_some_and(|g| known.contains(g)) {
            return Err(bad(format!(
                "tensor `{name}` is not one the quantizer converts"
            )));
        }
    }
    for name in ["token_embd.weight", "output_norm.weight"] {
        if !src.contains(name) {
            return Err(bad(format!("missing tensor `{name}`")));
        }
    }
    for il in 0..shape.n_layers {
        for tail in LAYER_LINEARS.iter().chain(&LAYER_NORMS_REQUIRED) {
            let name = format!("blk.{il}.{tail}.weight");
            if !src.contains(&name) {
                return Err(bad(format!("missing tensor `{name}`")));
            }
        }
    }
    let mut formats = BTreeMap::new();
    let t0 = Instant::now();
    for name in known.iter().filter(|n| src.contains(n)) {
        let hf = shape.hf_name(name)?;
        // Reads (and dequantizes) each tensor once: NaN weights fail here.
        let (rows, cols) = match LayerClass::of(name) {
            Some(_) => {
                let d = shape.dense_hf(src, name)?;
                (d.rows, d.cols)
            }
            None => {
                shape.effective_norm(src, name)?;
                continue;
            }
        };
        let Some(class) = LayerClass::of(name) else {
            continue;
        };
        let format = choose_format(&hf, class, job.format, job.preset, overrides);
        let scheme = format.scheme(job.group_size);
        if let Some(s) = &scheme {
            s.validate(rows, cols)
                .map_err(|e| bad(format!("{hf} ({rows} x {cols}) as {}: {e}", format.name())))?;
        }
        formats.insert(
            name.clone(),
            PlanEntry {
                format,
                scheme,
                rows,
                cols,
            },
        );
    }
    progress(&format!(
        "checked {} tensors in {:.1}s",
        formats.len(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(Plan { formats })
}

/// Reads, tokenizes and samples the calibration files.
fn calibration(job: &QuantizeJob, tok: &Tokenizer) -> Result<CalibrationSet, QuantizeError> {
    if job.calib_files.is_empty() {
        return Err(QuantizeError::EmptyCalibration(format!(
            "--method {} needs calibration text (--calib FILE)",
            job.method.name()
        )));
    }
    let mut tokens = Vec::new();
    for path in &job.calib_files {
        let text = std::fs::read_to_string(path).map_err(|source| QuantizeError::File {
            path: path.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            return Err(QuantizeError::EmptyCalibration(format!(
                "{} is empty",
                path.display()
            )));
        }
        tokens.extend(tok.encode(&text, false)?);
    }
    let bos = tok.bos_id().filter(|_| tok.add_bos());
    CalibrationSet::sample(&tokens, job.calib_samples, job.calib_seq_len, job.seed, bos)
}

/// Runs the whole job. `progress` receives one line per event (the CLI
/// prints them on stderr).
pub fn quantize_model(
    job: &QuantizeJob,
    progress: &mut dyn FnMut(&str),
) -> Result<QuantizeReport, QuantizeError> {
    let t_start = Instant::now();
    if job.group_size == 0 {
        return Err(QuantizeError::InvalidOption("--group-size 0".into()));
    }
    if job.act_order && !matches!(job.method, Method::Gptq | Method::MrGptq) {
        return Err(QuantizeError::InvalidOption(
            "--act-order applies to --method gptq and mr-gptq only".into(),
        ));
    }
    let overrides = job
        .overrides
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let input = Input::open(&job.input)?;
    let src = input.src();
    let shape = ModelShape::read(src)?;
    let tok = input.tokenizer()?;
    let calib = if job.method.needs_calibration() {
        Some(calibration(job, &tok)?)
    } else {
        None
    };
    let plan = check_and_plan(job, &input, &shape, &overrides, progress)?;
    // Created only once the input is known good: bad input leaves nothing.
    let out = OutputDir::prepare(&job.output, &Manifest::fingerprint(job)?)?;
    let todo: Vec<usize> = (0..shape.n_layers)
        .filter(|il| !out.manifest.layers_done.contains(il))
        .collect();
    if todo.len() < shape.n_layers {
        progress(&format!(
            "resuming: {} of {} layers already done",
            shape.n_layers - todo.len(),
            shape.n_layers
        ));
    }
    let mut out = out;

    // Calibration memory per layer: one K x K f64 Hessian per input site.
    let ffn = plan
        .formats
        .iter()
        .find(|(n, _)| n.ends_with(".ffn_down.weight"))
        .map(|(_, e)| e.cols)
        .unwrap_or(shape.hidden);
    let attn_k = shape.n_heads * shape.head_dim;
    let per_layer = 8 * (2 * shape.hidden * shape.hidden + attn_k * attn_k + ffn * ffn);
    let layers_per_pass = (job.hessian_budget_bytes / per_layer.max(1)).max(1);
    let base_model = match (&calib, todo.is_empty()) {
        (Some(_), false) => Some(marlin_models::load_model(
            &job.input,
            &marlin_models::LoadOptions::default(),
        )?),
        _ => None,
    };

    let t_layers = Instant::now();
    let mut done_now = 0usize;
    for chunk in todo.chunks(layers_per_pass) {
        let stats = match (&calib, &base_model) {
            (Some(c), Some(model)) => {
                let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
                let t0 = Instant::now();
                let awq_rows = if job.method == Method::Awq {
                    job.awq_rows
                } else {
                    0
                };
                let cache = match &job.calib_cache {
                    Some(dir) => Some(calib_cache::cache_file(
                        dir,
                        &job.input,
                        c,
                        first..last + 1,
                        awq_rows,
                    )?),
                    None => None,
                };
                let cached = match &cache {
                    Some(path) => match calib_cache::load(path) {
                        Ok(s) => s,
                        Err(e) => {
                            progress(&format!("ignoring the calibration cache: {e}"));
                            None
                        }
                    },
                    None => None,
                };
                let s = match cached {
                    Some(s) => {
                        progress(&format!(
                            "calibration layers {first}..={last}: read from {} ({:.1}s)",
                            cache
                                .as_ref()
                                .map_or(String::new(), |p| p.display().to_string()),
                            t0.elapsed().as_secs_f64()
                        ));
                        s
                    }
                    None => {
                        let s =
                            collect_stats(model.as_ref(), c, first..last + 1, awq_rows, |d, n| {
                                progress(&format!(
                                    "calibration layers {first}..={last}: window {d}/{n} ({:.0}s)",
                                    t0.elapsed().as_secs_f64()
                                ))
                            })?;
                        if let Some(path) = &cache {
                            calib_cache::save(path, &s)?;
                        }
                        s
                    }
                };
                Some(s)
            }
            _ => None,
        };
        for &il in chunk {
            let t0 = Instant::now();
            let ctx = LayerCtx {
                method: job.method,
                act_order: job.act_order,
                layer: il,
                shape: &shape,
                stats: stats.as_ref(),
            };
            let writer = quantize_layer(&ctx, src, &plan)?;
            out.write_layer(il, &writer)?;
            done_now += 1;
            let elapsed = t_layers.elapsed().as_secs_f64();
            let left = todo.len() - done_now;
            progress(&format!(
                "[layer {}/{}] {:.1}s | elapsed {:.0}s | eta {:.0}s",
                il + 1,
                shape.n_layers,
                t0.elapsed().as_secs_f64(),
                elapsed,
                elapsed / done_now as f64 * left as f64
            ));
        }
    }
    drop(base_model);

    let base = base_tensors(src, &shape, &plan)?;
    out.write_base(&base)?;
    let (quantized_linears, quantized_bpw, total_bpw_dense16) = bits_summary(&plan)?;
    let mut config = shape.hf_config(src)?;
    let rotation = match job.method {
        Method::MrGptq => Some(rotation_summary(&plan, &shape)?),
        _ => None,
    };
    let qc = output::quantization_config(
        job,
        &plan_summary(&plan, &shape)?,
        calib.as_ref(),
        quantized_bpw,
        rotation,
    );
    if let Some(m) = config.as_object_mut() {
        m.insert("quantization_config".into(), qc);
    }
    out.finish(&tok, &config)?;
    Ok(QuantizeReport {
        layers: shape.n_layers,
        layers_done_now: done_now,
        quantized_linears,
        quantized_bpw,
        total_bpw_dense16,
        seconds: t_start.elapsed().as_secs_f64(),
    })
}

/// `quantization_config.rotation` of an MR-GPTQ checkpoint: every rotated
/// linear's block and whether its input is rotated online or the rotation
/// was absorbed into V. Derived from the plan by the same rules the layers
/// were quantized with, so a resumed run writes the same block.
fn rotation_summary(plan: &Plan, shape: &ModelShape) -> Result<serde_json::Value, QuantizeError> {
    let mut tensors = serde_json::Map::new();
    for (name, e) in &plan.formats {
        if e.scheme.is_none() || !name.starts_with("blk.") {
            continue;
        }
        let r = crate::Rotation::for_dim(e.cols, layer::MR_GPTQ_MAX_BLOCK)?;
        let hf = shape.hf_name(name)?;
        let base = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
        let applied = if name.ends_with(".attn_output.weight")
            && absorbable_o_rotation(shape, e.cols)?.is_some()
        {
            let v = shape.hf_name(&name.replace(".attn_output.", ".attn_v."))?;
            format!("absorbed into {}", v.strip_suffix(".weight").unwrap_or(&v))
        } else {
            "online".to_string()
        };
        tensors.insert(
            base,
            serde_json::json!({
                "block_size": r.block_size,
                "k": r.k,
                "padded_k": r.padded_k,
                "applied": applied,
            }),
        );
    }
    Ok(serde_json::json!({
        "type": marlin_io::checkpoint::BLOCK_HADAMARD,
        "max_block_size": layer::MR_GPTQ_MAX_BLOCK,
        "tensors": tensors,
    }))
}

/// Hugging Face names of the linears kept dense.
fn plan_summary(plan: &Plan, shape: &ModelShape) -> Result<Vec<String>, QuantizeError> {
    plan.formats
        .iter()
        .filter(|(_, e)| e.format == Format::Dense)
        .map(|(n, _)| shape.hf_name(n))
        .collect()
}

/// (quantized linears, their bpw, bpw over every matrix with dense at 16).
fn bits_summary(plan: &Plan) -> Result<(usize, f64, f64), QuantizeError> {
    let (mut q_bits, mut q_n, mut all_bits, mut all_n, mut count) = (0u64, 0u64, 0u64, 0u64, 0);
    for e in plan.formats.values() {
        let n = (e.rows * e.cols) as u64;
        all_n += n;
        match &e.scheme {
            Some(s) => {
                let bits = s.storage_bits(e.rows, e.cols)?;
                q_bits += bits;
                q_n += n;
                all_bits += bits;
                count += 1;
            }
            None => all_bits += 16 * n,
        }
    }
    let ratio = |b: u64, n: u64| if n == 0 { 0.0 } else { b as f64 / n as f64 };
    Ok((count, ratio(q_bits, q_n), ratio(all_bits, all_n)))
}

/// Quantizes every linear of layer `ctx.layer` and collects its tensors.
fn quantize_layer(
    ctx: &LayerCtx<'_>,
    src: &dyn WeightSource,
    plan: &Plan,
) -> Result<SafetensorsWriter, QuantizeError> {
    let shape = ctx.shape;
    let il = ctx.layer;
    let name = |tail: &str| format!("blk.{il}.{tail}.weight");
    let load = |tail: &str| -> Result<LinearIn, QuantizeError> {
        let n = name(tail);
        let (_, scheme) = plan.get(&n);
        Ok(LinearIn {
            w: shape.dense_hf(src, &n)?,
            name: n,
            scheme,
        })
    };
    let mut attn_norm = shape.effective_norm(src, &name("attn_norm"))?;
    let mut ffn_norm = shape.effective_norm(src, &name("ffn_norm"))?;
    let mut outputs: Vec<(String, LinearOut)> = Vec::new();
    if ctx.method == Method::Awq {
        // Order matters: down's scales fold into up, o's into v, before
        // those are quantized.
        let mut up = load("ffn_up")?;
        let mut v = load("attn_v")?;
        let (down_out, s) = awq_group(ctx, InputSite::FfnAct, vec![load("ffn_down")?])?;
        if let Some(s) = s {
            fold_into_rows(&mut up.w, &s)?;
        }
        outputs.push((name("ffn_down"), into_one(down_out)?));
        let o = load("attn_output")?;
        if shape.n_heads == shape.n_kv_heads && v.w.rows == o.w.cols {
            let (o_out, s) = awq_group(ctx, InputSite::AttnOut, vec![o])?;
            if let Some(s) = s {
                fold_into_rows(&mut v.w, &s)?;
            }
            outputs.push((name("attn_output"), into_one(o_out)?));
        } else {
            // Grouped-query attention: a V row feeds several heads' o
            // inputs, so per-channel scales cannot fold into it.
            outputs.push((name("attn_output"), quantize_one(ctx, o)?));
        }
        let (ffn_outs, s) = awq_group(ctx, InputSite::FfnIn, vec![load("ffn_gate")?, up])?;
        if let Some(s) = s {
            fold_into_norm(&mut ffn_norm, &s)?;
        }
        outputs.extend(["ffn_gate", "ffn_up"].iter().map(|t| name(t)).zip(ffn_outs));
        let (attn_outs, s) = awq_group(
            ctx,
            InputSite::AttnIn,
            vec![load("attn_q")?, load("attn_k")?, v],
        )?;
        if let Some(s) = s {
            fold_into_norm(&mut attn_norm, &s)?;
        }
        outputs.extend(
            ["attn_q", "attn_k", "attn_v"]
                .iter()
                .map(|t| name(t))
                .zip(attn_outs),
        );
    } else if ctx.method == Method::MrGptq {
        let mut v = load("attn_v")?;
        let o = load("attn_output")?;
        // o's rotation folds into V's rows where it can (see
        // `absorbable_o_rotation`); o is then stored as a plain quantized
        // tensor in the rotated basis and its input needs no rotation.
        let absorbed = match o.scheme {
            Some(_) => absorbable_o_rotation(shape, o.w.cols)?,
            None => None,
        };
        if let Some(r) = absorbed {
            rotate_output_rows(&mut v.w, r.block_size)?;
        }
        let (mut v, mut o) = (Some(v), Some(o));
        for tail in LAYER_LINEARS {
            let lin = match tail {
                "attn_v" => v.take(),
                "attn_output" => o.take(),
                _ => Some(load(tail)?),
            }
            .ok_or_else(|| QuantizeError::Numerical(format!("{tail} quantized twice")))?;
            let out = match (quantize_one(ctx, lin)?, tail, absorbed) {
                (LinearOut::Rotated { tensor, rotation }, "attn_output", Some(r)) => {
                    if rotation != r {
                        return Err(QuantizeError::Numerical(format!(
                            "o's rotation {rotation:?} differs from the one folded into V {r:?}"
                        )));
                    }
                    LinearOut::Quant(tensor)
                }
                (out, _, _) => out,
            };
            outputs.push((name(tail), out));
        }
    } else {
        for tail in LAYER_LINEARS {
            outputs.push((name(tail), quantize_one(ctx, load(tail)?)?));
        }
    }
    let mut w = SafetensorsWriter::new();
    for (n, out) in outputs {
        let hf = shape.hf_name(&n)?;
        match out {
            LinearOut::Quant(t) => {
                let base = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
                w.add_quant(&base, &t)?;
            }
            LinearOut::Dense(d) => w.add_f32(&hf, &[d.rows, d.cols], &d.data)?,
            LinearOut::Rotated { tensor, rotation } => {
                let base = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
                w.add_quant(&base, &tensor)?;
                let r = marlin_io::checkpoint::ActivationRotation::new(
                    rotation.k,
                    rotation.block_size,
                )?;
                w.add_rotation(&base, &r)?;
            }
        }
    }
    for (tail, gamma) in [("attn_norm", attn_norm), ("ffn_norm", ffn_norm)] {
        let hf = shape.hf_name(&name(tail))?;
        w.add_f32(&hf, &[gamma.len()], &shape.stored_hf_norm(gamma))?;
    }
    for tail in LAYER_NORMS_OPTIONAL {
        let n = name(tail);
        if src.contains(&n) {
            let gamma = shape.effective_norm(src, &n)?;
            w.add_f32(
                &shape.hf_name(&n)?,
                &[gamma.len()],
                &shape.stored_hf_norm(gamma),
            )?;
        }
    }
    Ok(w)
}

fn into_one(mut v: Vec<LinearOut>) -> Result<LinearOut, QuantizeError> {
    v.pop()
        .ok_or_else(|| QuantizeError::Numerical("AWQ returned no tensor".into()))
}

/// Embeddings, the final norm and an untied LM head.
fn base_tensors(
    src: &dyn WeightSource,
    shape: &ModelShape,
    plan: &Plan,
) -> Result<SafetensorsWriter, QuantizeError> {
    let mut w = SafetensorsWriter::new();
    for name in ["token_embd.weight", "output.weight"] {
        if !src.contains(name) {
            continue;
        }
        let hf = shape.hf_name(name)?;
        let d = shape.dense_hf(src, name)?;
        match plan.get(name).1 {
            Some(s) => {
                let t = marlin_quant::quantize_rtn(
                    &d.data,
                    d.rows,
                    d.cols,
                    s,
                    &marlin_quant::RtnOptions::min_max(),
                )?;
                w.add_quant(hf.strip_suffix(".weight").unwrap_or(&hf), &t)?;
            }
            None => w.add_f32(&hf, &[d.rows, d.cols], &d.data)?,
        }
    }
    let gamma = shape.effective_norm(src, "output_norm.weight")?;
    w.add_f32(
        &shape.hf_name("output_norm.weight")?,
        &[gamma.len()],
        &shape.stored_hf_norm(gamma),
    )?;
    Ok(w)
}

#[cfg(test)]
mod tests;
