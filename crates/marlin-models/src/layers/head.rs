//! Final norm, LM head and optional logit soft-capping.

use super::{ForwardCtx, Linear, LogitsWanted, RmsNorm};
use crate::error::Result;

pub struct OutputHead {
    pub norm: RmsNorm,
    /// (vocab, d); the token embedding when the checkpoint ties them.
    pub lm_head: Linear,
    pub softcap: Option<f32>,
}

impl OutputHead {
    /// `x` (m, d) -> logits (vocab) of the last row, or (m, vocab) of all.
    pub fn forward(&self, ctx: &mut ForwardCtx, x: &[f32]) -> Result<Vec<f32>> {
        let d = self.norm.dim();
        let rows = match ctx.logits {
            // Only the last row needs the (expensive) LM head.
            LogitsWanted::Last => &x[x.len() - d..],
            LogitsWanted::All => x,
        };
        let n = rows.len() / d;
        let normed = self.norm.forward(rows)?; // (n, d)
        ctx.dump("result_norm", None, n, &normed);
        let mut logits = self.lm_head.forward(&normed, n)?; // (n, vocab)
        if let Some(cap) = self.softcap {
            marlin_cpu::ops::soft_cap(&mut logits, cap);
        }
        ctx.dump("result_output", None, n, &logits);
        Ok(logits)
    }
}
