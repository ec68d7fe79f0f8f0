//! safetensors files and Hugging Face model directories.
