"""The on-disk cache: what the key covers, the entry layout, corruption, listing and clearing.
No kernel runs here."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

import attngen
from attngen.codegen import emit, render
from attngen.runtime import cache
from attngen.runtime.loader import write_source


def key_of(spec, kind="fwd"):
    return cache.cache_key(emit.generate(attngen.load_spec(spec), kind).graph, kind, "interpreter")


# -- the key ---------------------------------------------------------------------------------
def test_key_changes_when_a_template_changes(small_spec, monkeypatch):
    spec = small_spec("k_template", causal=True)
    before = key_of(spec)
    assert key_of(spec) == before
    monkeypatch.setattr(render, "template_digest", lambda: "0" * 64)
    assert key_of(spec) != before


def test_template_digest_follows_the_template_text(tmp_path, monkeypatch):
    copy = tmp_path / "templates"
    copy.mkdir()
    for path in render.TEMPLATE_DIR.glob("*.jinja"):
        (copy / path.name).write_text(path.read_text())
    monkeypatch.setattr(render, "TEMPLATE_DIR", copy)
    before = render.template_digest()
    (copy / "common.py.jinja").write_text((copy / "common.py.jinja").read_text() + "\n# edited\n")
    assert render.template_digest() != before


@pytest.mark.parametrize("changed", [
    pytest.param({"causal": True}, id="causal"),
    pytest.param({"mask": {"band": 4}}, id="mask"),
    pytest.param({"softcap": 20.0}, id="softcap"),
    pytest.param({"scale": 0.5}, id="scale"),
    pytest.param({"head_dim": 32}, id="head_dim"),
    pytest.param({"heads": {"query": 2, "kv": 2}}, id="heads"),
])
def test_key_changes_when_the_meaning_changes(small_spec, changed):
    assert key_of(small_spec("k_meaning")) != key_of(small_spec("k_meaning", **changed))


@pytest.mark.parametrize("a, b", [
    pytest.param({"mask": {"band": 8}}, {"mask": {"band": {"left": 8, "right": 8}}}, id="band-spelling"),
    pytest.param({"causal": True}, {"mask": {"band": {"right": 0}}}, id="causal-as-band"),
    pytest.param({"mask": {"band": 3}}, {"mask": {"all": [{"band": 3}, {"band": 5}]}}, id="redundant-and"),
    pytest.param({"mask": {"any": [{"band": 2}, {"global": {"first": 1}}]}},
                 {"mask": {"any": [{"global": {"first": 1}}, {"band": 2}]}}, id="any-order"),
])
def test_key_ignores_how_the_yaml_says_it(small_spec, a, b):
    assert attngen.load_spec(small_spec("k_same", **a)) == attngen.load_spec(small_spec("k_same", **b))
    assert key_of(small_spec("k_same", **a)) == key_of(small_spec("k_same", **b))


def test_key_changes_with_the_name_the_source_carries(small_spec):
    # The generated kernel is named after the spec, so two names never share a folder.
    assert key_of(small_spec("k_one")) != key_of(small_spec("k_two"))


@pytest.mark.parametrize("module, version", [
    pytest.param(cache, "__version__", id="attngen"),
    pytest.param(cache.torch, "__version__", id="torch"),
    pytest.param(cache.triton, "__version__", id="triton"),
])
def test_key_and_index_change_with_each_version(small_spec, monkeypatch, module, version):
    spec = attngen.load_spec(small_spec("k_version", causal=True))
    graph = emit.generate(spec, "fwd").graph
    before = cache.cache_key(graph, "fwd", "interpreter"), cache.lookup_key(spec, "fwd", "interpreter")
    monkeypatch.setattr(module, version, "99.0.0+other")
    after = cache.cache_key(graph, "fwd", "interpreter"), cache.lookup_key(spec, "fwd", "interpreter")
    assert after[0] != before[0] and after[1] != before[1]


def test_key_changes_when_the_codegen_code_changes(small_spec, tmp_path, monkeypatch):
    """The Python that renders the templates is part of the key, like the templates themselves."""
    spec = attngen.load_spec(small_spec("k_codegen", causal=True))
    graph = emit.generate(spec, "fwd").graph
    copy = tmp_path / "attngen"
    (copy / "codegen").mkdir(parents=True)
    for path in (cache.PACKAGE_DIR / "codegen").glob("*.py"):
        (copy / "codegen" / path.name).write_text(path.read_text())
    monkeypatch.setattr(cache, "PACKAGE_DIR", copy)
    cache.codegen_digest.cache_clear()
    try:
        before = cache.cache_key(graph, "fwd", "interpreter")
        (copy / "codegen" / "render.py").write_text((copy / "codegen" / "render.py").read_text() + "# x\n")
        cache.codegen_digest.cache_clear()
        assert cache.cache_key(graph, "fwd", "interpreter") != before
    finally:
        monkeypatch.undo()
        cache.codegen_digest.cache_clear()


def test_cache_folder_defaults_to_the_user_cache(tmp_path, monkeypatch):
    from attngen import env

    monkeypatch.setenv("ATTNGEN_CACHE_DIR", "~/kernels")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert env.cache_dir() == tmp_path / "kernels"
    monkeypatch.delenv("ATTNGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert env.cache_dir() == tmp_path / "xdg" / "attngen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert env.cache_dir() == tmp_path / ".cache" / "attngen"
    assert cache.root() == tmp_path / ".cache" / "attngen" / "v1"


def test_triton_cache_goes_inside_ours_unless_the_user_chose(tmp_path, monkeypatch):
    from attngen import env

    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "ours"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert env.point_triton_cache() == tmp_path / "ours" / "triton"
    assert cache.triton.knobs.cache.dir == str(tmp_path / "ours" / "triton")   # what Triton reads
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "theirs"))
    assert env.point_triton_cache() == tmp_path / "theirs"
    assert cache.triton.knobs.cache.dir == str(tmp_path / "theirs")


def test_key_parts_name_every_ingredient(small_spec):
    graph = emit.generate(attngen.load_spec(small_spec("k_parts")), "fwd").graph
    parts = cache.key_parts(graph, "fwd", "sm_90")
    assert parts["ir"] == graph.content_hash()
    assert parts["templates"] == render.template_digest()
    assert {"attngen", "torch", "triton", "arch", "constants"} <= set(parts)
    assert cache.cache_key(graph, "fwd", "sm_90") != cache.cache_key(graph, "fwd", "sm_80")
    assert cache.cache_key(graph, "fwd", "sm_90") != cache.cache_key(graph, "bwd", "sm_90")


# -- layout and hits -------------------------------------------------------------------------
def test_entry_layout_and_checksums(small_spec, cache_dir):
    spec = attngen.load_spec(small_spec("layout", mask={"band": 3}))
    kernel = cache.generated(spec, "fwd", arch="interpreter")
    key = cache.cache_key(kernel.graph, "fwd", "interpreter")
    folder = cache_dir / "v1" / "interpreter" / f"layout-{key[:16]}"
    assert sorted(p.name for p in folder.iterdir()) == ["ir.json", "kernel_fwd.py", "meta.json", "spec.yaml"]
    assert (folder / "kernel_fwd.py").read_text() == kernel.source
    assert attngen.load_spec(yaml.safe_load((folder / "spec.yaml").read_text())) == spec
    assert json.loads((folder / "ir.json").read_text()) == json.loads(json.dumps(kernel.graph.to_json()))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["key"] == key and meta["kind"] == "fwd" and meta["spec_name"] == "layout"
    assert set(meta["files"]) == {"ir.json", "kernel_fwd.py", "spec.yaml"}
    assert write_source(kernel.source) == folder / "kernel_fwd.py"      # imported from the entry
    assert not any(p.name.startswith(".") and any(p.iterdir()) for p in folder.parent.iterdir()
                   if p.name in (".staging", ".trash"))


def test_second_lookup_skips_lowering_and_codegen(small_spec, monkeypatch):
    spec = attngen.load_spec(small_spec("warm", mask={"band": 5}))
    cold = cache.generated(spec, "fwd", arch="interpreter")
    assert cache.STATS["builds"] == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a warm lookup lowered the spec again")
    monkeypatch.setattr(cache, "generate", refuse)
    warm = cache.generated(spec, "fwd", arch="interpreter")
    assert cache.STATS["index_hits"] == 1
    assert warm.source == cold.source and warm.kernel_name == cold.kernel_name
    assert warm.graph.content_hash() == cold.graph.content_hash()
    assert warm.graph.to_json() == cold.graph.to_json()
    # Facts come back as the objects the passes wrote, not as their JSON text.
    assert list(warm.graph.facts["bounds"]) == list(cold.graph.facts["bounds"])
    assert warm.graph.node("mask").attrs["predicate"] == cold.graph.node("mask").attrs["predicate"]


def test_stale_index_falls_back_to_the_key(small_spec, cache_dir):
    spec = attngen.load_spec(small_spec("stale"))
    cache.generated(spec, "fwd", arch="interpreter")
    for index in cache_dir.glob("v1/interpreter/index/*.json"):
        index.write_text("{not json")
    cache.generated(spec, "fwd", arch="interpreter")
    assert cache.STATS["key_hits"] == 1 and cache.STATS["builds"] == 1


# -- corruption ------------------------------------------------------------------------------
def _truncate(folder):
    path = folder / "kernel_fwd.py"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _bad_meta(folder):
    (folder / "meta.json").write_text('{"key": "')


def _missing_ir(folder):
    (folder / "ir.json").unlink()


@pytest.mark.parametrize("damage", [_truncate, _bad_meta, _missing_ir], ids=["truncated-kernel",
                                                                              "bad-meta-json", "missing-ir"])
def test_corrupt_entry_is_rebuilt_with_a_warning(small_spec, cache_dir, damage):
    spec = attngen.load_spec(small_spec("corrupt", causal=True))
    kernel = cache.generated(spec, "fwd", arch="interpreter")
    (folder,) = [p for p in (cache_dir / "v1" / "interpreter").iterdir() if p.name.startswith("corrupt-")]
    damage(folder)
    with pytest.warns(cache.CacheWarning, match="corrupt"):
        again = cache.generated(spec, "fwd", arch="interpreter")
    assert cache.STATS["discarded"] == 1 and cache.STATS["builds"] == 2
    assert again.source == kernel.source
    assert cache.read_entry(folder).source == kernel.source


def test_list_and_clear(small_spec, cache_dir):
    for name in ("listed_a", "listed_b"):
        cache.generated(attngen.load_spec(small_spec(name)), "fwd", arch="interpreter")
    entries = cache.list_entries()
    assert [(e.spec_name, e.kind, e.arch, e.problem) for e in entries] == [
        ("listed_a", "fwd", "interpreter", None), ("listed_b", "fwd", "interpreter", None)]
    assert all(e.size > 1000 for e in entries)
    _truncate(entries[0].path)
    assert cache.list_entries()[0].problem is not None
    assert cache.clear("listed_a") == 1
    assert [e.spec_name for e in cache.list_entries()] == ["listed_b"]
    assert cache.clear() == 1
    assert cache.list_entries() == [] and not (cache_dir / "v1").exists()


def test_log_says_what_compiled_hit_and_took(small_spec, caplog):
    spec = attngen.load_spec(small_spec("logged", causal=True))
    with caplog.at_level(logging.INFO, logger="attngen"):
        cache.generated(spec, "fwd", arch="interpreter")
        cache.generated(spec, "fwd", arch="interpreter")
    first, second = (r.getMessage() for r in caplog.records if r.name == "attngen.runtime")   # the cache's lines
    assert "cache miss" in first and "logged fwd" in first and "lowering+codegen" in first
    assert "cache hit" in second and "lookup" in second


def test_an_index_hit_keeps_the_generated_kind(small_spec):
    """A linear spec's "bwd" is generated as "linear_bwd"; read back through the index it must be
    the same kind, so that the runtime picks the linear launcher and its kernels' signatures."""
    spec = attngen.load_spec(small_spec("warm_linear", kind="linear", feature_map="elu1", causal=True))
    cold = cache.generated(spec, "bwd", arch="interpreter")
    warm = cache.generated(spec, "bwd", arch="interpreter")
    assert cache.STATS["index_hits"] == 1
    assert cold.kind == warm.kind == "linear_bwd" and warm.signatures == cold.signatures
