//! `marlin quantize`: a GGUF or Hugging Face model into a marlin checkpoint.

use marlin_quantize::pipeline::presets::{Format, Preset};
use marlin_quantize::pipeline::{quantize_model, Method, QuantizeJob};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The flags of `marlin quantize`.
#[derive(clap::Args, Clone, Debug)]
pub struct QuantizeArgs {
    /// GGUF file (dequantized as the base) or Hugging Face directory.
    pub input: PathBuf,
    /// Output checkpoint directory (created; an unfinished run of the same
    /// job there is resumed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// int4, int3, int2, int8, fp4, mxfp4, nvfp4, fp8
    #[arg(long)]
    pub format: String,
    /// Group size along K (int4/int3/int2/fp4; must divide every K).
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// rtn, gptq, mr-gptq (Hadamard-rotated GPTQ; the CPU loader rotates the
    /// activations), awq
    #[arg(long, default_value = "rtn")]
    pub method: String,
    /// GPTQ act-order (desc_act, emits g_idx).
    #[arg(long)]
    pub act_order: bool,
    /// Calibration text files (GPTQ, AWQ).
    #[arg(long = "calib", num_args = 1..)]
    pub calib: Vec<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 256)]
    pub calib_seq_len: usize,
    /// Directory caching calibration statistics between runs: a run whose
    /// model, calibration windows and layers match a cached pass reads it
    /// instead of recomputing (a table of formats and methods calibrates once).
    #[arg(long)]
    pub calib_cache: Option<PathBuf>,
    /// Seed of the calibration window positions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// quality, balanced, speed, moe
    #[arg(long, default_value = "balanced")]
    pub preset: String,
    /// RE=FORMAT over Hugging Face tensor names (repeatable, first match wins),
    /// e.g. 'model\.layers\.0\..*=int8'.
    #[arg(long = "override")]
    pub overrides: Vec<String>,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also write the checkpoint in another layout: `gptq` (INT2/INT4/INT8
    /// linears as qweight/qzeros/scales/g_idx, loadable by transformers).
    #[arg(long)]
    pub export: Option<String>,
    /// Directory of the exported checkpoint (default: OUTPUT-gptq).
    #[arg(long)]
    pub export_dir: Option<PathBuf>,
}

pub fn quantize(args: &QuantizeArgs) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    // Checked before the long work starts.
    if let Some(e) = args.export.as_deref() {
        if e != "gptq" {
            anyhow::bail!("--export {e}: supported: gptq");
        }
        // A GPTQ quantization_config has one format for every linear.
        let uniform = args.preset == "balanced" && args.overrides.is_empty();
        if !uniform || !matches!(args.format.as_str(), "int4" | "int2" | "int8") {
            anyhow::bail!(
                "--export gptq needs --format int4, int2 or int8 with --preset balanced \
                 and no --override (one format for every quantized linear)"
            );
        }
    }
    let mut job = QuantizeJob::new(
        args.input.clone(),
        args.output.clone(),
        Format::parse(&args.format)?,
        Method::parse(&args.method)?,
    );
    job.group_size = args.group_size;
    job.act_order = args.act_order;
    job.calib_files = args.calib.clone();
    job.calib_samples = args.calib_samples;
    job.calib_seq_len = args.calib_seq_len;
    job.seed = args.seed;
    job.calib_cache = args.calib_cache.clone();
    job.preset = Preset::parse(&args.preset)?;
    job.overrides = args.overrides.clone();
    let mut stderr = std::io::stderr();
    let report = quantize_model(&job, &mut |line| {
        // Calibration lines overwrite each other; layer lines stay.
        if line.starts_with("calibration") {
            let _ = write!(stderr, "\r{line}   ");
        } else {
            let _ = writeln!(stderr, "\r{line}");
        }
        let _ = stderr.flush();
    })?;
    println!(
        "wrote {}: {} layers ({} this run), {} quantized linears at {:.3} bits/weight \
         ({:.3} over all matrices, dense at 16), {:.1}s",
        args.output.display(),
        report.layers,
        report.layers_done_now,
        report.quantized_linears,
        report.quantized_bpw,
        report.total_bpw_dense16,
        report.seconds
    );
    if args.export.is_some() {
        export_gptq(args)?;
    }
    Ok(())
}

/// Converts the written marlin checkpoint into the GPTQ layout.
fn export_gptq(args: &QuantizeArgs) -> anyhow::Result<()> {
    let dst = args.export_dir.clone().unwrap_or_else(|| {
        let mut name = args.output.as_os_str().to_owned();
        name.push("-gptq");
        PathBuf::from(name)
    });
    let export = marlin_io::interop::gptq::export_gptq_dir(&args.output, &dst)?;
    println!(
        "wrote {}: {} GPTQ linears ({} bits, group {}, sym {}, desc_act {}, checkpoint_format {})",
        dst.display(),
        export.linears,
        export.config.bits,
        export.config.group_size.map_or(-1, |g| g as i64),
        export.config.sym,
        export.config.desc_act,
        export.config.zero_format.name()
    );
    if export.rounded_scales > 0 {
        println!(
            "note: {} scales were not f16 values (GPTQ stores f16) and were rounded",
            export.rounded_scales
        );
    }
    Ok(())
}

/// `marlin dequantize`: the GGUF's dequantized base as an F32 GGUF.
pub fn dequantize(input: &Path, output: &Path) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let done = marlin_quantize::gguf_f32::write_dequantized_gguf(input, output)?;
    println!(
        "wrote {}: {} tensors as F32 ({} dequantized), {} metadata entries, {} bytes, {:.1}s",
        output.display(),
        done.tensors,
        done.dequantized,
        done.metadata,
        done.bytes,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
