"""The transformers adapter's reading of masks and its refusals (no kernel runs here unless a
model's forward gets as far as attention)."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import COMMON, config, left_padded_batch  # noqa: E402
import transformers  # noqa: E402
from transformers import AttentionInterface, AutoModelForCausalLM  # noqa: E402
from transformers import masking_utils as mu  # noqa: E402

from attngen.integrations.transformers import (FALLBACK, LayerMask, Pattern,  # noqa: E402
                                               UnsupportedAttention, attention_forward, attngen_mask,
                                               recognise, register)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "attngen-cache"))


@pytest.mark.parametrize("factory, size, expected", [
    pytest.param("causal_mask_function", None, Pattern(True, None, 0), id="causal"),
    # HF keeps q - W < k <= q: W keys including the query's own, band(left=W - 1)
    pytest.param("sliding_window_causal_mask_function", 4, Pattern(True, 3, 0), id="sliding-4"),
    pytest.param("sliding_window_causal_mask_function", 1, Pattern(True, 0, 0), id="sliding-1"),
    pytest.param("bidirectional_mask_function", None, Pattern(False, None, None), id="bidirectional"),
    pytest.param("sliding_window_bidirectional_mask_function", 4, Pattern(False, 4, 4),
                 id="bidirectional-sliding-4"),
])
def test_recognises_transformers_own_masks(factory, size, expected):
    function = getattr(mu, factory, None)
    if function is None:
        pytest.skip(f"transformers {transformers.__version__} has no {factory}")
    assert recognise(function if size is None else function(size), size) == expected


@pytest.mark.parametrize("function", [
    pytest.param(mu.and_masks(mu.causal_mask_function, lambda b, h, q, k: k != 2), id="and-overlay"),
    pytest.param(mu.or_masks(mu.causal_mask_function, lambda b, h, q, k: k == 0), id="or-overlay"),
    pytest.param(mu.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long)), id="chunked"),
    pytest.param(mu.sliding_window_causal_mask_function(5), id="window-not-local-size"),
])
def test_other_mask_functions_are_not_recognised(function):
    assert recognise(function, 4) is None


def test_mask_offsets_and_padding():
    """A sliding layer's cache keeps W - 1 keys: keys start at position 4, the query is at 7."""
    attention_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    mask = attngen_mask(batch_size=2, q_length=1, kv_length=4, q_offset=7, kv_offset=4,
                        mask_function=mu.sliding_window_causal_mask_function(4),
                        attention_mask=attention_mask.bool(), local_size=4)
    assert (mask.pattern, mask.q_offset, mask.q_length, mask.kv_length) == (Pattern(True, 3, 0), 3, 1, 4)
    assert mask.seg_k is None                 # the window holds no padding: the cheaper spec
    mask = attngen_mask(batch_size=2, q_length=8, kv_length=8, mask_function=mu.causal_mask_function,
                        attention_mask=attention_mask.bool())
    assert mask.seg_k.tolist() == attention_mask.tolist() and mask.seg_k.dtype == torch.int32


def test_register_adds_both_interfaces():
    register()
    assert AttentionInterface._global_mapping["attngen"] is attention_forward
    assert mu.AttentionMaskInterface._global_mapping["attngen"] is attngen_mask


def _model(model="llama", implementation="attngen", **changes):
    register()
    cfg = copy.deepcopy(config(model))
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=implementation).eval()


def _refused(match, model, *args, **kwargs):
    with pytest.raises(UnsupportedAttention, match=match) as info:
        model(*args, **kwargs)
    assert FALLBACK in str(info.value)
    return str(info.value)


def test_attention_interface_alone_is_refused_not_silently_unpadded():
    """The trap: without a mask-interface entry transformers builds no mask and padding vanishes."""
    AttentionInterface.register("attngen_attention_only", attention_forward)
    model = _model(implementation="attngen_attention_only")
    ids, mask = left_padded_batch()
    message = _refused(r"LlamaAttention \(layer 0\): no attention mask came", model, ids, attention_mask=mask)
    assert "register()" in message


def test_dropout_is_refused_naming_the_layer():
    model = _model(attention_dropout=0.1).train()
    ids, mask = left_padded_batch()
    _refused(r"LlamaAttention \(layer 0\): attention dropout 0.1", model, ids, attention_mask=mask)


def test_four_dimensional_mask_is_refused():
    model = _model()
    ids, _ = left_padded_batch(pads=(0,))
    n = ids.shape[1]
    custom = torch.ones(1, 1, n, n, dtype=torch.bool).tril()
    _refused(r"LlamaAttention \(layer 0\): an arbitrary 4-D attention mask", model, ids, attention_mask=custom)


def test_packed_sequences_are_refused():
    """position_ids that restart (packed documents, no 2-D mask, no cache: training) make
    transformers add a packed-sequence mask function attngen cannot see through."""
    model = _model()
    ids, _ = left_padded_batch(length=8, pads=(0,))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    _refused(r"LlamaAttention \(layer 0\): its mask function", model, ids, position_ids=positions,
             use_cache=False)


def test_attention_sinks_are_refused():
    """gpt-oss passes its learned sinks as s_aux: refused until attngen's kernels take sinks."""
    import transformers as tf

    cfg = tf.GptOssConfig(**{**COMMON, "num_local_experts": 2, "num_experts_per_tok": 1,
                             "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]})
    register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attngen").eval()
    ids, mask = left_padded_batch()
    _refused(r"GptOssAttention \(layer 0\): attention sinks \(s_aux=", model, ids, attention_mask=mask)


def test_a_window_that_disagrees_with_the_mask_is_refused():
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    full = LayerMask(Pattern(True, None, 0), q_offset=0, q_length=5, kv_length=5, seg_k=None)
    module = torch.nn.Module()
    module.layer_idx = 3
    with pytest.raises(UnsupportedAttention, match=r"Module \(layer 3\): the layer says sliding_window=4"):
        attention_forward(module, q, k, v, full, sliding_window=4)
    with pytest.raises(UnsupportedAttention, match=r"is_causal=False"):
        attention_forward(module, q, k, v, full, is_causal=False)
