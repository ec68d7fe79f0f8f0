//! Times `quantize_rtn` and the reference `dequantize` at benchmark sizes.
//! Run: `cargo run --release -p marlin-quant --example rtn_speed [rows cols]`.

use marlin_quant::{quantize_rtn, QuantScheme, RtnOptions};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = match args[..] {
        [r, c] => (r, c),
        _ => (4096, 4096),
    };
    // Deterministic pseudo-random weights (xorshift), roughly in [-0.1, 0.1].
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let weights: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let schemes = [
        ("int4_sym_g128", QuantScheme::int4_sym(128)),
        ("int4_asym_g128", QuantScheme::int4_asym(128)),
        ("mxfp4", QuantScheme::mxfp4()),
        ("nvfp4", QuantScheme::nvfp4()),
        ("int8_per_channel", QuantScheme::int8_per_channel()),
        ("fp8_e4m3_per_channel", QuantScheme::fp8_e4m3_per_channel()),
        ("int3_sym_g128", QuantScheme::int3_sym(128)),
    ];
    println!("{rows} x {cols}");
    for (name, scheme) in schemes {
        let t0 = Instant::now();
        let t = quantize_rtn(&weights, rows, cols, scheme, &RtnOptions::min_max())?;
        let quantize_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let deq = t.dequantize()?;
        let dequantize_s = t1.elapsed().as_secs_f64();
        let rms = (weights
            .iter()
            .zip(&deq)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / deq.len() as f64)
            .sqrt();
        println!(
            "{name:>22}: quantize {quantize_s:6.3} s, dequantize {dequantize_s:6.3} s, {:.3} bits/weight, rms err {rms:.2e}",
            scheme.bits_per_weight()
        );
    }
    Ok(())
}
