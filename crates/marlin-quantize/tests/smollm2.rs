//! End to end on the real SmolLM2-135M GGUF (skipped when the model file is
//! absent): quantize, load the checkpoint with the normal loader, compare
//! its token distributions with the base. Heavy: run with
//! `cargo test --release -p marlin-quantize --test smollm2 -- --include-ignored`.

use marlin_engine::kld::KldAccumulator;
use marlin_io::tokenizer::Tokenizer;
use marlin_models::{load_model, LoadOptions, Model};
use marlin_quantize::pipeline::presets::Format;
use marlin_quantize::pipeline::{quantize_model, Method, QuantizeJob};
use std::path::{Path, PathBuf};

const MODEL: &str = "../../models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TEXT: &str = "../../data/eval/licenses.txt";

fn model_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    p.exists().then_some(p)
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("marlin-q-smol-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The evaluation text's second half (calibration uses the first half).
fn halves() -> (String, String) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TEXT))
        .expect("data/eval/licenses.txt");
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid += 1;
    }
    (text[..mid].to_string(), text[mid..].to_string())
}

fn kld(base: &dyn Model, model: &dyn Model, tokens: &[u32]) -> (f64, f64) {
    let vocab = base.config().vocab_size;
    let mut acc = KldAccumulator::default();
    for w in tokens.chunks_exact(128).take(2) {
        let mut cb = base.new_cache(128).unwrap();
        let mut cm = model.new_cache(128).unwrap();
        let lb = base.forward_all(w, &mut cb).unwrap();
        let lm = model.forward_all(w, &mut cm).unwrap();
        acc.add_window(w, &lb, &lm, vocab).unwrap();
    }
    let s = acc.summary();
    (s.mean_kld, s.same_top1_pct)
}

fn quantize(job: &QuantizeJob) {
    let report = quantize_model(job, &mut |l| eprintln!("{l}")).unwrap();
    eprintln!("{report:?}");
}

#[test]
#[ignore = "quantizes a real model; run in release"]
fn rtn_and_gptq_checkpoints_load_and_track_the_base() {
    let Some(input) = model_path() else {
        eprintln!("skipped: {MODEL} not present");
        return;
    };
    let (calib_text, eval_text) = halves();
    let calib_file = out_dir("calib.txt");
    std::fs::write(&calib_file, calib_text).unwrap();
    let base = load_model(&input, &LoadOptions::default()).unwrap();
    let gguf = marlin_io::gguf::GgufFile::open(&input).unwrap();
    let base_tok = Tokenizer::from_gguf(&gguf).unwrap();
    let eval_tokens = base_tok.encode(&eval_text, false).unwrap();

    // Identical model: KLD exactly 0.
    let (zero, top1) = kld(base.as_ref(), base.as_ref(), &eval_tokens);
    assert_eq!(zero, 0.0);
    assert_eq!(top1, 100.0);

    let rtn_dir = out_dir("rtn");
    let mut job = QuantizeJob::new(input.clone(), rtn_dir.clone(), Format::Int4, Method::Rtn);
    job.group_size = 64;
    quantize(&job);
    let rtn = load_model(&rtn_dir, &LoadOptions::default()).unwrap();
    // The checkpoint's tokenizer is the GGUF's.
    let tok = Tokenizer::from_hf_dir(&rtn_dir).unwrap();
    let sample = "Permission is hereby granted, free of charge. <|im_start|>user\nHi";
    assert_eq!(
        tok.encode(sample, true).unwrap(),
        base_tok.encode(sample, true).unwrap()
    );
    assert_eq!(tok.eos_ids(), base_tok.eos_ids());
    let (rtn_kld, rtn_top1) = kld(base.as_ref(), rtn.as_ref(), &eval_tokens);
    eprintln!("RTN int4 g64: KLD {rtn_kld:.4}, same top-1 {rtn_top1:.1}%");
    // SmolLM2-135M is small and its base is already 4-bit: requantizing to
    // INT4 costs a lot (about 1.1 nats on these short windows without BOS);
    // the bounds only catch a broken checkpoint (a wrong tensor gives KLD
    // of several nats and top-1 agreement near 0).
    assert!(rtn_kld > 0.0 && rtn_kld < 2.0, "{rtn_kld}");
    assert!(rtn_top1 > 40.0, "{rtn_top1}");

    let gptq_dir = out_dir("gptq");
    let mut job = QuantizeJob::new(input.clone(), gptq_dir.clone(), Format::Int4, Method::Gptq);
    job.group_size = 64;
    job.calib_files = vec![calib_file.clone()];
    job.calib_samples = 8;
    job.calib_seq_len = 128;
    quantize(&job);
    let gptq = load_model(&gptq_dir, &LoadOptions::default()).unwrap();
    let (gptq_kld, gptq_top1) = kld(base.as_ref(), gptq.as_ref(), &eval_tokens);
    eprintln!("GPTQ int4 g64: KLD {gptq_kld:.4}, same top-1 {gptq_top1:.1}%");
    assert!(gptq_kld < rtn_kld, "GPTQ {gptq_kld} vs RTN {rtn_kld}");

    for d in [rtn_dir, gptq_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::remove_file(calib_file).unwrap();
}

#[test]
#[ignore = "quantizes a real model; run in release"]
fn interrupted_run_resumes_to_the_same_checkpoint() {
    let Some(input) = model_path() else {
        eprintln!("skipped: {MODEL} not present");
        return;
    };
    let full_dir = out_dir("full");
    let mut job = QuantizeJob::new(input.clone(), full_dir.clone(), Format::Int8, Method::Rtn);
    quantize(&job);

    let cut_dir = out_dir("cut");
    job.output = cut_dir.clone();
    // Interrupt after the third finished layer.
    let interrupted = std::panic::catch_unwind(|| {
        let mut layers = 0;
        let _ = quantize_model(&job, &mut |l| {
            if l.starts_with("[layer") {
                layers += 1;
                if layers == 3 {
                    panic!("interrupted");
                }
            }
        });
    });
    assert!(interrupted.is_err());
    // Half-written: not loadable as a model.
    assert!(!cut_dir.join("config.json").exists());
    assert!(load_model(&cut_dir, &LoadOptions::default()).is_err());
    let mut lines = Vec::new();
    quantize_model(&job, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("resuming: 3 of 30 layers")),
        "{lines:?}"
    );
    let mut names: Vec<_> = std::fs::read_dir(&full_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let a = std::fs::read(full_dir.join(&name)).unwrap();
        let b = std::fs::read(cut_dir.join(&name)).unwrap();
        assert!(a == b, "{name:?} differs after resume");
    }
    for d in [full_dir, cut_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_input_fails_before_any_output() {
    let Some(input) = model_path() else {
        eprintln!("skipped: {MODEL} not present");
        return;
    };
    let out = out_dir("bad");
    // 576 is not a multiple of 128.
    let job = QuantizeJob::new(input.clone(), out.clone(), Format::Int4, Method::Rtn);
    let err = quantize_model(&job, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("group") || err.contains("divide"), "{err}");
    assert!(!out.exists());
    // GPTQ without calibration text, or with an empty / too short file.
    let mut job = QuantizeJob::new(input.clone(), out.clone(), Format::Int4, Method::Gptq);
    job.group_size = 64;
    assert!(quantize_model(&job, &mut |_| {}).is_err());
    let empty = out_dir("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    job.calib_files = vec![empty.clone()];
    assert!(quantize_model(&job, &mut |_| {}).is_err());
    std::fs::write(&empty, "just a few words").unwrap();
    let err = quantize_model(&job, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("fewer than one window"), "{err}");
    assert!(!out.exists());
    std::fs::remove_file(empty).unwrap();
}
