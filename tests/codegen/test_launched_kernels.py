"""The kernel judged without a GPU is the kernel a launch runs.

`aot.compile_as_launched` compiles from the keyword arguments a launcher builds for one call, through
Triton's own JIT binder: ints equal to 1 become constants, ints divisible by 16 and aligned pointers
carry divisibility hints, exactly as at a launch. `attngen emit --stage sass --n N` prints that
kernel with its `# config:` and `# resources:` lines (SPEC.md, "Inspecting the kernels a launch
would run"). Compile tier: sm_90, fp16, n = 4096, no GPU needed.
"""
import re

import pytest
import torch

import attngen as A
from attngen.codegen.aot import compile_as_launched, resource_usage

CONFIG = re.compile(r"^# config: BLOCK_M=(\d+) BLOCK_N=(\d+) num_warps=(\d+) num_stages=(\d+)(?: \((\w+): \w+\))?$",
                    re.M)
RESOURCES = re.compile(r"^# resources: registers=(\d+) shared=(\d+) spills=(\d+)(?: \((\w+): \w+\))?$", re.M)


def _kernels(text: str) -> dict[str, str]:
    """{kernel role: its SASS} of an emitted text (one kernel: role "fwd")."""
    parts = re.split(r"^# ---- (\w+): \w+ ----$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2])) if len(parts) > 1 else {"fwd": text}


@pytest.mark.compile
def test_compiled_as_launched_takes_the_launch_specialisation():
    """Strides equal to 1 become constants, lengths divisible by 16 give aligned vector loads
    (cp.async); an odd length is another specialisation, as at a launch."""
    launcher = A.compile("specs/mha.yaml").launcher("fwd")
    arguments = launcher.aot_arguments(torch.float16, 4096, 4096)
    cfg = launcher.spill_free_config("sm_90", torch.float16)
    _, args, warps, stages = arguments(cfg)
    even = compile_as_launched(launcher.jit_function("fwd"), args, target="sm_90", num_warps=warps,
                               num_stages=stages)
    names = even.src.fn.arg_names
    constants = {names[path[0]]: value for path, value in even.src.constants.items()}
    assert constants["stride_qd"] == 1 and constants["stride_kd"] == 1
    assert "cp.async" in even.asm["ptx"]
    odd_args = launcher.aot_arguments(torch.float16, 4095, 4095)(cfg)[1]
    odd = compile_as_launched(launcher.jit_function("fwd"), odd_args, target="sm_90", num_warps=warps,
                              num_stages=stages)
    assert even.hash != odd.hash and even.src.attrs != odd.src.attrs


@pytest.mark.compile
@pytest.mark.parametrize("spec, kernel", [
    pytest.param(s, k, id=f"{s}-{k}") for s in ("mha", "gqa", "mistral_sliding_window", "longformer")
    for k in ("fwd", "bwd")])
def test_emitted_sass_is_the_launched_kernel_on_wgmma_without_spills(spec, kernel):
    text = A.emit(f"specs/{spec}.yaml", kernel=kernel, stage="sass", target="sm_90", n=4096)
    configs = {m.group(5) or "fwd": tuple(map(int, m.groups()[:4])) for m in CONFIG.finditer(text)}
    resources = {m.group(4) or "fwd": tuple(map(int, m.groups()[:3])) for m in RESOURCES.finditer(text)}
    kernels = _kernels(text)
    tile_walkers = ("fwd",) if kernel == "fwd" else ("dkdv", "dq")
    assert set(tile_walkers) <= set(configs) and set(resources) == set(kernels)
    for role, (registers, _, spills) in resources.items():
        assert spills == 0 and registers <= 255, (role, resources[role])
    for role in tile_walkers:
        assert "HGMMA" in kernels[role], f"{spec} {role}: no wgmma in the tensor-core loops"
    head_dim = A.load_spec(f"specs/{spec}.yaml").head_dim
    if kernel == "fwd" and head_dim == 128:
        assert configs["fwd"][1] >= 64, f"{spec}: BLOCK_N {configs['fwd'][1]} at head dim 128"


@pytest.mark.compile
def test_gqa_sliding_window_backward_in_bf16_is_on_wgmma_without_spills():
    """Issue 13's backward target: the GQA sliding-window d128 backward in bf16 (sm_90, n = 4096, as
    launched): dK/dV and dQ on wgmma, no kernel with spills."""
    text = A.emit("specs/mistral_sliding_window.yaml", kernel="bwd", stage="sass", target="sm_90", n=4096,
                  dtype=torch.bfloat16)
    kernels = _kernels(text)
    assert {"dkdv", "dq"} <= set(kernels)
    assert all("HGMMA" in kernels[role] for role in ("dkdv", "dq"))
    assert all(spills == "0" for *_, spills, _ in RESOURCES.findall(text))


@pytest.mark.compile
def test_emit_decode_at_a_paged_shape_names_its_kernels():
    text = A.emit("specs/gqa.yaml", kernel="decode", stage="sass", target="sm_90", n=8192, batch=2,
                  page_size=16)
    assert text.startswith("# attngen gqa decode kernel, sass for sm_90 fp16, as launched at n=8192 batch=2 page_size=16")
    kernels = _kernels(text)
    assert set(kernels) == {"decode", "merge"}          # batch 2 × 8 kv heads: split across the keys
    assert all(resource[2] == "0" for resource in RESOURCES.findall(text))
    contiguous = A.emit("specs/gqa.yaml", kernel="decode", stage="ptx", target="sm_90", n=8192, batch=64)
    assert "contiguous cache" in contiguous.splitlines()[0]


@pytest.mark.compile
def test_paged_decode_loop_is_within_15_percent_of_a_contiguous_cache():
    """gqa decode (sm_90, fp16, 8192 keys), the kernel a launch runs: with 16-token pages (four
    page-table entries per 64-key tile) and with 128-token pages (a tile inside one page), the
    full-tile loop takes at most 1.15x the instructions of the same loop over a contiguous cache,
    at the same tiles, without spills. Before Triton 3.9 the kernel addresses key by key
    (`RESHAPED_ROWS`): there the bound guards that form, 1.6x (3.6: 497 against 321 at 16-token
    pages, 1.55x)."""
    from attngen.codegen.aot import sass_loops
    from attngen.runtime.decode import RESHAPED_ROWS

    def full_loop(page_size):
        text = A.emit("specs/gqa.yaml", kernel="decode", stage="sass", target="sm_90", n=8192,
                      page_size=page_size)
        assert all(resource[2] == "0" for resource in RESOURCES.findall(text))
        config = [m.groups()[:4] for m in CONFIG.finditer(text) if m.group(5) == "decode"]
        return config, min(n for n in sass_loops(_kernels(text)["decode"]) if n > 1)

    contiguous_config, contiguous = full_loop(None)
    for page_size in (16, 128):
        config, paged = full_loop(page_size)
        assert config == contiguous_config
        assert paged <= (1.15 if RESHAPED_ROWS else 1.6) * contiguous, (page_size, paged, contiguous)


def test_emit_refuses_a_bad_shape():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        A.emit("specs/mha.yaml", stage="ptx", n=0)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        A.emit("specs/gqa.yaml", kernel="decode", stage="ptx", batch=True)


@pytest.mark.compile
def test_search_without_a_gpu_judges_the_launched_kernel():
    """The configuration search compiles the launch's own specialisation: the chosen kernel's
    resources equal those of the same launch compiled directly."""
    launcher = A.compile("specs/mistral_sliding_window.yaml").launcher("fwd")
    cfg = launcher.spill_free_config("sm_90", torch.float16)
    direct = launcher.compile_for("sm_90", torch.float16, cfg)
    assert resource_usage(direct).spills == 0 and cfg.block_n >= 64
    assert any(c is direct for c in launcher.compiled.values())      # the search's own, kept


@pytest.mark.compile
def test_causal_forward_is_lean():
    """Causal d64 (sm_90, fp16, n = 4096), the kernel a launch runs: no loop for partial tiles
    before the full ones (L(i) is unbounded: provably empty), so two tile loops, both on wgmma;
    registers within the tutorial's + 8 (126 + 8) at the same tiles."""
    from attngen.codegen.aot import sass_loops

    spec = A.Spec(name="lean_causal", query_heads=16, kv_heads=16, head_dim=64, causal=True)
    text = A.emit(spec, stage="sass", target="sm_90", n=4096)
    (config,) = [tuple(map(int, m.groups()[:4])) for m in CONFIG.finditer(text)]
    (registers, _, spills), = [tuple(map(int, m.groups()[:3])) for m in RESOURCES.finditer(text)]
    assert config == (128, 64, 8, 3) and spills == 0 and registers <= 134
    assert len([n for n in sass_loops(text) if n > 1]) == 2
    source = A.emit(spec)
    assert "# partial, left" not in source and source.count("for key_tile in range(") == 2


# Triton's fused-attention tutorial compiled the same way (Triton 3.9, sm_90, fp16, n = 4096,
# 128x64 / 8 warps): instructions in its loop over full key tiles (benchmarks/RESULTS.md).
TUTORIAL_FULL_LOOP = {(64, False): 299, (64, True): 300, (128, False): 385, (128, True): 385}


@pytest.mark.compile
@pytest.mark.parametrize("head_dim, causal", list(TUTORIAL_FULL_LOOP),
                         ids=lambda x: {True: "causal", False: "dense"}.get(x, f"d{x}"))
def test_full_tile_loop_is_no_longer_than_the_tutorials(head_dim, causal):
    """The forward's loop over full key tiles (the first loop: under causal the diagonal's partial
    loop follows it), at the tutorial's tiles, takes no more instructions than the tutorial's."""
    from attngen.codegen.aot import sass_loops

    spec = A.Spec(name="lean", query_heads=16, kv_heads=16, head_dim=head_dim, causal=causal)
    text = A.emit(spec, stage="sass", target="sm_90", n=4096)
    (config,) = [tuple(map(int, m.groups()[:4])) for m in CONFIG.finditer(text)]
    assert config[:3] == (128, 64, 8)
    loops = [n for n in sass_loops(text) if n > 1]
    assert len(loops) == (2 if causal else 1) and "HGMMA" in text
    assert loops[0] <= TUTORIAL_FULL_LOOP[head_dim, causal], loops


@pytest.mark.compile
@pytest.mark.parametrize("spec", ["mha", "mistral_sliding_window"])
def test_tma_forward_reads_through_the_tensor_memory_accelerator(spec, monkeypatch):
    """ATTNGEN_TMA=1: the dense and the interval forward, compiled for sm_90 as launched, load K and
    V with UTMALDG, stay on wgmma and do not spill; the default stays the pointer path."""
    monkeypatch.setenv("ATTNGEN_TMA", "1")
    text = A.emit(f"specs/{spec}.yaml", stage="sass", target="sm_90", n=4096)
    assert "USE_TMA=True" in text.splitlines()[1]
    (registers, _, spills), = [tuple(map(int, m.groups()[:3])) for m in RESOURCES.finditer(text)]
    assert "UTMALDG" in text and "HGMMA" in text and spills == 0 and registers <= 255
    monkeypatch.delenv("ATTNGEN_TMA")
    assert "UTMALDG" not in A.emit(f"specs/{spec}.yaml", stage="sass", target="sm_90", n=4096)
