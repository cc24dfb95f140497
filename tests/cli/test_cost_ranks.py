"""`attngen cost SPEC --n N --ranks W --layout L`: the work per rank of context parallelism, exact."""
from __future__ import annotations

import json

import pytest

import attngen
import attngen.distributed
from attngen.analysis.pairs import allowed_pairs
from attngen.analysis.sharding import rank_work
from attngen.cli.main import main


def cost_json(capsys, *args) -> dict:
    assert main(["cost", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["context_parallel"]


@pytest.mark.parametrize("spec", ["gqa", "mistral_sliding_window", "bigbird", "sparse_strided"])
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_ranks_add_up_to_the_whole_and_match_brute_force(spec, layout, capsys):
    spec_obj = attngen.load_spec(f"specs/{spec}.yaml")
    n, world = 1003, 4                          # uneven chunks
    got = cost_json(capsys, f"specs/{spec}.yaml", "--n", str(n), "--ranks", str(world), "--layout", layout)
    assert sum(got["pairs_per_rank"]) == allowed_pairs(spec_obj, n, n)
    dense = spec_obj.dense_mask(n, n, 0)
    rows = [attngen.distributed.rank_runs(n, r, world, layout) for r in range(world)]
    want = [sum(int(dense[run.start:run.stop].sum()) for run in runs) for runs in rows]
    assert got["pairs_per_rank"] == want
    assert got["imbalance"] == pytest.approx(max(want) / (sum(want) / world))


def test_causal_balance_by_layout():
    """Causal at 8 ranks: zigzag is even, contiguous gives the last rank 15/8 of the mean."""
    spec = attngen.load_spec("specs/gqa.yaml")
    assert rank_work(spec, 1 << 17, 8, "zigzag").imbalance == pytest.approx(1.0, abs=1e-4)
    contiguous = rank_work(spec, 1 << 17, 8, "contiguous")
    assert contiguous.imbalance == pytest.approx(1.875, abs=1e-4)
    assert contiguous.empty_steps == (7, 6, 5, 4, 3, 2, 1, 0)


def test_sliding_window_stops_the_ring_early(capsys):
    got = cost_json(capsys, "specs/mistral_sliding_window.yaml", "--n", "131072", "--ranks", "8",
                    "--layout", "contiguous")
    assert got["ring_steps"] == 2                # a window of 4096 < a rank's 16384 positions


def test_table_names_every_rank(capsys):
    assert main(["cost", "specs/gqa.yaml", "--n", "4096", "--ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert "rank 0" in out and "rank 1" in out and "imbalance" in out


def test_ranks_refuse_cross_attention(capsys):
    with pytest.raises(SystemExit, match="self-attention"):
        main(["cost", "specs/gqa.yaml", "--n", "64", "--nk", "128", "--ranks", "2"])
