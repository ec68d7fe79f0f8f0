//! Tokenizers (GPT-2 BPE, SentencePiece, tokenizer.json) and chat templates.
