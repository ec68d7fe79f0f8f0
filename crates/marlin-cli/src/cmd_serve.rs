//! `marlin serve`: the OpenAI-compatible server over the serving engine.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use marlin_core::Device;
use marlin_engine::serve::{spawn, BatchModel, EngineConfig};
use marlin_io::tokenizer::Tokenizer;
use marlin_models::{KvPool, ModelConfig};
use marlin_server::AppState;

use crate::serve_backend::{CpuBatchModel, EngineBackend, TokenizerDetok};
use crate::session;

/// KV memory used on the CPU when `--num-kv-blocks` is not given (on the
/// GPU the pool is sized from the memory left after the weights).
const DEFAULT_KV_BYTES: usize = 1 << 30;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// GGUF file or Hugging Face directory.
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (default: $MARLIN_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// The model id clients send (default: the file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub max_num_seqs: usize,
    /// Most tokens per engine step (decode tokens + prompt chunks).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// KV-cache blocks (default: enough for --max-num-seqs sequences of
    /// --max-model-len, at most 1 GiB on the CPU, or what free GPU memory
    /// holds after the weights with a safety margin on cuda).
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,
    /// Positions per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Longest prompt + completion (default: the model's context, capped at 4096).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Requests that may wait for a slot before new ones get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Also serve /metrics on this port.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// cpu, cuda or cuda:N (the paged KV pool and every batched forward
    /// pass on that GPU; sampling stays on the host).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    if !args.model.exists() {
        anyhow::bail!("{}: no such file or directory", args.model.display());
    }
    if args.block_size == 0 || args.max_num_seqs == 0 || args.max_queue == 0 {
        anyhow::bail!("--block-size, --max-num-seqs and --max-queue must be at least 1");
    }
    crate::init_threads(args.threads)?;
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let api_key = args.api_key.clone().or_else(|| {
        std::env::var("MARLIN_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    let state = Arc::new(AppState::new(name, api_key));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    // The listener comes up first (503 while loading), then the model loads.
    let addr = SocketAddr::new(args.host, args.port);
    let metrics_addr = args.metrics_port.map(|p| SocketAddr::new(args.host, p));
    let server_state = Arc::clone(&state);
    let server = runtime.spawn(marlin_server::serve(addr, metrics_addr, server_state));
    let engine = match load_backend(args) {
        Ok(backend) => {
            let engine = backend.engine.clone();
            state.set_backend(Arc::new(backend));
            tracing::info!("model loaded; serving");
            Some(engine)
        }
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    let result = runtime
        .block_on(server)
        .context("server task failed")?
        .with_context(|| format!("serving on {addr}"));
    if let Some(engine) = engine {
        engine.shutdown(Duration::from_secs(30));
    }
    result
}

/// The engine's model on the chosen device, with what the rest needs.
struct LoadedBatch {
    model: Box<dyn BatchModel>,
    tokenizer: Tokenizer,
    cfg: ModelConfig,
    max_model_len: usize,
}

/// Blocks that hold `max_num_seqs` sequences of `max_model_len` positions.
fn wanted_blocks(args: &ServeArgs, max_model_len: usize) -> usize {
    args.max_num_seqs
        .saturating_mul(max_model_len)
        .div_ceil(args.block_size)
        .max(1)
}

fn load_cpu(args: &ServeArgs) -> anyhow::Result<LoadedBatch> {
    let loaded = session::load(&args.model)?;
    let cfg = loaded.model.config().clone();
    let max_model_len = session::context_len_for(&cfg, args.max_model_len)?;
    let block_bytes =
        KvPool::block_bytes(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, args.block_size);
    let n_blocks = match args.num_kv_blocks {
        Some(0) => anyhow::bail!("--num-kv-blocks must be at least 1"),
        Some(n) => n,
        None => wanted_blocks(args, max_model_len)
            .clamp(1, (DEFAULT_KV_BYTES / block_bytes.max(1)).max(1)),
    };
    tracing::info!(
        n_blocks,
        block_size = args.block_size,
        mib = (n_blocks * block_bytes) >> 20,
        "KV pool"
    );
    let model = CpuBatchModel::new(loaded.model, args.block_size, n_blocks)?;
    Ok(LoadedBatch {
        model: Box::new(model),
        tokenizer: loaded.tokenizer,
        cfg,
        max_model_len,
    })
}

#[cfg(feature = "cuda")]
fn load_gpu(args: &ServeArgs, ordinal: usize) -> anyhow::Result<LoadedBatch> {
    use marlin_models::gpu::{GpuBatchModel, PagedOptions};
    let loaded = session::load_on(&args.model, Device::Cuda(ordinal))?;
    let session::DeviceModel::Cuda(gpu) = loaded.model else {
        anyhow::bail!("--device cuda:{ordinal}: the model did not load onto the GPU");
    };
    let cfg = gpu.config().clone();
    let max_model_len = session::context_len_for(&cfg, args.max_model_len)?;
    let opts = PagedOptions {
        block_size: args.block_size,
        n_blocks: match args.num_kv_blocks {
            Some(0) => anyhow::bail!("--num-kv-blocks must be at least 1"),
            n => n,
        },
        max_blocks: wanted_blocks(args, max_model_len),
        max_rows: args.max_batch_tokens.max(args.max_num_seqs),
        max_logit_rows: args.max_num_seqs,
    };
    let model = GpuBatchModel::new(std::sync::Arc::from(gpu), &opts)
        .with_context(|| format!("KV pool on cuda:{ordinal}"))?;
    tracing::info!(
        n_blocks = model.pool().n_blocks(),
        block_size = args.block_size,
        mib = model.pool_bytes() >> 20,
        "KV pool on the GPU"
    );
    Ok(LoadedBatch {
        model: Box::new(model),
        tokenizer: loaded.tokenizer,
        cfg,
        max_model_len,
    })
}

#[cfg(not(feature = "cuda"))]
fn load_gpu(_args: &ServeArgs, _ordinal: usize) -> anyhow::Result<LoadedBatch> {
    anyhow::bail!(
        "--device cuda: this marlin was built without the `cuda` feature (cargo build --release --features cuda)"
    )
}

fn load_backend(args: &ServeArgs) -> anyhow::Result<EngineBackend> {
    let LoadedBatch {
        model,
        tokenizer,
        cfg,
        max_model_len,
    } = match args.device {
        Device::Cpu => load_cpu(args)?,
        Device::Cuda(ordinal) => load_gpu(args, ordinal)?,
    };
    let template = session::chat_template_for(&tokenizer, &cfg.arch);
    let (template, template_error) = match template {
        Ok(t) => (Some(t), String::new()),
        Err(e) => (None, format!("{e:#}")),
    };
    let tokenizer = Arc::new(tokenizer);
    let engine_cfg = EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_batch_tokens: args.max_batch_tokens.max(args.max_num_seqs),
        max_queue: args.max_queue,
        max_model_len,
    };
    let engine = spawn(
        model,
        Box::new(TokenizerDetok(Arc::clone(&tokenizer))),
        engine_cfg,
    )?;
    Ok(EngineBackend {
        engine,
        tokenizer,
        template,
        template_error,
        vocab_size: cfg.vocab_size,
        token_texts: std::sync::OnceLock::new(),
    })
}
