"""Call-time inputs under context parallelism (SPEC.md: inputs with an N axis are sharded like q/k/v).

Formulas read inputs at absolute positions (`prefix[b]`, `bias[h, i - j + 32]`, `doc[b, j]`), and
a chunk pair's kernel may read any position of them, so every rank calls its kernels with the
whole inputs: one with an `Nq` or `Nk` axis arrives as this rank's shard (`shard(x, dim=axis)`, on
every such axis) and is gathered whole once per call (a few bytes per position, next to K/V's
Hkv·D per position); one without is replicated and used as given. The sink is not an input here:
it joins each row once after the merge (`ring.Ring.sink_gradient`).

Gradients (`grad: true`): each chunk pair's kernels give that pair's share of the whole input's
gradient; a rank sums its pairs in call order, the ranks' sums are added in rank order (the same
bits every run), and a sharded input gets back its own shard of the sum.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime.inputs import call_inputs
from ..spec import Spec
from .layout import shard, unshard

SEQUENCE_AXES = ("Nq", "Nk")


def sequence_axes(decl) -> tuple[int, ...]:
    """The dims of an input declaration that run along the sequence (sharded under context
    parallelism)."""
    return tuple(n for n, size in enumerate(decl.shape) if size in SEQUENCE_AXES)


def formula_inputs(spec: Spec) -> list:
    """The declarations of the inputs the kernels read (everything but the sink)."""
    return [d for d in spec.all_inputs if d.name != "sink"]


def whole_inputs(spec: Spec, given: dict, *, n: int, batch: int, group, layout: str, device) -> dict:
    """name → the whole input on every rank (sequence axes gathered), checked against the
    declarations at the whole length `n` (ShapeError naming the input otherwise)."""
    whole = {}
    for decl in formula_inputs(spec):
        t = given.get(decl.name)
        if isinstance(t, torch.Tensor):
            for axis in sequence_axes(decl):
                t = unshard(t.detach().contiguous(), dim=axis, group=group, layout=layout)
        whole[decl.name] = t
    if spec.sink:
        whole["sink"] = given.get("sink")
    unknown = {k: v for k, v in given.items() if k not in whole}
    checked = call_inputs(spec, {**whole, **unknown}, batch=batch, nq=n, nk=n, device=device)
    return {name: t for name, t in checked.items() if name != "sink"}


def local_gradient(decl, whole_grad: torch.Tensor, *, world: int, group, layout: str) -> torch.Tensor:
    """This rank's gradient of `decl`'s input: every rank's share of the whole gradient added in
    rank order, then this rank's shard of it where the input is sharded."""
    total = whole_grad
    if world > 1:
        shares = [torch.empty_like(whole_grad) for _ in range(world)]
        dist.all_gather(shares, whole_grad.contiguous(), group=group)
        total = shares[0].clone()
        for share in shares[1:]:
            total += share
    for axis in sequence_axes(decl):
        total = shard(total, dim=axis, group=group, layout=layout)
    return total
