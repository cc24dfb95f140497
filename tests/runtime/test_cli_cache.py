"""``attngen cache list|clear [SPEC]``, called in-process through the CLI's `main`."""
from __future__ import annotations

import json

import yaml

import attngen
from attngen.cli.main import main
from attngen.runtime import cache


def fill(small_spec, *names):
    for name in names:
        cache.generated(attngen.load_spec(small_spec(name, causal=True)), "fwd", arch="interpreter")


def test_list_shows_spec_kind_key_size_and_age(small_spec, capsys):
    assert main(["cache", "list"]) == 0
    assert "no entries" in capsys.readouterr().out
    fill(small_spec, "cli_alpha", "cli_beta")
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("cli_")]
    assert [row[:3] for row in rows] == [["cli_alpha", "fwd", "interpreter"],
                                         ["cli_beta", "fwd", "interpreter"]]
    keys = {e.spec_name: e.key[:16] for e in cache.list_entries()}
    assert [row[3] for row in rows] == [keys["cli_alpha"], keys["cli_beta"]]
    assert all(row[5] == "KiB" and row[6].endswith("s") for row in rows)     # size, age
    assert lines[-1].startswith("2 entries")
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["spec"], e["problem"]) for e in listed] == [("cli_alpha", None), ("cli_beta", None)]


def test_clear_one_spec_by_name_or_file_then_everything(small_spec, tmp_path, capsys, cache_dir):
    fill(small_spec, "cli_keep", "cli_drop", "cli_file")
    assert main(["cache", "clear", "cli_drop"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    path = tmp_path / "cli_file.yaml"
    path.write_text(yaml.safe_dump(small_spec("cli_file", causal=True)))
    assert main(["cache", "clear", str(path)]) == 0
    assert [e.spec_name for e in cache.list_entries()] == ["cli_keep"]
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entry (everything)" in capsys.readouterr().out.splitlines()[-1]
    assert cache.list_entries() == [] and not (cache_dir / "v1").exists()


def test_cache_usage_errors_exit_2(capsys):
    assert main(["cache"]) == 2
    assert main(["cache", "frobnicate"]) == 2
