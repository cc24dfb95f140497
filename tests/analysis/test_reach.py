"""attngen.analysis.reach: receptive fields of stacked layers, checked against networkx's BFS."""
from __future__ import annotations

import itertools
import json
import time

import networkx as nx
import pytest

from attngen import load_spec
from attngen.analysis import reach as reach_module
from attngen.analysis.pairs import counted_mask
from attngen.analysis.reach import MAX_GRAPH_N, allowed_graph, reach
from attngen.cli.main import main
from attngen.spec import spec_from_dict


def _spec(mask, causal=False):
    return spec_from_dict({"heads": 1, "head_dim": 8, "causal": causal, "mask": mask})


def _oracle(spec, n, layers):
    """Plain BFS with networkx from every position, residual edges added."""
    graph = allowed_graph(spec, n)
    graph.add_edges_from((i, i) for i in range(n))
    field, full = 0, 1
    for i in range(n):
        hops = nx.single_source_shortest_path_length(graph, i)
        field = max([field] + [abs(i - j) for j, h in hops.items() if h <= layers])
        full = max([full] + list(hops.values()))
    return field, full


def test_twelve_layers_of_a_128_window_reach_1536_tokens():
    spec = load_spec("specs/mistral_sliding_window.yaml")   # band left 4096, causal
    assert reach(spec, n=100_000, layers=12).receptive_field == 12 * 4096
    window = _spec({"band": {"left": 128}}, causal=True)
    result = reach(window, n=8192, layers=12)
    assert result.receptive_field == 1536
    assert result.layers_to_full_reach == -(-8191 // 128)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_strided_plus_band_reaches_every_pair_in_two_layers(causal):
    spec = _spec({"any": [{"band": {"left": 15, "right": 0 if causal else 15}}, {"stride": {"every": 16}}]},
                 causal)
    one, two = reach(spec, n=256, layers=1), reach(spec, n=256, layers=2)
    assert one.receptive_field == 255 - 255 % 16
    assert two.receptive_field == 255
    assert two.layers_to_full_reach == 2


def test_shipped_sparse_strided_spec_reaches_everything_in_two_layers():
    assert reach(load_spec("specs/sparse_strided.yaml"), n=1024, layers=2).layers_to_full_reach == 2


MASKS = {
    "stride4": {"stride": {"every": 4}},
    "global1": {"global": {"first": 1}},
    "blocks8": {"blocks": {"size": 8}},
    "random": {"random": {"per_row": 1, "block": 4, "seed": 1}},
    "columns": {"columns": {"every": 6, "width": 1}},
    "band_or_random": {"any": [{"band": 2}, {"random": {"per_row": 1, "block": 8}}]},
    "band_minus_stride": {"all": [{"band": 3}, {"not": {"stride": {"every": 2}}}]},
}


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_graph_walk_matches_networkx_bfs(name, causal):
    spec = _spec(MASKS[name], causal)
    for n, layers in ((40, 1), (40, 3), (61, 2), (61, 7)):
        got = reach(spec, n=n, layers=layers)
        assert (got.receptive_field, got.layers_to_full_reach) == _oracle(spec, n, layers), (n, layers)


@pytest.mark.parametrize("mask", [{"band": 3}, {"band": {"left": 5}}, {"band": {"right": 2}},
                                  {"band": {"left": 0, "right": 4}}], ids=str)
def test_band_closed_form_matches_networkx_bfs(mask):
    for causal in (False, True):
        spec = _spec(mask, causal)
        for layers in (1, 2, 5, 30):
            got = reach(spec, n=37, layers=layers)
            assert (got.receptive_field, got.layers_to_full_reach) == _oracle(spec, 37, layers)


def test_unmasked_and_single_position():
    spec = spec_from_dict({"heads": 1, "head_dim": 8})
    assert reach(spec, n=10, layers=1).receptive_field == 9
    assert reach(_spec({"stride": {"every": 3}}), n=1, layers=4).receptive_field == 0


def test_large_masks_without_a_closed_form_are_not_walked():
    narrow = _spec({"any": [{"band": 2}, {"stride": {"every": 16}}]})   # bounds of the strided rule differ
    result = reach(narrow, n=MAX_GRAPH_N + 1, layers=2)
    assert result.receptive_field is None and result.layers_to_full_reach is None
    assert result.notes


# -- closed forms: each must agree with the graph walk wherever both answer --------------------
CLOSED = {
    "blocks5": ({"blocks": {"size": 5}}, False),
    "blocks5_causal": ({"blocks": {"size": 5}}, True),
    "blocks_past_n": ({"blocks": {"size": 64}}, True),
    "global_first": ({"any": [{"band": 1}, {"global": {"first": 2}}]}, False),
    "global_last_token": ({"any": [{"stride": {"every": 5}}, {"global": {"tokens": [3, 36]}}]}, False),
    "global_and_random": ({"any": [{"band": 2}, {"global": {"first": 1}},
                                   {"random": {"per_row": 1, "block": 4, "seed": 2}}]}, False),
    "global_one_layer": ({"any": [{"global": {"first": 1}}, {"not": {"band": 0}}]}, False),
    "global_nearly_one_layer": ({"any": [{"global": {"first": 1}},
                                         {"not": {"all": [{"band": 1}, {"global": {"tokens": [20]}}]}}]},
                                False),
}


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_closed_forms_agree_with_the_graph_walk(name, monkeypatch):
    mask, causal = CLOSED[name]
    spec = _spec(mask, causal)
    for n, layers in ((37, 1), (37, 2), (37, 4), (12, 1)):
        closed = reach(spec, n=n, layers=layers)
        monkeypatch.setattr(reach_module, "CLOSED_FORMS", (reach_module._everything_reach,))
        walked = reach(spec, n=n, layers=layers)
        monkeypatch.undo()
        assert (closed.receptive_field, closed.layers_to_full_reach) == \
            (walked.receptive_field, walked.layers_to_full_reach), (n, layers)
        assert closed.receptive_field is not None


def test_closed_forms_are_used_where_they_apply():
    """Each CLOSED case is answered by a closed form, not by the walk (which would refuse here)."""
    n = MAX_GRAPH_N + 1
    cases = [case for name, case in CLOSED.items() if name != "global_last_token"]   # n-specific
    cases.append(({"any": [{"stride": {"every": 5}}, {"global": {"tokens": [3, n - 1]}}]}, False))
    for mask, causal in cases:
        result = reach(_spec(mask, causal), n=n, layers=3)
        assert result.receptive_field is not None and not result.notes, mask
    middle_token_only = _spec({"any": [{"stride": {"every": 5}}, {"global": {"tokens": [3]}}]})
    assert reach(middle_token_only, n=n, layers=3).receptive_field is None


@pytest.mark.parametrize("name, field, full", [("longformer", (1 << 20) - 1, 2), ("bigbird", (1 << 20) - 1, 2),
                                               ("block_local", 127, 1)])
def test_shipped_specs_with_closed_forms_answer_at_a_million_positions(name, field, full):
    result = reach(load_spec(f"specs/{name}.yaml"), n=1 << 20, layers=32)
    assert (result.receptive_field, result.layers_to_full_reach) == (field, full)


# -- strided (band + stride) and fixed (blocks + columns) closed forms, forced on, the walk as oracle --
SIZES = (1, 2, 3, 5, 7, 11, 16, 23, 30, 41)          # odd, below the stride, not multiples of blocks


def _walked(spec, n, layers):
    return reach_module._walk(reach_module._edges(spec, n), n, layers)


def _check_rule(rule, spec, sizes=SIZES, layers=(1, 2, 3, 4)):
    """The rule against the walk for every n and L; returns how many it answered."""
    mask, answered = counted_mask(spec, segments=False), 0
    for n, L in itertools.product(sizes, layers):
        got = rule(spec, mask, n, L)
        if got is not None:
            answered += 1
            assert (got.receptive_field, got.layers_to_full_reach) == _walked(spec, n, L), (n, L)
    return answered


BANDS = [{"left": a, "right": b} for a, b in itertools.product((0, 1, 2, 3, 6), (0, 1, 4))] + \
    [{"left": 2}, {"right": 3}, {"left": 9}]
STRIDES = (2, 3, 5, 8)


@pytest.mark.parametrize("band", BANDS, ids=str)
def test_causal_strided_closed_form_is_exact(band):
    """Causal: every path is monotone, so the rule always answers, and exactly."""
    for every in STRIDES:
        spec = _spec({"any": [{"band": band}, {"stride": {"every": every}}]}, causal=True)
        if not isinstance(counted_mask(spec, segments=False), reach_module.All_):
            continue                     # normalised to something else (e.g. plain causal)
        assert _check_rule(reach_module._strided_reach, spec) == len(SIZES) * 4, every


@pytest.mark.parametrize("band", BANDS, ids=str)
def test_bidirectional_strided_closed_form_is_exact_where_it_answers(band):
    answered = 0
    for every in STRIDES:
        spec = _spec({"any": [{"band": band}, {"stride": {"every": every}}]})
        answered += _check_rule(reach_module._strided_reach, spec)
    assert answered > 0          # below the stride it is the band alone, always answered


def test_bidirectional_strided_answers_where_the_band_covers_the_stride():
    """Bands of width >= stride - 1 each way: two layers reach everything, at every n >= 2."""
    for (left, right), every in itertools.product([(3, 3), (4, 3), (3, 7), (5, 5)], (4,)):
        spec = _spec({"any": [{"band": {"left": left, "right": right}}, {"stride": {"every": every}}]})
        assert _check_rule(reach_module._strided_reach, spec) == len(SIZES) * 4
        assert reach_module._strided_reach(spec, counted_mask(spec, segments=False), 41, 1) \
            .layers_to_full_reach == 2


def test_two_layers_do_not_suffice_when_the_band_is_narrower_than_the_stride():
    spec = _spec({"any": [{"band": {"left": 3}}, {"stride": {"every": 16}}]}, causal=True)
    got = reach_module._strided_reach(spec, counted_mask(spec, segments=False), 200, 2)
    assert (got.receptive_field, got.layers_to_full_reach) == _walked(spec, 200, 2)
    assert got.layers_to_full_reach == 6          # 1 + ceil(15 / 3): the jump, then 15 back in steps of 3
    assert got.receptive_field == 192 + 3        # 199 = 12·16 + 7: the jump, then 3 of the 7 left


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("size", (1, 2, 3, 4, 5, 8))
def test_fixed_closed_form_is_exact(size, causal):
    """blocks(l) | columns(every e, width c) always answers (unless normalised away) and exactly."""
    for every, width in itertools.product((2, 3, 4, 5, 8), (1, 2, 3)):
        if width >= every:
            continue
        spec = _spec({"any": [{"blocks": {"size": size}}, {"columns": {"every": every, "width": width}}]},
                     causal)
        assert _check_rule(reach_module._fixed_reach, spec, layers=(1, 2, 3, 4)) == len(SIZES) * 4


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_strided_and_fixed_closed_forms_match_networkx_bfs(causal):
    for mask in ({"any": [{"band": {"left": 7}}, {"stride": {"every": 8}}]},
                 {"any": [{"band": {"left": 2, "right": 2}}, {"stride": {"every": 6}}]},
                 {"any": [{"blocks": {"size": 8}}, {"columns": {"every": 8, "width": 2}}]},
                 {"any": [{"blocks": {"size": 6}}, {"columns": {"every": 9, "width": 3}}]}):
        spec = _spec(mask, causal)
        for n, layers in ((61, 1), (61, 2), (61, 3), (50, 2)):
            got = reach(spec, n=n, layers=layers)
            if got.receptive_field is not None:
                assert (got.receptive_field, got.layers_to_full_reach) == _oracle(spec, n, layers), \
                    (mask, n, layers)


@pytest.mark.parametrize("name, one_layer", [("sparse_strided", (1 << 20) - 1 - 127),   # 8191·128
                                             ("sparse_fixed", (1 << 20) - 1 - 120)])    # to column 120
def test_sparse_transformer_specs_at_a_million_positions(name, one_layer, capsys):
    """Both shipped Sparse Transformer specs: two layers reach every pair, answered in milliseconds."""
    spec = load_spec(f"specs/{name}.yaml")
    start = time.process_time()
    results = [reach(spec, n=1 << 20, layers=layers) for layers in (1, 2, 3, 4)]
    seconds = time.process_time() - start
    assert [r.receptive_field for r in results] == [one_layer] + [(1 << 20) - 1] * 3
    assert {r.layers_to_full_reach for r in results} == {2} and not any(r.notes for r in results)
    assert seconds < 0.5, f"{seconds:.3f} CPU s for four answers"
    assert main(["cost", f"specs/{name}.yaml", "--n", "1048576", "--layers", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["receptive_field"], data["layers_to_full_reach"]) == ((1 << 20) - 1, 2)
