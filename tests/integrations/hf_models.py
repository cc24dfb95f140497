"""Tiny random-weight transformers models built from configs (no hub access), shared by the
integration tests and docs/recipes.md.

Sizes are for Triton's interpreter: 2 layers, hidden 32, 4 query heads sharing 2 kv heads (GQA) of
8, vocabulary 64, sliding window 4 (shorter than the prompts, so windows and rolling caches matter).
`initializer_range=0.05` makes scores large enough that a window one key too wide, a missing
softcap, scale or padding moves the logits by 0.1 or more (the default 0.02 leaves them nearly
uniform) while greedy generation still varies from token to token.
"""
from __future__ import annotations

import copy

import torch

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
              initializer_range=0.05)
WINDOW = 4


def config(model: str):
    """The config of `model`: llama, mistral (sliding window on every layer), qwen2 (layer 0 full,
    layer 1 sliding), gemma2 (sliding then full, softcap, query_pre_attn_scalar != head_dim), gpt_oss
    (attention sinks, sliding then full, a mixture of 2 experts)."""
    import transformers as tf

    if model == "llama":
        return tf.LlamaConfig(**COMMON)
    if model == "mistral":
        return tf.MistralConfig(sliding_window=WINDOW, **COMMON)
    if model == "qwen2":
        return tf.Qwen2Config(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, **COMMON)
    if model == "gemma2":
        return tf.Gemma2Config(sliding_window=WINDOW, query_pre_attn_scalar=2, attn_logit_softcapping=1.0,
                               **COMMON)
    if model == "gpt_oss":
        return tf.GptOssConfig(sliding_window=WINDOW, num_local_experts=2, num_experts_per_tok=1,
                               layer_types=["sliding_attention", "full_attention"], **COMMON)
    raise ValueError(f"unknown model {model!r}")


def pair(model: str, seed: int = 0):
    """(eager, attngen): the same random weights under transformers' eager attention and attngen's.
    Each gets its own copy of the config (from_config writes the implementation into it)."""
    from transformers import AutoModelForCausalLM

    from attngen.integrations.transformers import register

    register()
    cfg = config(model)
    torch.manual_seed(seed)
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    with torch.no_grad():            # sinks of std 1, not the initializer's 0.05: each head's own
        for module in eager.modules():       # sink must reach its own row (a swapped head shows)
            sinks = getattr(module, "sinks", None)
            if isinstance(sinks, torch.nn.Parameter):
                sinks.normal_(0.0, 1.0)
    ours = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="attngen").eval()
    ours.load_state_dict(eager.state_dict())
    return eager, ours


def left_padded_batch(length: int = 11, pads=(3, 0), seed: int = 1):
    """input_ids (B, length) and a 2-D attention mask with `pads[b]` padding tokens on the left."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, COMMON["vocab_size"], (len(pads), length), generator=generator)
    mask = torch.ones(len(pads), length, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask
