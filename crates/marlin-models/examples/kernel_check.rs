//! Compares the CPU ggml kernels with the reference dequantization on the
//! real tensors of a GGUF (one tensor per type and shape), m = 1 and 5.
//!
//! cargo run --release -p marlin-models --example kernel_check -- MODEL.gguf

use marlin_cpu::CpuWeight;
use marlin_io::gguf::GgufFile;
use std::collections::HashSet;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: kernel_check MODEL.gguf"))?;
    let file = GgufFile::open(&path)?;
    let mut seen = HashSet::new();
    for info in file.tensors() {
        if info.dims.len() != 2 || !seen.insert((info.type_id, info.dims.clone())) {
            continue;
        }
        let t = file.ggml_tensor(&info.name)?;
        let (n, k) = (t.rows, t.cols);
        let dense = t.dequantize()?; // (n, k)
        let w = CpuWeight::from_ggml(t)?;
        for m in [1usize, 5] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; m * n];
            w.matmul(&x, m, &mut y)?;
            let (mut max_err, mut max_ref) = (0f32, 0f32);
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| x[r * k + i] * dense[c * k + i]).sum();
                    max_err = max_err.max((y[r * n + c] - want).abs());
                    max_ref = max_ref.max(want.abs());
                }
            }
            println!(
                "{:28} {:6} {n:6}x{k:<6} m={m}: max |err| {max_err:.4} (max |y| {max_ref:.2})",
                info.name,
                info.type_name()
            );
        }
    }
    Ok(())
}
