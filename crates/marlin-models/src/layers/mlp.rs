//! Gated feed-forward: `down(act(gate(x)) · up(x))`.

use super::{ForwardCtx, Linear};
use crate::error::Result;
use crate::source::WeightSource;
use marlin_cpu::ops;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen).
    Silu,
    /// GeGLU with tanh-approximated GELU (Gemma).
    GeluTanh,
}

pub struct Mlp {
    /// (ffn, d)
    gate: Linear,
    /// (ffn, d)
    up: Linear,
    /// (d, ffn)
    down: Linear,
    act: Activation,
}

impl Mlp {
    /// Loads `blk.{layer}.ffn_{gate,up,down}`.
    pub fn load(
        src: &dyn WeightSource,
        layer: usize,
        d: usize,
        ffn: usize,
        act: Activation,
    ) -> Result<Self> {
        let p = format!("blk.{layer}");
        Ok(Self {
            gate: Linear::load_shaped(src, &format!("{p}.ffn_gate.weight"), ffn, d)?,
            up: Linear::load_shaped(src, &format!("{p}.ffn_up.weight"), ffn, d)?,
            down: Linear::load_shaped(src, &format!("{p}.ffn_down.weight"), d, ffn)?,
            act,
        })
    }

    /// `x` (m, d) -> new (m, d).
    pub fn forward(&self, ctx: &mut ForwardCtx, layer: usize, x: &[f32]) -> Result<Vec<f32>> {
        let m = ctx.n_tokens;
        let mut gate = self.gate.forward(x, m)?; // (m, ffn)
        let up = self.up.forward(x, m)?; // (m, ffn)
        match self.act {
            Activation::Silu => ops::silu_mul(&mut gate, &up)?,
            Activation::GeluTanh => ops::gelu_tanh_mul(&mut gate, &up)?,
        }
        // Not held while the down projection allocates its input and output buffers.
        drop(up);
        ctx.dump("ffn_act", Some(layer), m, &gate);
        let out = self.down.forward(&gate, m)?; // (m, d)
        ctx.dump("ffn_out", Some(layer), m, &out);
        Ok(out)
    }
}
