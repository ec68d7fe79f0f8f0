//! Model architectures over shared layers.
