//! Building blocks shared by the architectures. Each holds its weights
//! (loaded once, in the checkpoint's own format) and runs on `(m, d)`
//! row-major activations of `m` tokens.

mod attention;
mod ctx;
mod embedding;
pub mod hadamard;
mod head;
mod kv_cache;
mod linear;
mod mlp;
mod norm;

pub use attention::{Attention, AttentionConfig};
pub use ctx::{ActivationHook, ForwardCtx, LogitsWanted, SeqChunk, SeqSpan};
pub use embedding::Embedding;
pub use head::OutputHead;
pub use kv_cache::{KvCache, KvPool, KvType};
pub use linear::Linear;
pub use mlp::{Activation, Mlp};
pub use norm::RmsNorm;

/// Elementwise `x += y` (residual connections).
pub(crate) fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
