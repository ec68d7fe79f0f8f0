//! `marlin`: run, chat, inspect, eval and bench quantized LLMs.

fn main() -> anyhow::Result<()> {
    Ok(())
}
