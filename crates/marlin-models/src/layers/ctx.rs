//! Per-call state of a forward pass.

/// Receives named intermediate activations (llama.cpp's `cb(cur, name, il)`)
/// so that they can be dumped and diffed against a reference layer by layer.
pub trait ActivationHook {
    /// `data` is (rows, data.len() / rows) row-major; `layer` is `None` for
    /// tensors outside the layer stack ("inp_embd", "result_norm", ...).
    fn activation(&mut self, name: &str, layer: Option<usize>, rows: usize, data: &[f32]);
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogitsWanted {
    /// (vocab): the last position only (generation).
    #[default]
    Last,
    /// (m, vocab): every new position (perplexity, reference checks).
    All,
}

/// What one forward call processes: `n_tokens` new tokens at positions
/// `pos0..pos0 + n_tokens` of one sequence.
pub struct ForwardCtx<'h> {
    pub pos0: usize,
    pub n_tokens: usize,
    /// (n_tokens): absolute position of each new token.
    pub positions: Vec<usize>,
    pub logits: LogitsWanted,
    hook: Option<&'h mut dyn ActivationHook>,
}

impl<'h> ForwardCtx<'h> {
    pub fn new(
        pos0: usize,
        n_tokens: usize,
        logits: LogitsWanted,
        hook: Option<&'h mut dyn ActivationHook>,
    ) -> Self {
        Self {
            pos0,
            n_tokens,
            positions: (pos0..pos0 + n_tokens).collect(),
            logits,
            hook,
        }
    }

    /// Reports an activation of `rows` rows to the hook, if any.
    pub fn dump(&mut self, name: &str, layer: Option<usize>, rows: usize, data: &[f32]) {
        if let Some(h) = self.hook.as_deref_mut() {
            h.activation(name, layer, rows, data);
        }
    }
}
