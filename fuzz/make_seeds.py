#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/seeds/TARGET.

Seeds give libFuzzer valid inputs to mutate from (a fuzzer rarely invents a
whole tokenizer.json or a safetensors file with a matching config.json).
Crash regression inputs are added to fuzz/seeds/TARGET by hand (named
`crash-*`) and are not touched here. Run from anywhere:

    python3 fuzz/make_seeds.py
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
# fuzz_targets/common/mod.rs: SECTION_SEPARATOR.
SEP = b"\xff\xfe\xfd\xfc"


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def dumps(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- templates
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# Python string methods, namespaces, macros, filters: what real templates use.
FEATURES = (
    "{%- set ns = namespace(n=0, sys='') -%}"
    "{%- macro show(m) -%}[{{ m.role | upper }}:{{ m.content.strip().replace('a', 'b') }}]"
    "{%- endmacro -%}"
    "{%- for m in messages -%}{%- set ns.n = ns.n + 1 -%}"
    "{%- if m.role.startswith('sys') %}{% set ns.sys = m.content.split(' ') | join('_') %}"
    "{%- else %}{{ show(m) }}{{ m.content | length }}{{ m | tojson }}{% endif -%}"
    "{%- endfor -%}{{ ns.n }}{{ ns.sys.title() }}{{ messages | map(attribute='role') | list }}"
    "{{ '%s-%d' % ('x', 3) }}{{ range(3) | list }}{{ messages[-1].content[:5] }}"
)
# Hostile: unbounded loops, recursion, repetition; rendering must stop with
# an error (fuel, recursion limit, size limits) instead of running away.
# Not here: a loop that runs until the fuel runs out (10M instructions take
# about 1.5 s optimized, a minute under ASan: too slow for the CI budget;
# crates/marlin-io/tests/parser_hardening.rs times it), and a string or list
# doubled in a loop (`s.v ~ s.v` 40 times), which minijinja bounds neither
# in memory nor in time (one instruction per doubling); see docs/FUZZING.md.
HOSTILE = {
    "recursive-macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive-loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "string-repeat": "{{ 'ab' * 100000000 }}",
    "raise": "{{ raise_exception('no system role') }}",
    "syntax-error": "{% for m in messages %}{{ m.content }",
    "include": "{% include 'chat_template' %}",
    "undefined": "{{ messages[99].content.foo.bar() }}",
}
CONVERSATION = "be brief\n\nhello \u00e9\u00e8 \U0001F600\n\nhi there\n\nwhat is 2+2?"
for name, tpl in [("chatml", CHATML), ("gemma3", GEMMA), ("llama3", LLAMA3), ("features", FEATURES)]:
    write("chat_template", name, tpl.encode() + SEP + CONVERSATION.encode())
for name, tpl in HOSTILE.items():
    write("chat_template", "hostile-" + name, tpl.encode() + SEP + CONVERSATION.encode())


# ---------------------------------------------------------------- tokenizer.json
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def added(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": special}


def byte_level_bpe():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b, c in sorted(bytes_to_unicode().items()):
        vocab[c] = len(vocab)
    merges = [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), ("\u0120", "w"),
              ("o", "r"), ("\u0120w", "or"), ("l", "d"), ("\u0120wor", "ld")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, t) for i, t in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }


def sentencepiece_bpe():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in ["\u2581", "h", "e", "l", "o", "w", "r", "d", "\u2581h", "el", "\u2581hel", "lo",
              "\u2581hello", "\u2581w", "or", "\u2581wor", "ld", "\u2581world"]:
        vocab.setdefault(t, len(vocab))
    merges = [["\u2581", "h"], ["e", "l"], ["\u2581h", "el"], ["l", "o"], ["\u2581hel", "lo"],
              ["\u2581", "w"], ["o", "r"], ["\u2581w", "or"], ["l", "d"], ["\u2581wor", "ld"]]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def wordpiece():
    vocab = {t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "##ing", "play", "!", "1", "2"])}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, t) for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def unigram():
    pieces = [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], ["\u2581", -2.0], ["\u2581hello", -3.0],
              ["\u2581world", -3.5], ["h", -5.0], ["e", -5.0], ["l", -5.0], ["o", -5.0],
              ["w", -5.0], ["r", -5.0], ["d", -5.0]]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"),
                         added(13, "<think>", special=False)],
        "normalizer": {"type": "NFKC"},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                          "split": True},
        "post_processor": None,
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                    "split": True},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": pieces, "byte_fallback": False},
    }


CHATML_CONFIG = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
                 "add_bos_token": False, "chat_template": CHATML}
SP_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
             "chat_template": [{"name": "default", "template": LLAMA3}, {"name": "rag", "template": "x"}]}
GENERATION = {"bos_token_id": 1, "eos_token_id": [2, 0]}
for name, tok, config, generation in [
    ("byte-level-bpe", byte_level_bpe(), CHATML_CONFIG, {"eos_token_id": 2}),
    ("sentencepiece-bpe", sentencepiece_bpe(), SP_CONFIG, GENERATION),
    ("wordpiece", wordpiece(), {"bos_token": "[CLS]", "eos_token": "[SEP]"}, None),
    ("unigram", unigram(), {"eos_token": "</s>", "chat_template": GEMMA}, GENERATION),
]:
    parts = [dumps(tok).encode(), dumps(config).encode() if config else b"",
             dumps(generation).encode() if generation else b""]
    write("tokenizer_json", name, SEP.join(parts))


# ---------------------------------------------------------------- checkpoint dirs
def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, bytes)."""
    header = {}
    offset = 0
    blobs = []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    h = dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def i32(values):
    return struct.pack(f"<{len(values)}i", *values)


def checkpoint_seed(name, config, st_bytes):
    write("checkpoint_import", name, dumps(config).encode() + SEP + st_bytes)


interop = os.path.join(ROOT, "crates", "marlin-io", "tests", "fixtures", "interop")
for case in sorted(os.listdir(interop)):
    with open(os.path.join(interop, case, "config.json"), "rb") as f:
        config = f.read()
    with open(os.path.join(interop, case, "model.safetensors"), "rb") as f:
        weights = f.read()
    write("checkpoint_import", "interop-" + case, config + SEP + weights)


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def weights(shape, salt, dtype="F32"):
    n = 1
    for d in shape:
        n *= d
    values = [((i * 7 + salt * 13) % 17 - 8) / 32.0 for i in range(n)]
    return (dtype, list(shape), bf16(values) if dtype == "BF16" else f32(values))


def tiny_model(arch, dtype="F32", tied=False, layers=1):
    """A model of the smallest shapes the loaders accept."""
    vocab, d, heads, kv, hd, ffn = 16, 8, 2, 1, 4, 16
    config = {"model_type": arch, "vocab_size": vocab, "hidden_size": d,
              "num_hidden_layers": layers, "intermediate_size": ffn,
              "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "rope_theta": 10000.0,
              "tie_word_embeddings": tied}
    t = {"model.embed_tokens.weight": weights([vocab, d], 1, dtype),
         "model.norm.weight": weights([d], 2)}
    for il in range(layers):
        L = f"model.layers.{il}."
        t.update({
            L + "input_layernorm.weight": weights([d], 3 + il),
            L + "post_attention_layernorm.weight": weights([d], 4 + il),
            L + "self_attn.q_proj.weight": weights([heads * hd, d], 5 + il, dtype),
            L + "self_attn.k_proj.weight": weights([kv * hd, d], 6 + il, dtype),
            L + "self_attn.v_proj.weight": weights([kv * hd, d], 7 + il, dtype),
            L + "self_attn.o_proj.weight": weights([d, heads * hd], 8 + il, dtype),
            L + "mlp.gate_proj.weight": weights([ffn, d], 9 + il, dtype),
            L + "mlp.up_proj.weight": weights([ffn, d], 10 + il, dtype),
            L + "mlp.down_proj.weight": weights([d, ffn], 11 + il, dtype)})
        if arch in ("qwen3", "gemma3_text"):
            t[L + "self_attn.q_norm.weight"] = weights([hd], 13 + il)
            t[L + "self_attn.k_norm.weight"] = weights([hd], 14 + il)
        if arch == "gemma3_text":
            t[L + "pre_feedforward_layernorm.weight"] = weights([d], 15 + il)
            t[L + "post_feedforward_layernorm.weight"] = weights([d], 16 + il)
    if not tied:
        t["lm_head.weight"] = weights([vocab, d], 12, dtype)
    if arch == "gemma3_text":
        # Layer 0 local (sliding window), layer 1 global.
        config.update({"sliding_window": 4, "sliding_window_pattern": 2,
                       "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": hd,
                       "final_logit_softcapping": 30.0})
    if arch == "llama":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    return config, t


for arch, dtype, tied, layers in [("llama", "F32", True, 1), ("qwen3", "BF16", False, 1),
                                  ("gemma3_text", "F32", True, 2)]:
    config, t = tiny_model(arch, dtype, tied, layers)
    checkpoint_seed(f"tiny-{arch}", config, safetensors(t))

# A tiny llama whose up_proj is a marlin checkpoint linear: INT4 asymmetric,
# group 8, N=16, K=8, act-order, with an online Hadamard rotation.
rows, cols, group = 16, 8, 8
scheme = {"element": "int", "bits": 4, "signed": False, "granularity": "group", "group_size": group,
          "scale_dtype": "f16", "zero_point": "int", "global_scale": False, "rows": rows, "cols": cols}
rotation = {"type": "block_hadamard", "block_size": 8, "k": cols, "padded_k": cols}
base = "model.layers.0.mlp.up_proj"
config, tensors = tiny_model("llama", "F32", True)
del tensors[base + ".weight"]
tensors.update({
    f"{base}.qcodes": ("U8", [rows, cols // 2], bytes((i * 37) % 256 for i in range(rows * cols // 2))),
    f"{base}.scales": ("F32", [rows, cols // group], f32([0.5, 0.25] * (rows // 2))),
    f"{base}.zeros": ("F32", [rows, cols // group], f32([8.0, 7.0] * (rows // 2))),
    f"{base}.g_idx": ("I32", [cols], i32([0] * cols)),
})
metadata = {f"marlin.scheme.{base}": dumps(scheme), f"marlin.rotation.{base}": dumps(rotation)}
config["quantization_config"] = {
    "quant_method": "marlin", "format": "int4", "method": "gptq", "group_size": group,
    "act_order": True, "rotation": None, "preset": "default", "overrides": [],
    "modules_not_quantized": [], "calibration": None}
checkpoint_seed("tiny-llama-marlin-int4", config, safetensors(tensors, metadata))


# ---------------------------------------------------------------- server requests
REQUESTS = [
    {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"}],
     "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
     "seed": -3, "stop": ["\n\n", "END"], "n": 2, "presence_penalty": 0.5,
     "frequency_penalty": -0.5, "repetition_penalty": 1.1, "logprobs": True, "top_logprobs": 3,
     "stream": True, "stream_options": {"include_usage": True},
     "response_format": {"type": "json_object"}, "user": "u"},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]},
                                {"role": "assistant", "content": None}],
     "max_completion_tokens": 3.0, "top_k": -1},
    {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "logprobs": 2, "stop": "x",
     "temperature": 0, "echo": False},
    {"model": "m", "prompt": [1, 2, 3, 4294967295], "seed": 18446744073709551615},
    {"model": "m", "prompt": ["one"], "n": 16, "top_p": 1e-9},
]
for i, body in enumerate(REQUESTS):
    write("server_request", f"request-{i}.json", dumps(body))
