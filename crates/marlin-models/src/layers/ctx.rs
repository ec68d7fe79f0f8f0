//! Per-call state of a forward pass: the batch layout (which rows belong to
//! which sequence, at which positions, over which block table) and the
//! activation hook.

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

/// One sequence's share of a batched forward call: `tokens` at positions
/// `pos0..pos0 + tokens.len()`, whose keys and values go to (and whose
/// attention reads positions `0..pos0 + tokens.len()` from) the pool blocks
/// named by `block_table`.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Block `i` holds positions `i*block_size..(i+1)*block_size`; must
    /// cover `pos0 + tokens.len()` positions.
    pub block_table: &'a [u32],
    pub pos0: usize,
    /// `None`: no logits (a prompt chunk that is not the last one).
    pub logits: Option<LogitsWanted>,
}

/// Rows `row0..row0 + len` of the batch: one sequence's new tokens.
#[derive(Clone, Debug)]
pub struct SeqSpan {
    pub row0: usize,
    pub len: usize,
    /// Position of the first new token.
    pub pos0: usize,
    /// The sequence's block table (`[0]` for a contiguous [`super::KvCache`]).
    pub block_table: Vec<u32>,
    pub logits: Option<LogitsWanted>,
}

/// What one forward call processes: `n_tokens` new tokens of one or more
/// sequences, stacked as rows.
pub struct ForwardCtx<'h> {
    /// Position of the first new token of the first sequence.
    pub pos0: usize,
    /// Rows of the batch (all sequences).
    pub n_tokens: usize,
    /// (n_tokens): absolute position of each row in its sequence.
    pub positions: Vec<usize>,
    pub logits: LogitsWanted,
    /// The sequences, in row order.
    pub seqs: Vec<SeqSpan>,
    hook: Option<&'h mut dyn ActivationHook>,
}

impl<'h> ForwardCtx<'h> {
    /// One sequence over a contiguous cache.
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
            seqs: vec![SeqSpan {
                row0: 0,
                len: n_tokens,
                pos0,
                block_table: vec![0],
                logits: Some(logits),
            }],
            hook,
        }
    }

    /// Several sequences, stacked in the order of `chunks`.
    pub fn batch(chunks: &[SeqChunk], hook: Option<&'h mut dyn ActivationHook>) -> Self {
        let mut seqs = Vec::with_capacity(chunks.len());
        let mut positions = Vec::new();
        for c in chunks {
            seqs.push(SeqSpan {
                row0: positions.len(),
                len: c.tokens.len(),
                pos0: c.pos0,
                block_table: c.block_table.to_vec(),
                logits: c.logits,
            });
            positions.extend(c.pos0..c.pos0 + c.tokens.len());
        }
        Self {
            pos0: chunks.first().map_or(0, |c| c.pos0),
            n_tokens: positions.len(),
            positions,
            logits: LogitsWanted::All,
            seqs,
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
