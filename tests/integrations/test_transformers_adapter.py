"""The transformers adapter's reading of masks and its refusals (no kernel runs here unless a
model's forward gets as far as attention)."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import config, left_padded_batch  # noqa: E402
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


def _eager_with_sinks(q, k, v, sink, scale):
    """transformers' gpt-oss eager attention, causal: the sink is one more logit per row, dropped
    after the softmax."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scores = (q @ k.transpose(2, 3)) * scale
    n = scores.shape[-1]
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    sinks = sink.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[2], 1)
    probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("name", ["s_aux", "sinks"])
def test_attention_sinks_map_to_a_sink_spec(name):
    """gpt-oss passes its learned sinks as s_aux (a parameter in the model's dtype, here bfloat16):
    the layer runs a `sink: true` spec, compiled once per class, with the sinks as float32 and the
    parameter gets its gradient."""
    from attngen.integrations.transformers import compiled_for

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 6, 8, generator=g) for _ in range(2))
    sinks = torch.nn.Parameter((torch.randn(4, generator=g) * 2).to(torch.bfloat16))
    causal = LayerMask(Pattern(True, None, 0), q_offset=0, q_length=6, kv_length=6, seg_k=None)
    module = torch.nn.Module()
    module.layer_idx = 0
    compiled_for.cache_clear()
    for _ in range(2):
        out, weights = attention_forward(module, q, k, v, causal, scaling=0.5, **{name: sinks})
    info = compiled_for.cache_info()
    assert (info.currsize, info.hits) == (1, 1), info
    spec = compiled_for(Pattern(True, None, 0), 4, 2, 8, 8, 0.5, None, False, True).spec
    assert spec.sink and "sink" in spec.name and weights is None
    reference_sinks = sinks.detach().float().requires_grad_()
    expected = _eager_with_sinks(q.detach(), k, v, reference_sinks, 0.5)
    assert (out - expected).abs().max().item() <= 1e-5
    dout = torch.randn(out.shape, generator=g)
    out.backward(dout)
    expected.backward(dout)
    assert sinks.grad is not None and sinks.grad.dtype == torch.bfloat16
    assert reference_sinks.grad.abs().max() > 1e-2           # the check below means something
    assert (sinks.grad.float() - reference_sinks.grad).abs().max() <= 1e-2 * reference_sinks.grad.abs().max()


def causal_layer_call(layer_idx: int):
    """(module, q, k, v, mask) of a causal GQA layer call (4 query heads, 2 kv heads, 5 tokens)."""
    module = torch.nn.Module()
    module.layer_idx = layer_idx
    k = v = torch.randn(1, 2, 5, 8)
    mask = LayerMask(Pattern(True, None, 0), q_offset=0, q_length=5, kv_length=5, seg_k=None)
    return module, torch.randn(1, 4, 5, 8), k, v, mask


def test_sinks_of_another_shape_are_refused():
    module, q, k, v, causal = causal_layer_call(1)
    with pytest.raises(UnsupportedAttention, match=r"Module \(layer 1\): attention sinks s_aux of shape "
                                                   r"\(2,\); .* shape \(4,\)") as info:
        attention_forward(module, q, k, v, causal, s_aux=torch.zeros(2))
    assert FALLBACK in str(info.value)


def test_a_window_that_disagrees_with_the_mask_is_refused():
    module, q, k, v, full = causal_layer_call(3)
    with pytest.raises(UnsupportedAttention, match=r"Module \(layer 3\): the layer says sliding_window=4"):
        attention_forward(module, q, k, v, full, sliding_window=4)
    with pytest.raises(UnsupportedAttention, match=r"is_causal=False"):
        attention_forward(module, q, k, v, full, is_causal=False)
