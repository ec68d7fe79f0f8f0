//! Elementwise, normalisation, rotary and attention ops on f32 activations
//! (owned by the models work).
