//! Wall time of the quantizers on one synthetic (N, K) layer.
//!
//! `cargo run --release -p marlin-quantize --example quantize_speed -- N K ROWS`
//! (defaults 576 1536 2048: a SmolLM2-135M MLP down projection).

use std::time::Instant;

use marlin_quant::{quantize_rtn, QuantScheme, RtnOptions};
use marlin_quantize::{
    awq_quantize, gptq_quantize, mr_gptq_quantize, AwqOptions, GptqOptions, HessianAccumulator,
    MrGptqOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(576);
    let k = args.get(1).copied().unwrap_or(1536);
    let rows = args.get(2).copied().unwrap_or(2048);
    let mut rng = StdRng::seed_from_u64(0);
    let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-0.05..0.05)).collect();
    let x: Vec<f32> = (0..rows * k)
        .map(|i| rng.gen_range(-1.0..1.0) * if i % k < 4 { 20.0 } else { 1.0 })
        .collect();

    let t = Instant::now();
    let mut acc = HessianAccumulator::new(k)?;
    acc.add_batch(&x, rows)?;
    let h = acc.finish()?;
    println!("N={n} K={k} rows={rows}");
    println!("hessian      {:>8.3} s", t.elapsed().as_secs_f64());
    let scheme = QuantScheme::int4_asym(128);
    let t = Instant::now();
    quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max())?;
    println!("rtn int4     {:>8.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    gptq_quantize(&w, n, k, &h, &scheme, &GptqOptions::default())?;
    println!("gptq int4    {:>8.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    gptq_quantize(&w, n, k, &h, &scheme, &GptqOptions::act_order())?;
    println!("gptq+act     {:>8.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    mr_gptq_quantize(
        &w,
        n,
        k,
        &h,
        &QuantScheme::mxfp4(),
        &MrGptqOptions::default(),
    )?;
    println!("mr-gptq mxfp4{:>8.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    awq_quantize(
        &w,
        n,
        k,
        &x[..512.min(rows) * k],
        512.min(rows),
        &scheme,
        &AwqOptions::default(),
    )?;
    println!(
        "awq int4     {:>8.3} s (512 rows)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
