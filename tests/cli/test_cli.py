"""The ``attngen`` command line, called in-process through `main` (and once as a program)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import attngen
from attngen.cli.main import COMMANDS, main

GQA_YAML = """name: llama_like
heads: {query: 32, kv: %d}
head_dim: 128
causal: true
"""


def test_help_as_a_program_lists_every_command_with_examples():
    done = subprocess.run([sys.executable, "-m", "attngen.cli.main", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    for command in ("check", "cost", "show", "run", "emit"):
        assert command in done.stdout
    assert "examples:" in done.stdout


@pytest.mark.parametrize("command", [m.__name__.rsplit(".", 1)[1] for m in COMMANDS])
def test_every_command_has_help_with_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: attngen {command}" in out
    assert "examples:" in out and f"attngen {command} " in out.split("examples:")[1]


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


# -- check -------------------------------------------------------------------------------------
def test_check_summarises_a_spec(capsys):
    assert main(["check", "specs/gemma2_softcap.yaml", "specs/linear_favor.yaml"]) == 0
    out = capsys.readouterr().out
    assert "gemma2_softcap" in out and "16 query, 8 kv: GQA-8 (8 kv heads, 2 query heads each)" in out
    assert "i - 4095 <= j <= i" in out
    assert "softcap 50" in out and "0.0625 (1/sqrt(256), the default)" in out
    assert "8,192 bytes per token per layer" in out and "at most 4096 tokens" in out
    assert "fixed state of 133,120 bytes" in out                         # 8 × (64×64 + 64) × 4


def test_check_reads_a_folder(capsys):
    assert main(["check", "specs"]) == 0
    out = capsys.readouterr().out
    assert "bigbird" in out and "j // 64 in drawn(i // 64; 3 per row, seed 0)" in out
    assert "(i - j) % 128 == 0" in out


def test_check_refuses_a_bad_spec_with_one_line(spec_file, capsys):
    bad = spec_file("heads: {query: 6, kv: 4}\nhead_dim: 64\n", "bad.yaml")
    assert main(["check", "specs/mha.yaml", bad]) == 2
    captured = capsys.readouterr()
    assert "mha" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attngen: error: ") and "bad.yaml:1" in err[0]
    assert "Hq % Hkv" in err[0]


def test_missing_file_is_one_error_line(capsys):
    assert main(["cost", "nowhere.yaml", "--n", "8"]) == 2
    assert capsys.readouterr().err == "attngen: error: spec file not found: nowhere.yaml\n"


# Every way of calling a command wrongly: one line on stderr (no usage block), exit status 2.
BAD_CALLS = {
    "no-command": ([], "required: COMMAND"),
    "unknown-command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "missing-n": (["cost", "specs/mha.yaml"], "required: --n"),
    "n-not-an-integer": (["cost", "specs/mha.yaml", "--n", "abc"], "'abc' is not an integer"),
    "n-zero": (["cost", "specs/mha.yaml", "--n", "0"], "--n: must be >= 1"),
    "unknown-flag": (["cost", "specs/mha.yaml", "--n", "8", "--bogus"], "unrecognized arguments: --bogus"),
    "unknown-dtype": (["cost", "specs/mha.yaml", "--n", "8", "--dtype", "float64"], "invalid choice: 'float64'"),
    "q-offset-not-an-int": (["show", "specs/mha.yaml", "--n", "8", "--q-offset", "x"], "invalid int value"),
    "unknown-stage": (["emit", "specs/mha.yaml", "--stage", "cubin"], "invalid choice: 'cubin'"),
    "unknown-cache-action": (["cache", "purge"], "invalid choice: 'purge'"),
    "missing-file": (["show", "nowhere.yaml", "--n", "8"], "spec file not found: nowhere.yaml"),
    "folder-for-a-file": (["cost", "specs", "--n", "8"], "specs is a folder"),
    "check-missing-file": (["check", "specs/mha.yaml", "nowhere.yaml"], "spec file not found"),
    "not-yaml": (["check", "README.md"], "README.md:"),
    "cuda-without-gpu": (["run", "specs/mha.yaml", "--device", "cuda"], "no CUDA device"),
    "too-many-tiles": (["show", "specs/mha.yaml", "--n", "1048576", "--block", "16"], "larger --block"),
    "png-into-a-missing-folder": (["show", "specs/mha.yaml", "--n", "64", "--png", "/nonexistent/x/m.png"],
                                  "/nonexistent/x/m.png"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_calls_are_one_error_line_with_status_2(name, capsys):
    if name == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    if name == "png-into-a-missing-folder":
        pytest.importorskip("matplotlib")
    argv, phrase = BAD_CALLS[name]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and phrase in lines[0], err
    assert not lines[0].startswith("usage:"), err


# -- cost --------------------------------------------------------------------------------------
# L=32, H=32, D=128, n=4096, fp16. GQA-G counts kv heads: GQA-4 is 4 kv heads.
@pytest.mark.parametrize("kv, want", [(32, 2 << 30), (8, 512 << 20), (4, 256 << 20), (1, 64 << 20)],
                         ids=["MHA", "GQA-8", "GQA-4", "MQA"])
def test_cost_json_worked_kv_cache(kv, want, spec_file, capsys):
    path = spec_file(GQA_YAML % kv)
    assert main(["cost", path, "--n", "4096", "--layers", "32", "--dtype", "float16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kv_cache_bytes"] == want
    assert data["allowed_pairs"] == 4096 * 4097 // 2
    assert data["flops_fwd"] == 4 * 128 * data["allowed_pairs"] * 32 * 32
    assert data["formula"].startswith("n**2/2 + n/2")
    assert data["layers"] == 32 and data["dtype"] == "float16" and data["notes"] == []


def test_cost_json_twelve_layers_of_window_128_reach_1536(spec_file, capsys):
    path = spec_file("name: window\nheads: 8\nhead_dim: 64\ncausal: true\nmask: {band: {left: 128}}\n")
    assert main(["cost", path, "--n", "8192", "--layers", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["receptive_field"] == 1536 and data["layers_to_full_reach"] == 64     # ceil(8191 / 128)


SPEC_FILES = sorted(p.name for p in Path("specs").glob("*.yaml"))


@pytest.mark.parametrize("name", SPEC_FILES)
def test_cost_json_at_a_million_positions_for_every_shipped_spec(name, capsys, monkeypatch):
    monkeypatch.setattr(attngen.Spec, "dense_mask", None)          # the mask is never built
    start = time.process_time()
    assert main(["cost", f"specs/{name}", "--n", "1048576", "--layers", "32", "--json"]) == 0
    seconds = time.process_time() - start
    data = json.loads(capsys.readouterr().out)
    assert 0 < data["allowed_pairs"] <= (1 << 40) and data["flops_bwd"] == int(2.5 * data["flops_fwd"])
    # About 0.6 s at most on an idle core (bigbird's random blocks); loose, CPU time: CI shares cores.
    assert seconds < 5, f"{name}: {seconds:.2f} CPU s"


def test_cost_table_for_a_sliding_window(capsys):
    assert main(["cost", "specs/mistral_sliding_window.yaml", "--n", "65536", "--layers", "12"]) == 0
    out = capsys.readouterr().out
    assert "49,152 tokens after 12 layers" in out                      # 12 × 4096
    assert "4097*n - 8390656" in out
    assert "KV cache         192.05 MiB (201,375,744 bytes)" in out   # 12 layers × 4097 tokens × 4 KiB
    assert "holds the last 4097 tokens" in out


def test_cost_refuses_bad_numbers(capsys):
    assert main(["cost", "specs/mha.yaml", "--n", "0"]) == 2
    assert "--n: must be >= 1" in capsys.readouterr().err


# -- show --------------------------------------------------------------------------------------
def test_show_draws_the_tile_map_with_counts(capsys):
    assert main(["show", "specs/mistral_sliding_window.yaml", "--n", "256", "--block", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("█ full 6   ▒ partial 4   · empty 6")
    assert lines[2:] == ["▒···", "█▒··", "██▒·", "███▒"]


def test_show_coarsens_wide_maps(capsys):
    assert main(["show", "specs/gqa.yaml", "--n", "2048", "--block", "16", "--width", "32"]) == 0
    out = capsys.readouterr().out
    assert "each character is 4 × 4 tiles" in out
    assert len(out.splitlines()[-1]) == 32


def test_show_png_has_the_expected_size(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "map.png"
    assert main(["show", "specs/bigbird.yaml", "--n", "512", "--png", str(path)]) == 0
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 600)


def test_show_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["show", "specs/mha.yaml", "--n", "64", "--png", str(tmp_path / "x.png")]) == 2
    assert "pip install 'attngen[plot]'" in capsys.readouterr().err


# -- run and emit: with stand-ins for the compiler where a failure must be provoked --------------
def _reference_compile(scale: float = 1.0):
    def compile_(spec):
        def attn(q, k, v, *, return_lse=False, **kwargs):
            out, lse = attngen.reference(spec, q, k, v, **kwargs)
            out = (out * scale).to(q.dtype)
            return (out, lse.float()) if return_lse else out
        return attn
    return compile_


def test_run_passes_with_a_correct_kernel_and_fails_with_a_wrong_one(monkeypatch, capsys):
    monkeypatch.setattr(attngen, "compile", _reference_compile())
    assert main(["run", "specs/packed_documents.yaml", "--n", "48", "--nk", "64"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""                          # not a terminal: no progress lines
    assert "out        relative error" in captured.out and "FLOP/s" in captured.out
    monkeypatch.setattr(attngen, "compile", _reference_compile(scale=1.01))
    assert main(["run", "specs/mha.yaml", "--n", "16"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_emit_passes_its_options_through(monkeypatch, capsys):
    seen = {}

    def emit(spec, **options):
        seen.update(options, name=spec.name)
        return "// kernel"
    monkeypatch.setattr(attngen, "emit", emit)
    assert main(["emit", "specs/gqa.yaml", "--kernel", "decode", "--stage", "ptx", "--target", "sm_80",
                 "--n", "8192", "--batch", "16", "--page-size", "16"]) == 0
    assert capsys.readouterr().out == "// kernel\n"
    assert seen == {"name": "gqa", "kernel": "decode", "stage": "ptx", "target": "sm_80",
                    "dtype": torch.float16, "n": 8192, "nk": None, "batch": 16, "page_size": 16}




def test_run_end_to_end_on_the_interpreter(capsys):
    assert main(["run", "specs/longformer.yaml", "--n", "40", "--nk", "56", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "lse        relative error" in out and "FAILED" not in out
    # Generation, compilation and the call are timed apart (kernels are otherwise made lazily
    # inside the first call, which made "compiled in 0.00 s" the only figure).
    assert "  generate   " in out and "  compile    none: on CPU" in out and "  first call " in out
    assert "(best of 1 call after the first)" in out


def test_emit_end_to_end_prints_the_triton_source(capsys):
    assert main(["emit", "specs/mha.yaml"]) == 0
    out = capsys.readouterr().out
    assert "mha" in out and "@triton.jit" in out


def test_emit_prints_the_lsh_bucket_kernel_and_refuses_it_without_lsh(capsys):
    assert main(["emit", "specs/select/reformer_lsh.yaml", "--kernel", "lsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ====") and "attngen LSH bucket kernel for spec 'reformer_lsh'" in out
    assert "8 buckets" in out and "def attngen_lsh_reformer_lsh_buckets(" in out
    assert main(["emit", "specs/mha.yaml", "--kernel", "lsh"]) != 0
    assert "no lsh" in capsys.readouterr().err


def _left_panel_pixel(path, col: float, row: float):
    """The RGB of the token-mask panel at fractions (col, row) of its axes (matplotlib's default
    subplot box for 1 × 2 panels of a 1200 × 600 figure)."""
    from matplotlib.image import imread
    image = imread(path)
    width = (0.9 - 0.125) / 2.2
    x = int(1200 * (0.125 + col * width))
    y = int(600 * (1 - 0.88 + row * (0.88 - 0.11)))
    return tuple(float(c) for c in image[y, x, :3])


@pytest.mark.parametrize("spec, allowed, not_allowed", [
    ("specs/mha.yaml", [(0.5, 0.5), (0.75, 0.3)], []),                       # every pair allowed
    ("specs/gqa.yaml", [(0.3, 0.7)], [(0.75, 0.3)]),                         # causal
], ids=["fully-allowed", "causal"])
def test_show_png_colours_allowed_and_not_allowed_whatever_the_mask(spec, allowed, not_allowed,
                                                                    tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb

    from attngen.cli.show import MASK_COLOURS
    path = tmp_path / "mask.png"
    assert main(["show", spec, "--n", "64", "--block", "16", "--png", str(path)]) == 0
    for where in allowed:
        assert _left_panel_pixel(path, *where) == pytest.approx(to_rgb(MASK_COLOURS[1]), abs=0.02), where
    for where in not_allowed:
        assert _left_panel_pixel(path, *where) == pytest.approx(to_rgb(MASK_COLOURS[0]), abs=0.02), where


def test_show_png_has_a_legend_and_integer_ticks(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib import pyplot as plt
    seen = {}
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig))
    assert main(["show", "specs/mistral_sliding_window.yaml", "--n", "40", "--block", "16",
                 "--png", str(tmp_path / "m.png")]) == 0
    left, right = seen["fig"].axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["allowed", "not allowed"]
    assert [t.get_text().split()[0] for t in right.get_legend().get_texts()] == ["full", "partial", "empty"]
    for axes in (left, right):                            # 3 × 3 tiles: no 0.5 tick labels
        for tick in [*axes.get_xticks(), *axes.get_yticks()]:
            assert float(tick).is_integer(), tick


def test_show_and_cost_take_packed_document_lengths(capsys):
    assert main(["cost", "specs/packed_documents.yaml", "--n", "357", "--docs", "100,200,57", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["allowed_pairs"] == 100 * 101 // 2 + 200 * 201 // 2 + 57 * 58 // 2    # causal per doc
    assert not any("one segment" in note for note in result["notes"])
    assert main(["show", "specs/packed_documents.yaml", "--n", "357", "--block", "100",
                 "--docs", "100,200,57"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["▒···", "·▒··", "·█▒·", "···▒"]      # documents 0-99, 100-299, 300-356
    assert main(["cost", "specs/mha.yaml", "--n", "357", "--docs", "100,200,57"]) == 2
    assert "no segments mask" in capsys.readouterr().err
    assert main(["show", "specs/packed_documents.yaml", "--n", "64", "--docs", "10,20"]) == 2
    assert "sum to 30, expected nk = 64" in capsys.readouterr().err


def test_cost_says_n_a_for_cross_attention_and_counts_sinks_with_the_window(spec_file, capsys):
    assert main(["cost", "specs/mha.yaml", "--n", "1", "--nk", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["receptive_field"] is None and result["layers_to_full_reach"] is None
    assert main(["cost", "specs/mha.yaml", "--n", "64", "--nk", "100"]) == 0
    out = capsys.readouterr().out
    assert "receptive field  n/a" in out and "over 1 layer\n" in out and "over 1 layers" not in out
    sinks = spec_file("name: sinks\nheads: {query: 8, kv: 2}\nhead_dim: 64\ncausal: true\n"
                      "mask:\n  any:\n    - band: {left: 1023}\n    - global: {first: 4}\n")
    assert main(["cost", sinks, "--n", "8192", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_cache_bytes"] == (1024 + 4) * result["kv_cache_bytes_per_token"]
    assert "the last 1024 tokens and 4 sink tokens" in " ".join(result["notes"])
    assert main(["cost", sinks, "--n", "1000", "--json"]) == 0           # all fit in the window
    result = json.loads(capsys.readouterr().out)
    assert result["kv_cache_bytes"] == 1000 * result["kv_cache_bytes_per_token"]
