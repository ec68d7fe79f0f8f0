//! Memory and speed of building a GGUF file's tokenizer, for the peak-memory work
//! (docs/BENCHMARKS.md): resident set and its high-water mark after each step, then the time
//! to encode and decode a long text.
//!
//! `cargo run --release -p marlin-io --example tokenizer_memory -- MODEL.gguf [TEXT_FILE]`
//!
//! With `MARLIN_TOKENIZER_COMPARE=1`, also times the `tokenizers` crate's `BPE` model on the
//! same text (the tokenizer written as `tokenizer.json` and read back), alternating the two.

use std::time::Instant;

use marlin_io::gguf::GgufFile;
use marlin_io::tokenizer::Tokenizer;

/// `VmRSS` and `VmHWM` of this process in MiB (Linux; zeros elsewhere).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report(step: &str) {
    let (rss, hwm) = rss_mib();
    println!("{step:<28} rss {rss:7.1} MiB   peak {hwm:7.1} MiB");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: tokenizer_memory MODEL.gguf [TEXT_FILE]")?;
    let text = match args.next() {
        Some(path) => std::fs::read_to_string(path)?,
        None => "The quick brown fox, 12345 times: naïve café — 日本語 テキスト.\n\tcode() {}\n"
            .repeat(2000),
    };
    report("start");
    let file = GgufFile::open(&model)?;
    report("GGUF opened");
    let start = Instant::now();
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let build_s = start.elapsed().as_secs_f64();
    report("tokenizer built");
    drop(file);
    report("GGUF closed");
    let start = Instant::now();
    let ids = tokenizer.encode(&text, true)?;
    let encode_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let decoded = tokenizer.decode(&ids)?;
    let decode_s = start.elapsed().as_secs_f64();
    report("encoded + decoded");
    let special = (0..tokenizer.vocab_size() as u32)
        .filter(|&id| tokenizer.is_special(id))
        .count();
    println!(
        "vocab {} ({special} special) | build {build_s:.3} s | encode {} bytes -> {} ids in {encode_s:.3} s | decode {decode_s:.3} s ({} bytes)",
        tokenizer.vocab_size(),
        text.len(),
        ids.len(),
        decoded.len()
    );
    if std::env::var_os("MARLIN_TOKENIZER_COMPARE").is_some() {
        compare(&tokenizer, &text)?;
    }
    Ok(())
}

/// Encode times of the compact model and the `BPE` model, alternated, each text encoded once
/// per round (the `BPE` model's word cache warms up after the first round).
fn compare(tokenizer: &Tokenizer, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("marlin-tokmem-{}.json", std::process::id()));
    std::fs::write(&path, tokenizer.to_tokenizer_json()?)?;
    let reference = Tokenizer::from_tokenizer_json(&path);
    std::fs::remove_file(&path).ok();
    let reference = reference?;
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (slot, which) in [tokenizer, &reference].into_iter().enumerate() {
            let start = Instant::now();
            let ids = which.encode(text, true)?;
            times[slot].push(start.elapsed().as_secs_f64());
            std::hint::black_box(ids);
        }
    }
    for (name, mut t) in ["compact", "tokenizers BPE"].into_iter().zip(times) {
        let first = t[0];
        t.sort_by(f64::total_cmp);
        println!(
            "{name:<15} encode: first {first:.3} s, median {:.3} s",
            t[2]
        );
    }
    Ok(())
}
