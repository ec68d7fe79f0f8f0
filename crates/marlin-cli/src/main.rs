//! `marlin`: run, chat with, inspect, evaluate and benchmark quantized LLMs.
//!
//! Thin by design: parse flags, call the crates, print.

mod cmd_bench;
mod cmd_bench_decode;
mod cmd_eval;
mod cmd_generate;
mod cmd_inspect;
mod cmd_quantize;
mod cmd_serve;
#[cfg(feature = "cuda")]
mod gpu_generate;
mod memory;
mod serve_backend;
mod session;

use clap::{Parser, Subcommand};
use marlin_core::Device;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "marlin",
    version,
    about = "Fast quantized LLM inference on CPUs and NVIDIA GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct ComputeArgs {
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Same seed, same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Context length (default: the model's, capped at 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of PROMPT, streamed to stdout.
    Run {
        /// GGUF file or Hugging Face model directory.
        model: PathBuf,
        prompt: String,
        /// Apply the model's chat template to PROMPT as a user message.
        #[arg(long)]
        chat: bool,
        /// System message (with --chat).
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Interactive multi-turn chat with the model's template.
    Chat {
        model: PathBuf,
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Architecture, hyper-parameters, tokenizer, tensor types, memory.
    Inspect {
        model: PathBuf,
        /// List every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// OpenAI-compatible HTTP server with continuous batching.
    Serve(cmd_serve::ServeArgs),
    /// Quantize a GGUF or Hugging Face model into a marlin checkpoint.
    Quantize(cmd_quantize::QuantizeArgs),
    /// Write a GGUF with every tensor dequantized to F32 (metadata and
    /// tokenizer kept): the base `quantize` starts from, for llama-quantize.
    Dequantize {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Quality evaluation.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Benchmarks that print their figures beside a peer or a limit.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// KL divergence of MODEL's token distributions against BASE's.
    Kld {
        model: PathBuf,
        /// The reference model (e.g. the GGUF the checkpoint was made from).
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// At most this many windows.
        #[arg(long)]
        chunks: Option<usize>,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Per-layer weight MSE and cosine similarity of MODEL against BASE.
    Layers {
        model: PathBuf,
        #[arg(long)]
        base: PathBuf,
    },
    /// Perplexity as llama.cpp's llama-perplexity computes it.
    Ppl {
        model: PathBuf,
        /// Text file to score.
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// At most this many windows.
        #[arg(long)]
        chunks: Option<usize>,
        #[command(flatten)]
        compute: ComputeArgs,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Quantized GEMM vs memory bandwidth and a dense peer.
    Gemm {
        #[command(flatten)]
        compute: ComputeArgs,
        /// Fewer shapes and repetitions (a quick check).
        #[arg(long)]
        quick: bool,
        /// Weight formats, comma-separated (default: the table).
        /// CPU: int4, mxfp4, nvfp4, int8, fp8, int3, int2; CUDA: int4 (g128),
        /// int4zp (zero points, g128), int4g32, mxfp4, nvfp4, int8, fp8,
        /// fp8b128, int3, int2.
        #[arg(long, value_delimiter = ',')]
        formats: Vec<String>,
        /// Batch sizes M, comma-separated (default: the list).
        #[arg(long, value_delimiter = ',')]
        ms: Vec<usize>,
    },
    /// Prompt processing and decode speed of a model.
    Model {
        model: PathBuf,
        /// Prompt tokens.
        #[arg(long, default_value_t = 512)]
        pp: usize,
        /// Generated tokens.
        #[arg(long, default_value_t = 128)]
        tg: usize,
        /// Repetitions (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Decode steps of a Llama-3.1-8B-shaped INT4 model on the GPU against
    /// the roofline (weights + KV bytes per step / copy bandwidth).
    Decode {
        #[command(flatten)]
        compute: ComputeArgs,
        /// Batch sizes (sequences decoded together), comma-separated.
        #[arg(long, default_value = "1,8,32")]
        batch: String,
        /// KV-cache positions each sequence holds.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Timed decode steps per configuration.
        #[arg(long, default_value_t = 64)]
        steps: usize,
        /// Also print the GPU time of each kernel group of one step.
        #[arg(long)]
        breakdown: bool,
    },
    /// One model on the CPU and the GPU: greedy tokens, logit differences, speed.
    Devices {
        model: PathBuf,
        /// Prompt (repeatable; default: four built-in prompts).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Greedy tokens per prompt.
        #[arg(long, default_value_t = 32)]
        tokens: usize,
        #[command(flatten)]
        compute: ComputeArgs,
    },
}

/// Sizes the CPU thread pool once, before any kernel runs.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot size the thread pool: {e}"))?;
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MARLIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Before any thread exists (peak memory of the one-process commands). The server keeps
    // glibc's per-thread arenas: its many request threads allocate concurrently.
    if !matches!(cli.command, Command::Serve { .. }) {
        memory::use_one_malloc_arena();
    }
    let result = match cli.command {
        Command::Run {
            model,
            prompt,
            chat,
            system,
            sampling,
            compute,
        } => cmd_generate::run(
            &model,
            &prompt,
            chat,
            system.as_deref(),
            &sampling,
            &compute,
        ),
        Command::Chat {
            model,
            system,
            sampling,
            compute,
        } => cmd_generate::chat(&model, system.as_deref(), &sampling, &compute),
        Command::Inspect { model, tensors } => cmd_inspect::inspect(&model, tensors),
        Command::Serve(args) => cmd_serve::serve(&args),
        Command::Quantize(args) => cmd_quantize::quantize(&args),
        Command::Dequantize { input, output } => cmd_quantize::dequantize(&input, &output),
        Command::Eval {
            what:
                EvalCommand::Ppl {
                    model,
                    text,
                    ctx,
                    chunks,
                    compute,
                },
        } => cmd_eval::perplexity(&model, &text, ctx, chunks, &compute),
        Command::Eval {
            what:
                EvalCommand::Kld {
                    model,
                    base,
                    text,
                    ctx,
                    chunks,
                    compute,
                },
        } => cmd_eval::kld(&model, &base, &text, ctx, chunks, &compute),
        Command::Eval {
            what: EvalCommand::Layers { model, base },
        } => cmd_eval::layers(&model, &base),
        Command::Bench { what } => match what {
            BenchCommand::Gemm {
                compute,
                quick,
                formats,
                ms,
            } => cmd_bench::gemm(&compute, quick, &formats, &ms),
            BenchCommand::Model {
                model,
                pp,
                tg,
                reps,
                compute,
            } => cmd_bench::model(&model, pp, tg, reps, &compute),
            BenchCommand::Decode {
                compute,
                batch,
                ctx,
                steps,
                breakdown,
            } => cmd_bench_decode::decode(&compute, &batch, ctx, steps, breakdown),
            BenchCommand::Devices {
                model,
                prompts,
                tokens,
                compute,
            } => cmd_bench_decode::devices(&model, &prompts, tokens, &compute),
        },
    };
    if let Err(e) = result {
        // One line naming the problem, with its causes; never a panic trace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
