"""Normalisation: equal meanings give equal specs and hashes, and no rewrite changes a meaning."""
from __future__ import annotations

import pytest
import torch

from attngen import Spec, SpecError, load_spec
from attngen.spec import (All_, Any_, Band, Blocks, Causal, Columns, GlobalTokens,
                          Not_, Random, Segments, Stride)
from attngen.spec.normalize import normalize


def spec_of(mask, *, causal=False, name="variant") -> Spec:
    data = {"name": name, "heads": {"query": 4, "kv": 2}, "head_dim": 16, "causal": causal}
    if mask is not None:
        data["mask"] = mask
    return load_spec(data)


SAME_MEANING = [
    pytest.param({"band": 3}, {"band": {"left": 3, "right": 3}}, id="band-width-is-both-sides"),
    pytest.param(({"band": {"left": 5}}, True), {"band": {"left": 5, "right": 0}},
                 id="causal-and-left-band-is-a-band"),
    pytest.param({"all": [{"causal": True}, {"band": {"left": 5}}]}, {"band": {"left": 5, "right": 0}},
                 id="causal-predicate-and-left-band"),
    pytest.param({"all": [{"band": {"left": 2, "right": 9}}, {"band": {"left": 7, "right": 4}}]},
                 {"band": {"left": 2, "right": 4}}, id="all-of-bands-is-the-tighter-band"),
    pytest.param({"any": [{"band": {"left": 2, "right": 9}}, {"band": {"left": 7, "right": 4}}]},
                 {"band": {"left": 7, "right": 9}}, id="any-of-bands-is-the-wider-band"),
    pytest.param({"any": [{"band": {"left": 2}}, {"band": {"right": 1}}]}, None,
                 id="left-unbounded-or-right-unbounded-is-everything"),
    pytest.param({"any": [{"any": [{"stride": {"every": 3}}, {"blocks": {"size": 4}}]},
                          {"any": [{"global": {"first": 1}}]}]},
                 {"any": [{"global": {"first": 1}}, {"blocks": {"size": 4}}, {"stride": {"every": 3}}]},
                 id="nested-any-flattens"),
    pytest.param({"all": [{"all": [{"stride": {"every": 3}}, {"segments": True}]}, {"blocks": {"size": 8}}]},
                 {"all": [{"segments": True}, {"blocks": {"size": 8}}, {"stride": {"every": 3}}]},
                 id="nested-all-flattens"),
    pytest.param({"any": [{"stride": {"every": 3}}, {"columns": {"every": 8, "width": 2}}]},
                 {"any": [{"columns": {"every": 8, "width": 2}}, {"stride": {"every": 3}}]},
                 id="order-of-parts-is-irrelevant"),
    pytest.param({"any": [{"stride": {"every": 3}}, {"stride": {"every": 3}}, {"blocks": {"size": 2}}]},
                 {"any": [{"blocks": {"size": 2}}, {"stride": {"every": 3}}]}, id="duplicate-parts"),
    pytest.param({"not": {"not": {"blocks": {"size": 4}}}}, {"blocks": {"size": 4}}, id="double-negation"),
    pytest.param({"stride": {"every": 1}}, None, id="stride-1-is-everything"),
    pytest.param({"all": [{"stride": {"every": 1}}, {"band": 2}]}, {"band": 2}, id="stride-1-vanishes-in-all"),
    pytest.param({"columns": {"every": 4, "width": 4}}, None, id="columns-full-width-is-everything"),
    pytest.param({"blocks": {"size": 1}}, {"band": 0}, id="blocks-1-is-the-diagonal"),
    pytest.param({"all": [{"blocks": {"size": 4}}, {"blocks": {"size": 12}}]}, {"blocks": {"size": 4}},
                 id="nested-blocks-keep-the-smaller"),
    pytest.param({"all": [{"stride": {"every": 4}}, {"stride": {"every": 6}}]}, {"stride": {"every": 12}},
                 id="all-of-strides-is-the-lcm"),
    pytest.param({"any": [{"stride": {"every": 4}}, {"stride": {"every": 8}}]}, {"stride": {"every": 4}},
                 id="any-of-dividing-strides-is-the-finer"),
    pytest.param({"any": [{"not": {"stride": {"every": 1}}}, {"band": 1}]}, {"band": 1},
                 id="nothing-vanishes-in-any"),
    pytest.param({"any": [{"blocks": {"size": 8}}, {"not": {"blocks": {"size": 8}}}]}, None,
                 id="a-mask-or-its-complement-is-everything"),
    pytest.param({"any": [{"band": 1}, {"all": [{"stride": {"every": 3}}, {"not": {"stride": {"every": 3}}}]}]},
                 {"band": 1}, id="a-mask-and-its-complement-vanishes-in-any"),
    pytest.param({"global": {"tokens": [9, 2, 5]}}, {"global": {"tokens": [2, 5, 9]}},
                 id="global-tokens-are-a-set"),
    pytest.param({"random": {"per_row": 2, "block": 4}}, {"random": {"per_row": 2, "block": 4, "seed": 0}},
                 id="random-seed-defaults-to-0"),
]


def _spec(side) -> Spec:
    mask, causal = side if isinstance(side, tuple) else (side, False)
    return spec_of(mask, causal=causal)


@pytest.mark.parametrize("a, b", SAME_MEANING)
def test_equal_meanings_give_equal_specs_and_hashes(a, b):
    sa, sb = _spec(a), _spec(b)
    assert sa == sb
    assert hash(sa) == hash(sb)
    assert sa.content_hash() == sb.content_hash()
    assert sa.effective_mask == sb.effective_mask
    assert sa.to_dict() == sb.to_dict()


def test_no_mask_and_everything_are_the_same():
    assert spec_of(None) == spec_of({"stride": {"every": 1}})
    assert "mask" not in spec_of({"stride": {"every": 1}}).to_dict()


def test_different_names_same_meaning_are_equal():
    a = spec_of({"band": 3}, name="first")
    b = spec_of({"band": {"left": 3, "right": 3}}, name="second")
    assert a == b and hash(a) == hash(b) and a.content_hash() == b.content_hash()
    assert a.to_dict()["name"] == "first"     # the name labels the spec; it is kept


def test_default_scale_equals_explicit_scale():
    assert spec_of(None) == load_spec({"name": "variant", "heads": {"query": 4, "kv": 2},
                                       "head_dim": 16, "scale": 0.25})


@pytest.mark.parametrize("a, b", [
    pytest.param({"band": 3}, {"band": 4}, id="band-widths"),
    pytest.param({"band": {"left": 3}}, {"band": {"right": 3}}, id="band-sides"),
    pytest.param({"stride": {"every": 4}}, {"stride": {"every": 8}}, id="stride"),
    pytest.param({"any": [{"stride": {"every": 4}}, {"stride": {"every": 6}}]}, {"stride": {"every": 2}},
                 id="any-of-non-dividing-strides-is-not-the-gcd"),
    pytest.param({"blocks": {"size": 4}}, {"all": [{"blocks": {"size": 4}}, {"blocks": {"size": 6}}]},
                 id="non-nested-blocks"),
    pytest.param({"random": {"per_row": 2, "block": 4, "seed": 0}},
                 {"random": {"per_row": 2, "block": 4, "seed": 1}}, id="random-seed"),
    pytest.param({"not": {"band": 2}}, {"band": 2}, id="negation"),
    pytest.param({"any": [{"band": 1}, {"blocks": {"size": 4}}]},
                 {"all": [{"band": 1}, {"blocks": {"size": 4}}]}, id="any-vs-all"),
])
def test_different_meanings_stay_different(a, b):
    sa, sb = spec_of(a), spec_of(b)
    assert sa != sb
    assert sa.content_hash() != sb.content_hash()


def test_scale_and_softcap_and_alibi_are_part_of_the_meaning():
    base = {"heads": 4, "head_dim": 16}
    specs = [load_spec({**base, **extra}) for extra in
             ({}, {"scale": 0.5}, {"softcap": 30.0}, {"alibi": True}, {"causal": True})]
    assert len({s.content_hash() for s in specs}) == len(specs)


def test_normalize_is_idempotent_on_a_nested_mask():
    p = Any_((Not_(Not_(All_((Causal(), Band(4, None))))), Stride(1) & Blocks(3), Band(1, 1)))
    once = normalize(p)
    assert normalize(once) == once
    assert once == Any_((Band(4, 1), Blocks(3)))


# ---------------------------------------------------------------------------------------------
# Normalisation never changes a meaning: many random trees, evaluated raw and normalised.
# ---------------------------------------------------------------------------------------------
def random_leaf(rng):
    kind = rng.choice(["causal", "band", "band", "stride", "columns", "global", "blocks", "random",
                       "segments"])
    if kind == "causal":
        return Causal()
    if kind == "band":
        left = rng.choice([None, 0, 1, 2, 5])
        right = rng.choice([0, 1, 3, 6] if left is None else [None, 0, 1, 3, 6])
        return Band(left, right)
    if kind == "stride":
        return Stride(rng.choice([1, 2, 3, 4, 6]))
    if kind == "columns":
        every = rng.randint(1, 6)
        return Columns(every, rng.randint(1, every))
    if kind == "global":
        if rng.random() < 0.5:
            return GlobalTokens(first=rng.randint(1, 3))
        return GlobalTokens(tokens=tuple(rng.sample(range(12), rng.randint(1, 3))))
    if kind == "blocks":
        return Blocks(rng.choice([1, 2, 3, 4, 6, 8]))
    if kind == "random":
        return Random(rng.randint(1, 2), rng.choice([2, 3, 4]), rng.randint(0, 3))
    return Segments()


def random_tree(rng, depth):
    if depth == 0 or rng.random() < 0.3:
        return random_leaf(rng)
    op = rng.choice(["any", "all", "not"])
    if op == "not":
        return Not_(random_tree(rng, depth - 1))
    parts = tuple(random_tree(rng, depth - 1) for _ in range(rng.randint(1, 4)))
    return (Any_ if op == "any" else All_)(parts)


def test_normalisation_preserves_meaning_on_random_trees(rng):
    changed = 0
    for _ in range(600):
        mask = random_tree(rng, 3)
        try:
            spec = Spec(query_heads=2, kv_heads=1, head_dim=8, mask=mask)
        except SpecError as err:                          # only "allows nothing" may be refused
            assert "allows no" in str(err), (mask, err)
            continue
        nq, nk = rng.randint(1, 12), rng.randint(8, 14)
        q_offset = rng.choice([None, rng.randint(-6, 6)])
        seg = {}
        if any(isinstance(p, Segments) for p in mask.walk()):
            seg = {"seg_q": torch.tensor(sorted(rng.choices(range(3), k=nq))),
                   "seg_k": torch.tensor(sorted(rng.choices(range(3), k=nk)))}
        ctx = spec.eval_context(nq, nk, q_offset, **(seg if spec.uses_segments else {}))
        if seg and not spec.uses_segments:    # normalised away (any(everything, segments)): the
            ctx.seg_rows, ctx.seg_cols = seg["seg_q"][:, None], seg["seg_k"][None, :]   # raw reads them
        ii = (torch.arange(nq) + ctx.q_offset).unsqueeze(-1)
        jj = torch.arange(nk).unsqueeze(0)
        raw = mask.evaluate(ii, jj, ctx)
        normal = spec.effective_mask.evaluate(ii, jj, ctx)
        assert torch.equal(raw, normal), (mask, spec.effective_mask, nq, nk, ctx.q_offset)
        changed += spec.effective_mask != mask
    assert changed > 100                                   # the rules were actually exercised


def test_normal_forms_round_trip_through_yaml_form(rng):
    """A normalised mask written by to_dict reads back to the same normal form (idempotence)."""
    seen = 0
    for _ in range(300):
        try:
            spec = Spec(query_heads=2, kv_heads=1, head_dim=8, mask=random_tree(rng, 3),
                        causal=rng.random() < 0.3)
        except SpecError:
            continue
        again = load_spec(spec.to_dict())
        assert again.effective_mask == spec.effective_mask, (spec.effective_mask, again.effective_mask)
        assert again.to_dict() == spec.to_dict()
        assert normalize(spec.effective_mask) == spec.effective_mask
        seen += 1
    assert seen > 200


def rewrite_same_meaning(p, rng):
    """The same predicate written differently: parts shuffled, duplicated, wrapped, negated twice."""
    if isinstance(p, (Any_, All_)):
        parts = [rewrite_same_meaning(c, rng) for c in p.parts]
        rng.shuffle(parts)
        if rng.random() < 0.3:
            parts.append(rewrite_same_meaning(rng.choice(p.parts), rng))
        if len(parts) > 2 and rng.random() < 0.5:                     # regroup: any(a, any(b, c))
            cut = rng.randint(1, len(parts) - 1)
            parts = parts[:cut] + [type(p)(tuple(parts[cut:]))]
        out = type(p)(tuple(parts))
    elif isinstance(p, Not_):
        out = Not_(rewrite_same_meaning(p.part, rng))
    elif isinstance(p, Band) and p.right == 0 and p.left is None and rng.random() < 0.5:
        out = Causal()
    else:
        out = p
    roll = rng.random()
    if roll < 0.15:
        return Not_(Not_(out))
    if roll < 0.25:
        return rng.choice([Any_, All_])((out,))
    if roll < 0.3:
        return All_((out, Stride(1)))
    return out


def test_rewritten_trees_normalise_to_the_same_form(rng):
    for _ in range(300):
        mask = random_tree(rng, 3)
        other = rewrite_same_meaning(mask, rng)
        assert normalize(other) == normalize(mask), (mask, other)
