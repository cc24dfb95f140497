"""FlexAttention / attention-gym examples ported to attngen, each checked against the float64 reference.

Every port is the attngen spec a Flex user would write for the gym's `mask_mod`/`score_mod` (the
source named beside it), run through the generated kernels (Triton's interpreter on a CPU) at odd
sizes, Nq != Nk, bottom-right aligned, and compared per named tensor (out, lse, dq, dk, dv and the
gradient of each learned input) with `attngen.reference` in float64.

    python examples/attention_gym_ports.py            # fp32, B=1, Nq=29, Nk=45: prints the table
    python examples/attention_gym_ports.py --dtype bfloat16 --nq 97 --nk 131

A port the kernels cannot run yet prints why (`attngen.codegen.support`) instead of a figure.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import torch

import attngen
from attngen.checking import GRAD_TOLERANCE, TOLERANCE, relative_error
from attngen.errors import CompileError


@dataclass(frozen=True)
class Port:
    name: str
    source: str                                  # the attention-gym / Flex example it ports
    spec: dict                                   # attngen's spec (YAML fields)
    inputs: Callable[[int, int, torch.Generator], dict] = field(default=lambda b, h, g: {})
    segments: bool = False                       # packed documents: pass seg_q / seg_k


def _learned(*shape, scale=1.0, offset=0.0):
    return lambda b, h, g: torch.randn(*[{"B": b, "Hq": h}.get(d, d) for d in shape], generator=g) * scale + offset


PORTS = [
    Port("causal", "attention-gym causal_mask", {"causal": True}),
    Port("sliding window", "attention-gym sliding_window (causal, window 8)", {"mask": "j <= i and i - j <= 8"}),
    Port("prefix-LM", "attention-gym prefix_lm_causal (prefix 10)", {"mask": "j <= i or j < 10"}),
    Port("prefix-LM per sequence", "Flex mask_mod over a captured per-batch prefix tensor",
         {"inputs": {"prefix": {"shape": ["B"], "dtype": "int32"}}, "mask": "j <= i or j < prefix[b]"},
         lambda b, h, g: {"prefix": torch.randint(0, 40, (b,), generator=g, dtype=torch.int32)}),
    Port("document", "attention-gym document_mask (not causal)", {"mask": {"segments": True}}, segments=True),
    Port("document + causal", "attention-gym document_mask (causal)", {"causal": True, "mask": {"segments": True}},
         segments=True),
    Port("dilated sliding window", "attention-gym dilated_sliding_window (window 16, dilation 2)",
         {"mask": "abs(i - j) <= 16 and (i - j) % 2 == 0"}),
    Port("NATTEN 2-D", "attention-gym natten (7x7 on a 12-wide grid)",
         {"mask": "abs(i // 12 - j // 12) <= 3 and abs(i % 12 - j % 12) <= 3"}),
    Port("T5 relative bias", "Flex score_mod over a learned bias table (T5)",
         {"inputs": {"rel": {"shape": ["Hq", 65], "dtype": "float32", "grad": True}},
          "score": "s + rel[h, min(max(i - j, -32), 32) + 32]"}, lambda b, h, g: {"rel": _learned("Hq", 65)(b, h, g)}),
    Port("ALiBi", "attention-gym alibi (causal, geometric slopes)", {"causal": True, "alibi": True}),
    Port("ALiBi symmetric, learned slopes", "Flex score_mod with a learned per-head slope",
         {"inputs": {"slope": {"shape": ["Hq"], "dtype": "float32", "grad": True}},
          "score": "s - slope[h] * abs(i - j)"}, lambda b, h, g: {"slope": _learned("Hq", scale=0.1, offset=0.2)(b, h, g)}),
    Port("softcap", "attention-gym tanh_softcap (cap 20)", {"causal": True, "softcap": 20.0}),
    Port("softcap as a formula", "Flex score_mod: 20 * tanh(score / 20)", {"causal": True, "score": "20 * tanh(s / 20)"}),
    Port("softcap per head", "Flex score_mod with a per-head cap tensor (Gemma 2 generalised)",
         {"causal": True, "inputs": {"cap": {"shape": ["Hq"], "dtype": "float32"}}, "score": "cap[h] * tanh(s / cap[h])"},
         lambda b, h, g: {"cap": torch.rand(h, generator=g) * 20 + 5}),
    Port("attention sinks", "gpt-oss sinks + sliding window 16", {"causal": True, "mask": {"band": {"left": 15}},
                                                                 "sink": True},
         lambda b, h, g: {"sink": torch.randn(h, generator=g)}),
    Port("score-based window", "Flex score_mod returning -inf outside a window",
         {"score": "where(abs(i - j) <= 8, s, -inf)"}),
    Port("GQA causal", "Flex enable_gqa=True, causal", {"heads": {"query": 4, "kv": 2}, "causal": True}),
    Port("MQA sliding window", "Flex enable_gqa=True, one kv head, window 8",
         {"heads": {"query": 4, "kv": 1}, "mask": "j <= i and i - j <= 8"}),
    Port("MLA shapes", "DeepSeek-V2 head dims (Dqk 24, Dv 16 here)", {"causal": True, "head_dim": {"qk": 24, "v": 16}}),
]


def spec_of(port: Port):
    fields = {"name": "gym_" + port.name.replace(" ", "_").replace("-", "_").replace(",", "").replace("+", "and"),
              "heads": {"query": 4, "kv": 4}, "head_dim": 16, **port.spec}
    return attngen.load_spec(fields)


def documents(n: int) -> torch.Tensor:
    sizes = [n // 4, 1, n // 3]
    return torch.repeat_interleave(torch.arange(4), torch.tensor(sizes + [n - sum(sizes)]))


def measure(port: Port, *, batch: int, nq: int, nk: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """name -> relative error of the kernels against the float64 reference (raises CompileError
    when the kernels cannot run the spec)."""
    spec = spec_of(port)
    attn = attngen.compile(spec)
    gen = torch.Generator().manual_seed(seed)
    dqk, dv = spec.head_dim, spec.value_head_dim or spec.head_dim
    q = torch.randn(batch, spec.query_heads, nq, dqk, generator=gen)
    k = torch.randn(batch, spec.kv_heads, nk, dqk, generator=gen)
    v = torch.randn(batch, spec.kv_heads, nk, dv, generator=gen)
    dout = torch.randn(batch, spec.query_heads, nq, dv, generator=gen)
    inputs = port.inputs(batch, spec.query_heads, gen)
    call = {}
    if port.segments:        # bottom-right: query i is key position i + nk - nq
        seg = documents(nk)
        call = dict(seg_q=seg[nk - nq:], seg_k=seg)
    learned = [d.name for d in spec.all_inputs if d.grad]

    def run(cast, given):        # a float64 call runs the float64 reference, with its autograd
        leaves = [t.to(cast).requires_grad_(True) for t in (q, k, v)]
        ins = {n: (t.clone().requires_grad_(True) if n in learned else t) for n, t in given.items()}
        out, lse = attn(*leaves, **call, **ins, return_lse=True)      # float64: attngen.reference
        out.backward(dout.to(cast))
        grads = {f"d{n}": ins[n].grad for n in learned}
        return {"out": out, "lse": lse, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad, **grads}

    want = run(torch.float64, {n: t.double() if t.is_floating_point() else t for n, t in inputs.items()})
    got = run(dtype, inputs)
    return {name: relative_error(got[name], want[name]) for name in want}


def tolerance(name: str, dtype: torch.dtype) -> float:
    return (TOLERANCE if name in ("out", "lse") else GRAD_TOLERANCE)[dtype]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--nq", type=int, default=29)
    parser.add_argument("--nk", type=int, default=45)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"| port | source | worst error ({args.dtype}, B={args.batch}, Nq={args.nq}, Nk={args.nk}) | per tensor |")
    print("|---|---|---|---|")
    failures = []
    for port in PORTS:
        try:
            errors = measure(port, batch=args.batch, nq=args.nq, nk=args.nk, dtype=dtype)
        except CompileError as err:
            print(f"| {port.name} | {port.source} | not run | {err} |")
            failures.append(f"{port.name}: {err}")
            continue
        worst = max(errors.values())
        cells = ", ".join(f"{n} {e:.1e}" for n, e in errors.items())
        print(f"| {port.name} | {port.source} | {worst:.1e} | {cells} |")
        failures += [f"{port.name} {n}: {e:.2e}" for n, e in errors.items() if not e <= tolerance(n, dtype)]
    if failures:
        raise SystemExit("ports that failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
