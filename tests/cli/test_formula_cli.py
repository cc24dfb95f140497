"""`attngen show` and `attngen cost` on mask formulas: exact tile classes and pair counts, from the
formula analysis (`attngen.analysis.tiles_formula`), and a note where a formula is outside it."""
from __future__ import annotations

import json
import struct

import pytest
import torch

import attngen
from attngen.cli.common import load
from attngen.cli.main import main
from attngen.spec.formula import Formula

NATTEN = "specs/formulas/natten_2d.yaml"


def natten_pairs(n: int) -> int:
    """Pairs of a 7 x 7 neighbourhood on a 32-wide grid of n = 32 R tokens: the row offsets and the
    column offsets within 3 multiply (7m - 12 pairs (a, b) in [0, m)^2 with |a - b| <= 3)."""
    return (7 * (n // 32) - 12) * (7 * 32 - 12)


def brute_counts(spec, n: int, block: int) -> tuple[int, int, int]:
    mask = spec.dense_mask(n, n)
    t = -(-n // block)
    padded = torch.zeros(t * block, t * block, dtype=torch.int64)
    padded[:n, :n] = mask
    exists = torch.zeros_like(padded)
    exists[:n, :n] = 1
    count = padded.view(t, block, t, block).sum((1, 3))
    area = exists.view(t, block, t, block).sum((1, 3))
    full = int((count == area).sum())
    partial = int(((count > 0) & (count < area)).sum())
    return full, partial, t * t - full - partial


@pytest.mark.parametrize("n, block", [(1024, 64), (1000, 48)])
def test_show_draws_a_formula_mask_exactly(n, block, capsys):
    assert main(["show", NATTEN, "--n", str(n), "--block", str(block)]) == 0
    lines = capsys.readouterr().out.splitlines()
    full, partial, empty = brute_counts(load(NATTEN), n, block)
    assert lines[1].startswith(f"█ full {full:,}   ▒ partial {partial:,}   · empty {empty:,}")
    assert lines[2].startswith("▒▒") and "·" in lines[2]


def test_show_png_of_a_formula(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "natten.png"
    assert main(["show", NATTEN, "--n", "512", "--block", "32", "--png", str(path)]) == 0
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1200, 600)


def test_cost_counts_a_formula_symbolically(capsys, monkeypatch):
    monkeypatch.setattr(attngen.Spec, "dense_mask", None)            # the mask is never built
    monkeypatch.setattr(Formula, "evaluate", None)                   # nor evaluated pair by pair
    assert main(["cost", NATTEN, "--n", "65536", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allowed_pairs"] == natten_pairs(65536) == 3_036_688
    assert any("exact, symbolic" in note for note in data["notes"])


def test_cost_table_says_how_a_formula_was_counted(spec_file, capsys):
    assert main(["cost", NATTEN, "--n", "4096"]) == 0
    out = capsys.readouterr().out
    assert f"{natten_pairs(4096):,} of" in out and "no pair evaluated one by one" in out
    path = spec_file("name: products\nheads: 2\nhead_dim: 16\nmask: \"(i * j) % 7 < 3\"\n")
    assert main(["cost", path, "--n", "300", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allowed_pairs"] == int(load(path).dense_mask(300, 300).sum())
    assert any("every pair was evaluated" in note for note in data["notes"])
