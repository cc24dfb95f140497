"""Tiny transformers models on attngen against the same weights on transformers' eager attention:
left-padded batches, logits over the real tokens (fp32, <= 1e-4), every parameter's gradient
(<= 1e-3) and greedy generation (same tokens), under Triton's interpreter on CPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import left_padded_batch, pair  # noqa: E402

from attngen.integrations import transformers as adapter  # noqa: E402
from attngen.integrations.transformers import compiled_for  # noqa: E402

MODELS = [pytest.param("llama", id="llama-gqa"),
          pytest.param("mistral", id="mistral-sliding"),
          pytest.param("qwen2", id="qwen2-full-then-sliding"),
          pytest.param("gemma2", id="gemma2-softcap-sliding-then-full"),
          pytest.param("gpt_oss", id="gpt-oss-sinks-sliding-then-full")]
LOGITS_TOL, GRAD_TOL = 1e-4, 1e-3


def _loss(model, ids, mask, labels):
    """Mean cross-entropy over the real tokens only (padding rows are meaningless in both)."""
    logits = model(ids, attention_mask=mask).logits
    real = mask.bool()
    return torch.nn.functional.cross_entropy(logits[real], labels[real]), logits[real]


def _generate(model, ids, **kwargs):
    """Greedy tokens and the logits of every step (each step's last query is a real token)."""
    out = model.generate(ids, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.logits)


def _assert_same_generation(model, ours, eager, ids, **kwargs):
    expected, expected_logits = _generate(eager, ids, **kwargs)
    got, logits = _generate(ours, ids, **kwargs)
    new = expected[:, ids.shape[1]:]
    assert all(len(set(row.tolist())) > 1 for row in new), f"{model}: degenerate generation {new.tolist()}"
    assert torch.equal(got, expected), f"{model}: generated {got[:, ids.shape[1]:].tolist()}, eager {new.tolist()}"
    error = (logits - expected_logits).abs().max().item()
    assert error <= LOGITS_TOL, f"{model}: the logits of the generation steps differ by {error:.2e}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "attngen-cache"))


@pytest.mark.parametrize("model", MODELS)
def test_logits_and_gradients_match_eager(model):
    eager, ours = pair(model)
    ids, mask = left_padded_batch()
    labels = torch.randint(0, 64, ids.shape, generator=torch.Generator().manual_seed(2))
    loss_eager, logits_eager = _loss(eager, ids, mask, labels)
    loss_ours, logits_ours = _loss(ours, ids, mask, labels)
    error = (logits_ours - logits_eager).abs().max().item()
    assert error <= LOGITS_TOL, f"{model}: logits over real tokens differ by {error:.2e}"
    loss_eager.backward()
    loss_ours.backward()
    theirs = dict(eager.named_parameters())
    for name, param in ours.named_parameters():
        expected = theirs[name].grad
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"{model}: {name} has no gradient"
        error = (param.grad - expected).abs().max().item()
        assert error <= GRAD_TOL, f"{model}: d loss / d {name} differs by {error:.2e}"
    for name, param in ours.named_parameters():        # the attention weights (and sinks) did get gradients
        if "q_proj" in name or name.endswith(".sinks"):
            assert param.grad.abs().max() > 1e-3, f"{model}: {name}'s gradient is ~0: nothing was checked"


@pytest.mark.parametrize("model", MODELS)
def test_greedy_generation_matches_eager(model):
    """Prefill then cached decoding (one query against the cache, bottom-right; sliding layers roll
    their cache past the window) gives the same tokens."""
    eager, ours = pair(model)
    ids, mask = left_padded_batch()
    _assert_same_generation(model, ours, eager, ids, attention_mask=mask, max_new_tokens=6)


@pytest.mark.parametrize("padded", [pytest.param(True, id="left-padded"), pytest.param(False, id="no-mask")])
def test_static_cache_generation_matches_eager(padded):
    """A static cache hands every layer the whole preallocated cache and the query's position as a
    tensor: gemma2's full layer sees 15 slots with the query at 11 .. 14, not bottom-right. With a
    2-D mask the slots not yet written are padding; without one only the offset keeps them out."""
    eager, ours = pair("gemma2")
    ids, mask = left_padded_batch(pads=(3, 0) if padded else (0,))
    kwargs = dict(attention_mask=mask) if padded else {}
    _assert_same_generation("gemma2", ours, eager, ids, max_new_tokens=5, cache_implementation="static", **kwargs)


@pytest.mark.parametrize("model", ["gemma2", "gpt_oss"])
def test_specs_are_compiled_per_class_not_per_call(model, monkeypatch):
    """Other lengths and more decoding steps never make a new spec. gemma2 (and gpt-oss, whose specs
    also carry its sinks) left-padded needs at most its two layer kinds (sliding, full) with and
    without padding (a sliding cache can roll past the padding)."""
    _, ours = pair(model)
    compiled_for.cache_clear()
    sinks = set()                      # the spec's sink flag of every layer call

    def recording(*args):
        sinks.add(args[-1])
        return compiled_for(*args)
    monkeypatch.setattr(adapter, "compiled_for", recording)

    def generate(lengths):
        for length in lengths:
            ids, mask = left_padded_batch(length)
            ours.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        return compiled_for.cache_info()

    first = generate((7, 11))
    assert 2 <= first.currsize <= 4, first
    again = generate((9, 13))
    assert again.currsize == first.currsize, (first, again)
    assert again.hits - first.hits == 2 * 2 * 3, (first, again)   # 2 prompts x 2 layers x 3 steps
    assert sinks == {model == "gpt_oss"}, f"{model}: sink flags of the layer calls {sinks}"
