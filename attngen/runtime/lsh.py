"""LSH attention at call time (`lsh: {buckets, seed, rounds}`, SPEC.md "Content-based sparsity").

Per call, inside the torch operator (torch.compile sees one opaque call):
1. buckets of every query row (per query head) and key row (per kv head), per round, in float32
   by the generated bucket kernel (lsh_buckets.py: x·R[r], first argmax over [x·R, −x·R]);
2. per round r and (batch, query head): a stable sort of the queries by bucket, and of the keys
   (per kv head: a key's bucket does not depend on the query head, so the group shares one key
   order; K and V are gathered per query head, group x their size, because the kernels walk one
   query order per (batch, head) row);
3. the generated kernels of the spec's *kernel spec* (spec/lsh.py) on the permuted rows, the batch
   and heads flattened (B·Hq rows of one head): `segments` with the sorted bucket ids (attention
   within bucket runs), the mask at the ORIGINAL positions (inputs lsh_i, lsh_j; formulas' batch
   and heads lsh_b, lsh_h, lsh_hk; the user's inputs, `kernel_inputs`; documents and random draws
   permuted with the rows), and the pairs of earlier rounds excluded (inputs lsh_q{r}, lsh_k{r})
   so that the rounds' key sets are disjoint;
4. the tile lists, exact: the kernels visit exactly the tiles that hold an allowed pair, FULL where
   every pair is allowed (no mask evaluated there). For interval masks (causal, band, blocks and
   all of them: `tiles_interval.key_bounds`) each sorted query row's allowed keys in its bucket are
   ONE run of the sorted keys (a bucket's keys keep their original order), found by binary search
   on (bucket, position); the tiles the runs touch are the non-empty ones and a tile is FULL iff
   it lies inside every row's run: O(Nq log Nk + tiles touched), no pair evaluated. In rounds
   after the first, the keys of a run that share a bucket with the row in an earlier round are
   counted per (row, tile) by inclusion-exclusion over the earlier rounds, each count two binary
   searches (`_excluded_counts`), still no pair evaluated. Masks that are not intervals (and
   rounds past MAX_COUNTED_ROUNDS) settle their candidate tiles (the tile pairs whose bucket
   ranges meet) pair by pair (bucket, mask at original positions, earlier rounds);
5. outputs and lse scattered back to the original order, the rounds merged by lse (merge.py).
Backward: the same permutations (recomputed from the same q and k: selection is not
differentiated); each round's kernels get the merged out and lse (their exact share of the
gradients, as context parallelism's chunk pairs do), dq, dk, dv scattered back and summed over
rounds (dk, dv also over each kv group), grad inputs' gradients summed over rounds in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..analysis.tiles_interval import key_bounds
from ..spec import Spec, kernel_spec
from ..spec import alibi_slopes
from ..spec.lsh import DOC_K, DOC_Q, KEY_POS, QUERY_POS, ROW_BATCH, ROW_HEAD, ROW_KV_HEAD, SLOPE, random_input
from ..spec.predicates import Random
from .inputs import call_inputs, grad_inputs
from .launcher import cdiv, ids_int32
from .merge import merge
from .select import sequence_rows, tile_csr

# Pair evaluations per chunk when the candidate tiles are settled (bounds the working memory).
SETTLE_CHUNK_PAIRS = 1 << 22
# Rounds whose excluded keys are counted (2**(r) - 1 subsets of the earlier rounds each); later ones settle.
MAX_COUNTED_ROUNDS = 4


@dataclass
class RoundTiles:
    """The tiles one round's kernels visit: per flattened (batch, head) row, the tile pairs holding
    an allowed pair of the permuted rows, classified exactly (`lists`)."""

    seg_q: torch.Tensor             # (rows, Nq) the sorted query buckets
    seg_k: torch.Tensor             # (rows, Nk) the sorted key buckets
    allowed: object                 # (rows (C,), query rows (C, M), key rows (C, N)) → bool (C, M, N)
    runs: tuple | None = None       # interval masks: (lo, hi) (rows, Nq), each query row's keys [lo, hi)
    earlier: list = field(default_factory=list)   # [(query buckets (rows, Nq), key buckets (rows, Nk))]
    buckets: int = 2
    _lists: dict = field(default_factory=dict)

    def lists(self, block_m: int, block_n: int, *, by_key: bool = False) -> tuple:
        """(partial_ptr, partial_idx, full_ptr, full_idx, list_rows) (see `select.tile_csr`)."""
        key = (block_m, block_n)
        if key not in self._lists:
            self._lists[key] = self.classes(block_m, block_n)
        rows, t, u, cls = self._lists[key]
        nq, nk = self.seg_q.shape[1], self.seg_k.shape[1]
        return tile_csr(rows, t, u, cls, self.seg_q.shape[0], cdiv(nq, block_m), cdiv(nk, block_n), by_key=by_key)

    def classes(self, block_m: int, block_n: int) -> tuple:
        """(row, t, u, cls) of every non-empty tile, in ascending (row, t, u): cls 1 partial, 2 full."""
        if self.runs is None:
            return self.settled(*self.candidates(block_m, block_n), block_m, block_n)
        if len(self.earlier) < MAX_COUNTED_ROUNDS and self.codes_fit():
            return self.counted_tiles(block_m, block_n)
        return self.settled(*self.run_tiles(block_m, block_n)[:3], block_m, block_n)

    def settled(self, rows, t, u, block_m: int, block_n: int) -> tuple:
        """(row, t, u, cls) of the candidate tiles (row, t, u) that hold an allowed pair, each
        settled on its pairs (bucket, `allowed`), in chunks of SETTLE_CHUNK_PAIRS pairs."""
        cls = torch.zeros(len(t), dtype=torch.int8, device=t.device)
        step = max(1, SETTLE_CHUNK_PAIRS // (block_m * block_n))
        nq, nk = self.seg_q.shape[1], self.seg_k.shape[1]
        arange_m = torch.arange(block_m, device=t.device)
        arange_n = torch.arange(block_n, device=t.device)
        for start in range(0, len(t), step):
            r, tt, uu = rows[start:start + step], t[start:start + step], u[start:start + step]
            qi, kj = tt[:, None] * block_m + arange_m, uu[:, None] * block_n + arange_n      # (C, M), (C, N)
            real = (qi < nq)[:, :, None] & (kj < nk)[:, None, :]
            qi, kj = qi.clamp(max=nq - 1), kj.clamp(max=nk - 1)
            same = self.seg_q[r[:, None], qi][:, :, None] == self.seg_k[r[:, None], kj][:, None, :]
            ok = same & self.allowed(r, qi, kj) & real
            full = (ok | ~real).all(dim=(1, 2))
            cls[start:start + step] = torch.where(full, 2, torch.where(ok.any(dim=(1, 2)), 1, 0)).to(torch.int8)
        keep = cls > 0
        return rows[keep], t[keep], u[keep], cls[keep]

    def run_entries(self, block_n: int) -> tuple:
        """(query row (flat over rows x Nq), key tile u, a, b): every key tile each row's run touches,
        with the run's keys [a, b) inside the tile."""
        lo, hi = self.runs
        u0, u1 = lo // block_n, (hi - 1) // block_n
        counts = torch.where(hi > lo, u1 - u0 + 1, 0).reshape(-1)
        row = torch.repeat_interleave(torch.arange(len(counts), device=lo.device), counts)
        offset = torch.arange(len(row), device=lo.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts,
                                                                                   counts)
        u = u0.reshape(-1)[row] + offset
        a = torch.maximum(lo.reshape(-1)[row], u * block_n)
        b = torch.minimum(hi.reshape(-1)[row], (u + 1) * block_n)
        return row, u, a, b

    def run_tiles(self, block_m: int, block_n: int) -> tuple:
        """(row, t, u, inverse, entries) of the tiles the rows' runs touch, ascending; `entries`
        are `run_entries` and inverse maps each to its tile."""
        nq, nk = self.seg_q.shape[1], self.seg_k.shape[1]
        tiles_q, tiles_k = cdiv(nq, block_m), cdiv(nk, block_n)
        entries = self.run_entries(block_n)
        row, u = entries[:2]
        keys, inverse = torch.unique(((row // nq) * tiles_q + (row % nq) // block_m) * tiles_k + u,
                                     return_inverse=True)                                  # sorted
        return keys // (tiles_q * tiles_k), (keys // tiles_k) % tiles_q, keys % tiles_k, inverse, entries

    def codes_fit(self) -> bool:
        """The inclusion-exclusion codes (bucket tuples, with positions and rows) fit in int64."""
        rows, nk = self.seg_k.shape
        return self.buckets ** max(len(self.earlier), 1) * (nk + 1) * (rows + 1) < 1 << 62

    def counted_tiles(self, block_m: int, block_n: int) -> tuple:
        """(row, t, u, cls) from the runs: per (query row, key tile) the run's keys minus those that
        share a bucket with the row in an earlier round (`_excluded_counts`); a tile is non-empty
        where some row keeps a key, FULL where every real row keeps every key of the tile."""
        nq, nk = self.seg_q.shape[1], self.seg_k.shape[1]
        rows, t, u, inverse, (entry_row, entry_u, a, b) = self.run_tiles(block_m, block_n)
        kept = (b - a) - _excluded_counts(self.earlier, self.buckets, entry_row, a, b)
        whole = kept == torch.clamp((entry_u + 1) * block_n, max=nk) - entry_u * block_n
        nonempty = torch.zeros(len(t), dtype=torch.int64, device=t.device).index_add_(0, inverse, (kept > 0).long())
        whole_rows = torch.zeros(len(t), dtype=torch.int64, device=t.device).index_add_(0, inverse, whole.long())
        real_rows = torch.clamp(nq - t * block_m, max=block_m)
        cls = torch.where(whole_rows == real_rows, 2, 1).to(torch.int8)
        keep = nonempty > 0
        return rows[keep], t[keep], u[keep], cls[keep]

    def candidates(self, block_m: int, block_n: int) -> tuple:
        """(row, t, u): the tile pairs whose bucket ranges meet. Ids are sorted, so query tile t
        (buckets lo..hi) meets the key tiles u0..u1-1 with hi_k[u] >= lo and lo_k[u] <= hi."""
        def ends(seg, block):
            n = seg.shape[1]
            first = torch.arange(0, n, block, device=seg.device)
            last = torch.clamp(first + block, max=n) - 1
            return seg[:, first].contiguous(), seg[:, last].contiguous()

        lo_q, hi_q = ends(self.seg_q, block_m)
        lo_k, hi_k = ends(self.seg_k, block_n)
        u0 = torch.searchsorted(hi_k, lo_q, side="left")                  # (rows, T)
        u1 = torch.searchsorted(lo_k, hi_q, side="right")
        counts = (u1 - u0).clamp(min=0).reshape(-1)
        pair = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        offset = torch.arange(len(pair), device=counts.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        tiles_q = lo_q.shape[1]
        return pair // tiles_q, pair % tiles_q, u0.reshape(-1)[pair] + offset


@dataclass
class Round:
    """One round's permutation of a call: query order (B, Hq, Nq), key order per query head
    (B, Hq, Nk), and what its kernels read (segment ids, inputs, tile lists)."""

    perm_q: torch.Tensor
    perm_k: torch.Tensor
    seg_q: torch.Tensor
    seg_k: torch.Tensor
    inputs: dict
    tiles: RoundTiles


class LshAttention:
    """Forward and backward of one lsh spec through its kernel spec's launchers."""

    def __init__(self, spec: Spec, forward_launcher, backward_launcher=None, bucket_launcher=None):
        self.spec = spec
        self.kernel_spec = kernel_spec(spec)
        self.fwd = forward_launcher
        self.bwd = backward_launcher
        self._hash = bucket_launcher
        # interval masks (tiles_interval.key_bounds evaluates them): lists from runs, no pair evaluated
        self.interval = key_bounds(spec.effective_mask, torch.zeros(1, dtype=torch.int64)) is not None

    @property
    def hash(self):
        """The spec's bucket kernel (lsh_buckets.py), through the disk cache, made on first use."""
        if self._hash is None:
            from . import cache
            from .lsh_buckets import BucketLauncher
            self._hash = BucketLauncher(cache.generated(self.spec, "lsh"))
        return self._hash

    def plan(self, q, k, q_offset: int, user: dict | None = None, seg_q=None, seg_k=None) -> list[Round]:
        """The rounds of a call (see the module docstring): buckets, sorts, inputs, tile lists.
        `user`: the call's checked inputs (formulas read them, the kernels through `kernel_inputs`);
        seg_q, seg_k: a segments mask's document ids, carried through each round's permutation."""
        spec, lsh = self.spec, self.spec.lsh
        batch, heads, nq, _ = q.shape
        nk, group = k.shape[2], spec.group
        bq = self.hash.buckets(q, "q")                                           # (R, B, Hq, Nq)
        bk = self.hash.buckets(k, "k").repeat_interleave(group, dim=2)           # (R, B, Hq, Nk)
        sorted_q = [torch.sort(bq[r], dim=-1, stable=True) for r in range(lsh.rounds)]
        sorted_k = [torch.sort(bk[r], dim=-1, stable=True) for r in range(lsh.rounds)]
        user = user or {}
        ctx = spec.eval_context(nq, nk, q_offset, seg_q, seg_k, device=q.device, inputs=user, batch=batch)
        docs = None
        if spec.uses_segments:          # (B, Hq, N) ids per (batch, head) row, permuted per round below
            docs = [ids_int32(torch.as_tensor(s, device=q.device), name).expand(batch, n)[:, None, :]
                    .expand(batch, heads, n) for s, n, name in ((seg_q, nq, "seg_q"), (seg_k, nk, "seg_k"))]
        mask = spec.effective_mask
        declared = {d.name for d in self.kernel_spec.inputs}
        shared = self.kernel_inputs(user, batch, heads, q.device)
        drawn = {}                      # random masks: each original query row's drawn key blocks
        for pred in mask.walk():
            if isinstance(pred, Random) and random_input(pred) in declared:
                first, table = ctx.random_table(pred)
                block_of = torch.div(torch.arange(nq, device=q.device) + ctx.q_offset, pred.block,
                                     rounding_mode="floor") - first
                drawn[random_input(pred)] = table.to(q.device)[block_of].to(torch.int64)   # (Nq, per_row)
        rounds = []
        for r in range(lsh.rounds):
            (seg_q, perm_q), (seg_k, perm_k) = sorted_q[r], sorted_k[r]
            flat = {"pq": perm_q.reshape(batch * heads, nq), "pk": perm_k.reshape(batch * heads, nk)}
            inputs = {QUERY_POS: (flat["pq"] + q_offset).to(torch.int32), KEY_POS: flat["pk"].to(torch.int32),
                      **shared}
            for name, rows in drawn.items():     # (B·Hq, Nq, per_row) in the round's query order
                inputs[name] = rows[flat["pq"]].to(torch.int32)
            doc = {}
            if docs is not None:
                doc = {"q": docs[0].gather(-1, perm_q).reshape(batch * heads, nq),
                       "k": docs[1].gather(-1, perm_k).reshape(batch * heads, nk)}
                inputs[DOC_Q], inputs[DOC_K] = doc["q"].to(torch.int32), doc["k"].to(torch.int32)
            if spec.alibi:                   # row b * Hq + h takes head h's slope
                inputs[SLOPE] = alibi_slopes(heads).to(device=q.device, dtype=torch.float32).repeat(batch)
            earlier = []
            for e in range(lsh.rounds - 1):
                if e < r:
                    pq = bq[e].gather(-1, perm_q).reshape(batch * heads, nq)
                    pk = bk[e].gather(-1, perm_k).reshape(batch * heads, nk)
                    earlier.append((pq, pk))
                else:            # a round not run yet excludes nothing: -1 never equals -2
                    pq = torch.full((batch * heads, nq), -1, device=q.device)
                    pk = torch.full((batch * heads, nk), -2, device=q.device)
                inputs[f"lsh_q{e}"], inputs[f"lsh_k{e}"] = pq.to(torch.int32), pk.to(torch.int32)

            def allowed(rows, qi, kj, flat=flat, earlier=earlier, doc=doc):
                ii = flat["pq"][rows[:, None], qi][:, :, None] + ctx.q_offset
                jj = flat["pk"][rows[:, None], kj][:, None, :]
                row = rows[:, None, None]            # formulas read the flattened row's batch and head
                at = replace(ctx, batch=row // heads, heads=row % heads, group=group)
                if doc:
                    at = replace(at, seg_rows=doc["q"][rows[:, None], qi][:, :, None],
                                 seg_cols=doc["k"][rows[:, None], kj][:, None, :])
                ok = mask.evaluate(ii, jj, at)
                for pq, pk in earlier:
                    ok = ok & (pq[rows[:, None], qi][:, :, None] != pk[rows[:, None], kj][:, None, :])
                return ok

            seg_q32 = seg_q.reshape(batch * heads, nq).to(torch.int32)
            seg_k32 = seg_k.reshape(batch * heads, nk).to(torch.int32)
            runs = _runs(mask, seg_q.reshape(batch * heads, nq), seg_k.reshape(batch * heads, nk),
                         inputs[QUERY_POS].long(), flat["pk"]) if self.interval else None
            rounds.append(Round(perm_q, perm_k, seg_q32, seg_k32,
                                {n: t for n, t in inputs.items() if n in declared},
                                RoundTiles(seg_q32, seg_k32, allowed, runs, earlier, lsh.buckets)))
        return rounds

    def checked(self, inputs, q, k) -> dict:
        """The call's inputs (the sinks' logits and the spec's own), checked against the spec."""
        return call_inputs(self.spec, inputs, batch=q.shape[0], nq=q.shape[2], nk=k.shape[2], device=q.device)

    def kernel_inputs(self, user: dict, batch: int, heads: int, device) -> dict:
        """The kernel spec's inputs shared by every round: the flattened rows' batch and heads
        (lsh_b, lsh_h, lsh_hk) and the user's tensors, an axis B padded with zeros to B·Hq rows
        (the kernel spec's B; the kernels read rows lsh_b[b] < B only)."""
        row = torch.arange(batch * heads, device=device, dtype=torch.int32)
        out = {ROW_BATCH: row // heads, ROW_HEAD: row % heads, ROW_KV_HEAD: (row % heads) // self.spec.group}
        for decl in self.spec.inputs:
            t = user[decl.name]
            for axis, dim in enumerate(decl.shape):
                if dim == "B" and heads > 1:
                    pad = list(t.shape)
                    pad[axis] = batch * (heads - 1)
                    t = torch.cat([t, t.new_zeros(pad)], dim=axis)
            out[decl.name] = t
        return out

    def user_gradient(self, decl, grad: torch.Tensor, batch: int) -> torch.Tensor:
        """A kernel spec's input gradient back to the user's shape (the padding's rows dropped)."""
        for axis, dim in enumerate(decl.shape):
            if dim == "B":
                grad = grad.narrow(axis, 0, batch)
        return grad

    def forward(self, q, k, v, q_offset: int, *, inputs=None, count_tiles: bool = False, config=None,
                seg_q=None, seg_k=None):
        """(out, lse[, tiles visited per round]) in the original order; sinks join once, after the
        rounds (merge.py)."""
        batch, heads, nq, _ = q.shape
        nk, dv = k.shape[2], v.shape[3]
        checked = self.checked(inputs, q, k)
        sink = checked.get("sink")
        if nq == 0 or nk == 0:
            out = q.new_zeros((batch, heads, nq, dv))
            lse = torch.full((batch, heads, nq), float("-inf"), device=q.device)
            out, lse = merge([out], [lse], sink=sink)
            return (out, lse, []) if count_tiles else (out, lse)
        outs, lses, visits = [], [], []
        for rnd in self.plan(q, k, q_offset, checked, seg_q, seg_k):
            q_r, k_r, v_r = self.permuted(rnd, q, k, v)
            result = self.fwd.forward(q_r, k_r, v_r, q_offset=0, seg_q=rnd.seg_q, seg_k=rnd.seg_k,
                                      inputs=rnd.inputs, lists=rnd.tiles, count_tiles=count_tiles, config=config)
            out_r, lse_r = result[0], result[1]
            outs.append(_unpermuted(out_r.reshape(batch, heads, nq, dv), rnd.perm_q))
            lses.append(_unpermuted(lse_r.reshape(batch, heads, nq), rnd.perm_q))
            if count_tiles:
                visits.append(result[2])
        out, lse = merge(outs, lses, sink=sink)
        return (out, lse, visits) if count_tiles else (out, lse)

    def backward(self, q, k, v, out, lse, dout, q_offset: int, *, inputs=None, config=None, seg_q=None, seg_k=None):
        """(dq, dk, dv, *d(each grad input)) in the inputs' dtypes and shapes, the inputs' in
        declared order (the sink's last). The inputs' gradients are the rounds' summed in round
        order (deterministic). With sinks, the merged lse holds the sink, so each round's share is
        exact; d sink[h] = -sum over rows of exp(sink[h] - lse) * rowsum(dout * out)."""
        checked = self.checked(inputs, q, k)
        sink = checked.get("sink")
        wanted = [d for d in grad_inputs(self.spec) if d.name != "sink"]
        dinputs = [torch.zeros(checked[d.name].shape, dtype=torch.float32, device=q.device) for d in wanted]
        batch, heads, nq, d = q.shape
        nk, dv, group = k.shape[2], v.shape[3], self.spec.group
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros((batch, heads, nk, d), dtype=torch.float32, device=q.device)
        dvs = torch.zeros((batch, heads, nk, dv), dtype=torch.float32, device=q.device)
        if nq and nk:
            lse = lse.to(torch.float32)
            for rnd in self.plan(q, k, q_offset, checked, seg_q, seg_k):
                q_r, k_r, v_r = self.permuted(rnd, q, k, v)
                out_r, lse_r, dout_r = (_permuted(t, rnd.perm_q).reshape(batch * heads, 1, nq, *t.shape[3:])
                                        for t in (out, lse, dout))
                dq_r, dk_r, dv_r, *di_r = self.bwd.backward(q_r, k_r, v_r, out_r, lse_r, dout_r, q_offset=0,
                                                            seg_q=rnd.seg_q, seg_k=rnd.seg_k, inputs=rnd.inputs,
                                                            lists=rnd.tiles, config=config)
                for acc, decl, g in zip(dinputs, wanted, di_r):
                    acc += self.user_gradient(decl, g.float(), batch)
                dq += _unpermuted(dq_r.reshape(batch, heads, nq, d).float(), rnd.perm_q)
                dk += _unpermuted(dk_r.reshape(batch, heads, nk, d).float(), rnd.perm_k)
                dvs += _unpermuted(dv_r.reshape(batch, heads, nk, dv).float(), rnd.perm_k)
        fold = (batch, heads // group, group)
        grads = (dq.to(q.dtype), dk.view(*fold, nk, d).sum(2).to(k.dtype), dvs.view(*fold, nk, dv).sum(2).to(v.dtype),
                 *dinputs)
        if sink is None:
            return grads
        delta = (dout.float() * out.float()).sum(-1)                               # (B, Hq, Nq)
        weight = torch.exp(sink.float()[None, :, None] - lse.float())
        return (*grads, -(weight * delta).sum(dim=(0, 2)))

    def decode(self, q, k_cache, v_cache, cache_seqlens=None, block_table=None, inputs=None):
        """(out, lse) of Nq new tokens per sequence against a KV cache (contiguous or paged): per
        sequence, its new tokens' buckets against its cache keys' buckets (rows 0..len-1; token t
        at len - Nq + t), through `forward`. The cache's buckets are recomputed each step (no
        bucket cache yet) and the lengths are read on the host."""
        from .decode import check_decode_call
        spec = self.spec
        batch, nq, capacity, _, page_size, seqlens = check_decode_call(spec, q, k_cache, v_cache, cache_seqlens,
                                                                        block_table)
        out = q.new_zeros((batch, spec.query_heads, nq, spec.v_head_dim))
        lse = torch.full((batch, spec.query_heads, nq), float("-inf"), device=q.device)
        for b, n in enumerate(seqlens.tolist()):
            n = max(min(n, capacity), 0)
            keys, values = (sequence_rows(t, b, n, block_table, page_size) for t in (k_cache, v_cache))
            out[b:b + 1], lse[b:b + 1] = self.forward(q[b:b + 1], keys, values, n - nq,
                                                      inputs=self.sequence_inputs(inputs, b, n))
        return out, lse

    def sequence_inputs(self, inputs: dict | None, b: int, n: int) -> dict | None:
        """A decode call's inputs for sequence b alone with its n keys: axes B and Nk narrowed."""
        if not inputs:
            return inputs
        out = dict(inputs)
        for decl in self.spec.inputs:
            t = inputs.get(decl.name)
            if isinstance(t, torch.Tensor) and t.dim() == len(decl.shape):
                for axis, dim in enumerate(decl.shape):
                    t = t.narrow(axis, b, 1) if dim == "B" else t.narrow(axis, 0, min(n, t.shape[axis])) \
                        if dim == "Nk" else t
                out[decl.name] = t
        return out

    def permuted(self, rnd: Round, q, k, v):
        """q, k, v in the round's order, flattened to (B·Hq, 1, N, D) rows (k, v per query head)."""
        batch, heads, nq, _ = q.shape
        group = self.spec.group
        q_r = _permuted(q, rnd.perm_q)
        k_r, v_r = (_permuted(t.repeat_interleave(group, dim=1) if group > 1 else t, rnd.perm_k) for t in (k, v))
        return tuple(t.reshape(batch * heads, 1, *t.shape[2:]) for t in (q_r, k_r, v_r))


def _permuted(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x (B, H, N[, D]) with rows in the order perm (B, H, N): out[.., n] = x[.., perm[n]]."""
    index = perm if x.dim() == 3 else perm[..., None].expand(*perm.shape, x.shape[-1])
    return x.gather(2, index)


def _unpermuted(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The inverse of `_permuted`: out[.., perm[n]] = x[.., n]."""
    index = perm if x.dim() == 3 else perm[..., None].expand(*perm.shape, x.shape[-1])
    return torch.empty_like(x).scatter_(2, index, x)


def _runs(mask, seg_q, seg_k, pos_q, pos_k) -> tuple:
    """(lo, hi) (rows, Nq): the sorted keys [lo, hi) that an interval mask allows to each sorted
    query row within its bucket. Keys are sorted by (bucket, position), so those with bucket b and
    L(i) <= position <= R(i) are one run, found by binary search on bucket * (Nk + 1) + position."""
    nk = seg_k.shape[1]
    stride = nk + 1
    keys = seg_k * stride + pos_k                                      # ascending along each row
    low, high = key_bounds(mask, pos_q)
    low, high = torch.clamp(low, 0, nk), torch.clamp(high, -1, nk - 1)
    lo = torch.searchsorted(keys, seg_q * stride + low, side="left")
    hi = torch.searchsorted(keys, seg_q * stride + high, side="right")
    return lo, torch.maximum(hi, lo)


def _excluded_counts(earlier: list, buckets: int, entry_row, a, b) -> torch.Tensor:
    """Per entry (flat query row, sorted keys [a, b) of its row), the keys that share a bucket with
    the query row in some earlier round: |union over e of A_e| by inclusion-exclusion, where for a
    set S of earlier rounds |intersection of A_e, e in S| counts the keys whose bucket tuple over S
    equals the row's, two binary searches in the keys sorted by (tuple, index)."""
    out = torch.zeros_like(a)
    if not earlier:
        return out
    rows, nq = earlier[0][0].shape
    nk = earlier[0][1].shape[1]
    query, index = entry_row // nq, entry_row % nq
    for mask in range(1, 1 << len(earlier)):
        chosen = [earlier[e] for e in range(len(earlier)) if mask >> e & 1]
        code_q = torch.zeros((rows, nq), dtype=torch.int64, device=a.device)
        code_k = torch.zeros((rows, nk), dtype=torch.int64, device=a.device)
        for pq, pk in chosen:
            code_q, code_k = code_q * buckets + pq, code_k * buckets + pk
        span = buckets ** len(chosen) * (nk + 1)
        order = code_k * (nk + 1) + torch.arange(nk, device=a.device)
        ordered = (torch.sort(order, dim=-1).values + torch.arange(rows, device=a.device)[:, None] * span).reshape(-1)
        base = query * span + code_q[query, index] * (nk + 1)
        count = torch.searchsorted(ordered, base + b) - torch.searchsorted(ordered, base + a)
        out += count if len(chosen) % 2 else -count
    return out
