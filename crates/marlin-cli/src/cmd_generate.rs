//! `marlin run` and `marlin chat`.

use crate::serve_backend::{CpuBatchModel, TokenizerDetok};
use crate::session::{self, DeviceModel, DeviceSequence, TextStream};
use crate::{ComputeArgs, SamplingArgs};
use marlin_engine::serve::{generate_blocking, spawn, EngineConfig, EngineRequest};
use marlin_engine::{generate, GenerationOutput, GenerationRequest, SamplingParams};
use marlin_io::tokenizer::{ChatMessage, Tokenizer};
use marlin_models::Model;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Prompt tokens fed to the model per forward call: bounds the activation
/// scratch memory of a long prompt.
const PREFILL_CHUNK: usize = 512;

fn sampling_params(s: &SamplingArgs) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repeat_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: s.seed,
        ..SamplingParams::default()
    }
}

fn request(tok: &Tokenizer, prompt: Vec<u32>, s: &SamplingArgs) -> GenerationRequest {
    GenerationRequest {
        prompt,
        max_tokens: s.max_tokens,
        sampling: sampling_params(s),
        stop_strings: s.stop.clone(),
        stop_tokens: tok.eos_ids().to_vec(),
        prefill_chunk: PREFILL_CHUNK,
    }
}

/// Streams one generation to stdout; returns its output.
fn stream_to_stdout(
    seq: &mut DeviceSequence,
    tok: &Tokenizer,
    req: &GenerationRequest,
) -> anyhow::Result<GenerationOutput> {
    let mut stdout = std::io::stdout().lock();
    let mut write_failed = false;
    let out = generate(seq, &mut TextStream(tok.stream_decoder()), req, |text| {
        // A closed pipe (e.g. `| head`) ends generation quietly.
        write_failed = stdout.write_all(text.as_bytes()).is_err() || stdout.flush().is_err();
        !write_failed
    })?;
    Ok(out)
}

fn print_timing(out: &GenerationOutput) {
    let s = &out.stats;
    eprintln!(
        "\nprompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | finish: {:?}",
        s.prompt_tokens,
        s.prompt_tok_per_s(),
        s.generated_tokens,
        s.decode_tok_per_s(),
        out.finish_reason
    );
}

/// Checks the flags before the (slow) load, then loads model and tokenizer
/// onto `--device`.
fn prepare(
    model_path: &Path,
    sampling: &SamplingArgs,
    compute: &ComputeArgs,
) -> anyhow::Result<session::LoadedOn> {
    crate::init_threads(compute.threads)?;
    sampling_params(sampling).validate()?;
    session::load_on(model_path, compute.device)
}

pub fn run(
    model_path: &Path,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
    sampling: &SamplingArgs,
    compute: &ComputeArgs,
) -> anyhow::Result<()> {
    let loaded = prepare(model_path, sampling, compute)?;
    // Shared, not cloned, with the engine's detokenizer: a tokenizer of a
    // large vocabulary (Gemma 3: 262,144 pieces) is tens of MB per copy.
    let tokenizer = Arc::new(loaded.tokenizer);
    let tok = &*tokenizer;
    let ids = if chat {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(prompt));
        let rendered = session::chat_template_for(tok, &loaded.model.config().arch)?
            .render(&messages, true)?;
        tracing::debug!(prompt = %rendered, "chat prompt");
        tok.encode_chat_prompt(&rendered)?
    } else {
        tok.encode(prompt, true)?
    };
    let ctx = session::context_len_for(loaded.model.config(), sampling.ctx)?;
    let req = request(tok, ids, sampling);
    // The prompt's encoding (the pre-tokenizer's regexes, the template) ran its code once.
    crate::memory::release_unused_memory();
    if !chat {
        // Raw completion: echo the prompt so the output reads as one text.
        // (A closed pipe is not an error: `marlin run ... | head`.)
        let _ = write!(std::io::stdout(), "{prompt}");
    }
    let out = match loaded.model {
        // The CPU runs through the serving engine, so `marlin run` and
        // `marlin serve` give the same output by construction.
        DeviceModel::Cpu(model) => generate_on_engine(model, &tokenizer, req, ctx)?,
        #[cfg(feature = "cuda")]
        gpu => {
            let gpu_vocab = gpu.config().vocab_size;
            let mut seq = gpu.new_sequence(ctx)?;
            match (
                &mut seq,
                crate::gpu_generate::device_sampling(&req.sampling, gpu_vocab),
            ) {
                // The token choice on the device: 4 bytes per token come
                // back instead of the logits.
                (DeviceSequence::Cuda(s), Some(choice)) => {
                    let mut stdout = std::io::stdout().lock();
                    crate::gpu_generate::generate_on_device(
                        s,
                        choice,
                        &mut TextStream(tok.stream_decoder()),
                        &req,
                        |text| stdout.write_all(text.as_bytes()).is_ok() && stdout.flush().is_ok(),
                    )?
                }
                _ => stream_to_stdout(&mut seq, tok, &req)?,
            }
        }
    };
    let _ = writeln!(std::io::stdout());
    print_timing(&out);
    Ok(())
}

/// One request through a one-sequence serving engine, streamed to stdout.
fn generate_on_engine(
    model: Box<dyn Model>,
    tok: &Arc<Tokenizer>,
    req: GenerationRequest,
    ctx: usize,
) -> anyhow::Result<GenerationOutput> {
    const BLOCK_SIZE: usize = 16;
    let batch = CpuBatchModel::new(model, BLOCK_SIZE, ctx.div_ceil(BLOCK_SIZE))?;
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_batch_tokens: PREFILL_CHUNK,
        max_queue: 1,
        max_model_len: ctx,
    };
    let detok = TokenizerDetok(Arc::clone(tok));
    let engine = spawn(Box::new(batch), Box::new(detok), cfg)?;
    let engine_req = EngineRequest {
        prompt: req.prompt,
        sampling: req.sampling,
        max_tokens: req.max_tokens,
        stop_strings: req.stop_strings,
        stop_token_ids: req.stop_tokens,
        logprobs: None,
    };
    let mut stdout = std::io::stdout().lock();
    let out = generate_blocking(&engine, engine_req, |text| {
        // A closed pipe (e.g. `| head`) ends generation quietly.
        stdout.write_all(text.as_bytes()).is_ok() && stdout.flush().is_ok()
    });
    engine.shutdown(Duration::from_secs(5));
    Ok(out?)
}

pub fn chat(
    model_path: &Path,
    system: Option<&str>,
    sampling: &SamplingArgs,
    compute: &ComputeArgs,
) -> anyhow::Result<()> {
    let loaded = prepare(model_path, sampling, compute)?;
    // Shared, not cloned, with the engine's detokenizer: a tokenizer of a
    // large vocabulary (Gemma 3: 262,144 pieces) is tens of MB per copy.
    let tokenizer = Arc::new(loaded.tokenizer);
    let tok = &*tokenizer;
    let template = session::chat_template_for(tok, &loaded.model.config().arch)?;
    let ctx = session::context_len_for(loaded.model.config(), sampling.ctx)?;
    let mut seq = loaded.model.new_sequence(ctx)?;
    // Tokens whose keys and values are in the cache, in order.
    let mut cached: Vec<u32> = Vec::new();
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(ChatMessage::system(s));
    }
    eprintln!(
        "marlin chat: {} (ctx {ctx}). Empty line or Ctrl-D to quit.",
        model_path.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage::user(line));
        let rendered = template.render(&messages, true)?;
        let ids = tok.encode_chat_prompt(&rendered)?;
        // Reuse the cache for the longest common prefix with the last turn.
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let common = common.min(ids.len().saturating_sub(1));
        seq.truncate(common);
        cached.truncate(common);
        let new = ids[common..].to_vec();
        if ids.len() >= seq.capacity() {
            anyhow::bail!(
                "the conversation ({} tokens) no longer fits the context of {} tokens; restart with a larger --ctx",
                ids.len(),
                seq.capacity()
            );
        }
        let req = request(tok, new, sampling);
        let out = stream_to_stdout(&mut seq, tok, &req)?;
        println!();
        print_timing(&out);
        // The cache holds the prompt and every generated token that was fed
        // back (the last sampled one may not have been): its length says.
        cached.extend_from_slice(&ids[common..]);
        cached.extend_from_slice(&out.tokens);
        cached.truncate(seq.len());
        messages.push(ChatMessage::assistant(out.text.trim().to_string()));
    }
    Ok(())
}
