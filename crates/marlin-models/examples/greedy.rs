//! Greedy continuation of a list of token ids, with timings.
//!
//! cargo run --release -p marlin-models --example greedy -- MODEL N_NEW ID ID ...

use marlin_models::{load_model, LoadOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        anyhow::bail!("usage: greedy MODEL N_NEW TOKEN_ID...");
    }
    let t0 = Instant::now();
    let model = load_model(args[1].as_ref(), &LoadOptions::default())?;
    eprintln!("loaded {:?} in {:.2?}", model.config().arch, t0.elapsed());
    let n_new: usize = args[2].parse()?;
    let prompt: Vec<u32> = args[3..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mut cache = model.new_cache(prompt.len() + n_new)?;
    let t1 = Instant::now();
    let mut logits = model.forward(&prompt, &mut cache)?;
    let pp = t1.elapsed();
    let mut out = Vec::new();
    let t2 = Instant::now();
    for _ in 0..n_new {
        let next = argmax(&logits);
        out.push(next);
        logits = model.forward(&[next], &mut cache)?;
    }
    let tg = t2.elapsed();
    println!("{out:?}");
    eprintln!(
        "prompt {} tokens {:.1} tok/s | decode {} tokens {:.1} tok/s",
        prompt.len(),
        prompt.len() as f64 / pp.as_secs_f64(),
        n_new,
        n_new as f64 / tg.as_secs_f64()
    );
    Ok(())
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}
