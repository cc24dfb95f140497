"""HuggingFace transformers models on attngen kernels.

    from attngen.integrations.transformers import register
    register()          # "attngen" in transformers' attention *and* mask interfaces
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attngen")

transformers builds one mask per layer type and forward (`create_causal_mask`,
`create_sliding_window_causal_mask`, ...) through its mask interface, then calls the attention
interface of every layer with it. Both are registered: for a name its mask interface does not know,
transformers builds no mask and passes ``attention_mask=None``, so padding would silently vanish.

`attngen_mask` (the mask interface) answers with a `LayerMask`:
- the pattern, recognised from the mask function transformers built. It must be one of
  transformers' own factories (causal, sliding-window causal, bidirectional, sliding-window
  bidirectional), compared by code and captured values; its window is measured by evaluating the
  factory on one row of positions, so the meaning is transformers' own whatever its version.
  Anything else (packed sequences found from position_ids, or/and overlays, block ids, chunked
  attention) is refused: attngen cannot know what an arbitrary function computes.
- the query offset relative to the first key: query row r sits at position ``q_offset + r``, key j
  at ``kv_offset + j`` (a sliding layer's cache keeps the last W - 1 keys), and attngen's
  q_offset is their difference; generation with a cache is bottom-right as attngen's default.
- the key padding from the 2-D attention mask.

`attention_forward` (the attention interface) maps (pattern, heads, head dims, scaling, softcap,
sinks or not, padded or not) to a `Spec`, compiled once per such class (never per call), and calls
it with the layer's (B, H, N, D) views as they come; it returns (B, N, H, D), contiguous, and no
weights, as sdpa's does.

Meanings, exactly transformers':
- ``sliding_window=W`` keeps keys with ``q - W < k <= q``: ``causal`` and ``band(left=W - 1)``
  (``band(left=W)`` would keep one key too many).
- Padding through attngen's segments mask: every query in segment 1, a real key in 1 and a padding
  key in 0, so ``seg_q[i] == seg_k[j]`` is exactly "key j is not padding". A query with no real key
  at or before it (a left-padding row) allows no key and gives 0, where transformers' eager gives a
  meaningless average; no real token ever reads such a row.
- ``scaling`` is the spec's scale (Gemma 2: query_pre_attn_scalar ** -0.5), ``softcap`` its
  softcap (``c * tanh(s / c)`` after scaling).

- Attention sinks (gpt-oss passes its learned per-head ``sinks`` parameter as ``s_aux``): a spec with
  ``sink: true``, called with the tensor as ``sink``, float32 as the spec declares it (a ``.to`` that
  autograd sees through, so the parameter gets its gradient in whatever dtype it is kept). Each row's
  softmax denominator gains ``exp(sink[h])``, exactly transformers' eager concatenation of the sink
  as an extra logit that is dropped after the softmax.

Refused, naming the layer and the fallback: dropout > 0, sinks of a shape other than (query heads,),
a 4-D mask or BlockMask, ``head_mask``, packed calls (``cu_seq_lens_*``), a ``sliding_window`` or
``is_causal`` that disagrees with the layer's mask, and a model whose mask interface is not attngen's.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import torch

NAME = "attngen"
FALLBACK = "load the model with attn_implementation='sdpa' (or 'eager')"
# Keyword arguments of transformers' attention call that ask for something attngen does not do.
PACKED_KEYWORDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
SINK_KEYWORDS = ("s_aux", "sinks")


class UnsupportedAttention(ValueError):
    """A layer asked for attention attngen cannot compute exactly (the message names the layer,
    what it asked for and the fallback)."""


@dataclass(frozen=True)
class Pattern:
    """Which keys a query at position i may see, besides padding: ``i - left <= j <= i + right``,
    a missing side unbounded; ``causal`` means ``right == 0``."""

    causal: bool
    left: int | None
    right: int | None

    def __str__(self) -> str:
        low = "any key before" if self.left is None else f"keys from i - {self.left}"
        high = "up to i" if self.causal else (
            "any key after" if self.right is None else f"up to i + {self.right}")
        return f"{'causal' if self.causal else 'bidirectional'} ({low} {high})"


@dataclass(frozen=True, eq=False)
class LayerMask:
    """What the mask interface hands every layer of one type in one forward (not a tensor)."""

    pattern: Pattern | None          # None: refused, `refusal` says why
    q_offset: int                    # position of the first query minus that of the first key
    q_length: int
    kv_length: int
    seg_k: torch.Tensor | None       # (B, Nk) int32: 1 real key, 0 padding; None: no padding
    refusal: str = ""
    # generate() builds the masks of a static cache ahead of the forward and hands them back to the
    # model as its attention_mask; transformers reads `ndim` to tell a prepared mask from a 2-D one.
    ndim = 4


def register(name: str = NAME) -> None:
    """Add `name` to transformers' attention interface and its mask interface (both: see above).
    Registering again replaces the entries with the same functions."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as err:
        raise ImportError("attngen.integrations.transformers needs transformers >= 4.57 "
                          "(pip install 'attngen[transformers]')") from err
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, attngen_mask)


# ---------------------------------------------------------------------------------------------
# The mask interface: once per layer type and forward.

def attngen_mask(batch_size: int, q_length: int | None = None, kv_length: int | None = None,
                 q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 local_size: int | None = None, cache_position=None, **_ignored) -> LayerMask:
    """transformers' mask-interface signature (5.x: q_length/q_offset; 4.x: cache_position)."""
    if isinstance(attention_mask, LayerMask):
        return attention_mask         # prepared by generate() for this very step (static caches)
    if q_length is None:
        if cache_position is None:
            raise TypeError("attngen_mask needs q_length (transformers 5) or cache_position (4.x)")
        first, last = (int(x) for x in cache_position[[0, -1]].tolist())
        q_length = cache_position.shape[0]
        if last - first != q_length - 1:
            return LayerMask(None, 0, q_length, kv_length, None,
                             refusal=f"query positions {cache_position.tolist()} are not consecutive")
        q_offset = first
    q_offset, kv_offset = int(q_offset), int(kv_offset)     # static caches give 0-d tensors
    seg_k = _key_segments(attention_mask, kv_length, kv_offset)
    pattern = recognise(mask_function, local_size)
    refusal = "" if pattern is not None else (
        f"its mask function {getattr(mask_function, '__qualname__', mask_function)!r} is not one of "
        "transformers' causal, sliding-window or bidirectional masks (packed sequences found from "
        "position_ids, an or/and overlay, block ids or chunked attention)")
    return LayerMask(pattern, q_offset - kv_offset, q_length, kv_length, seg_k, refusal)


def _key_segments(attention_mask, kv_length: int, kv_offset: int) -> torch.Tensor | None:
    """(B, kv_length) int32, 1 where key `kv_offset + j` is a real token; None when none is padding.
    Column c of the 2-D mask is position c; slots past its end (a static cache not yet written)
    are padding, as transformers pads them."""
    if attention_mask is None:
        return None
    keys = attention_mask.to(torch.bool)
    missing = kv_offset + kv_length - keys.shape[-1]
    if missing > 0:
        keys = torch.nn.functional.pad(keys, (0, missing))
    keys = keys[:, kv_offset:kv_offset + kv_length]
    if not torch.compiler.is_compiling() and bool(keys.all()):
        return None                  # no padding: the cheaper spec without segments
    return keys.to(torch.int32)


def recognise(mask_function, local_size: int | None) -> Pattern | None:
    """The pattern of `mask_function` if it is one of transformers' own mask factories (built again
    here and compared by code and captured values), else None."""
    from transformers import masking_utils as mu

    if mask_function is None:
        mask_function = mu.causal_mask_function
    candidates = [("causal_mask_function", None), ("bidirectional_mask_function", None)]
    if local_size is not None:
        candidates += [("sliding_window_causal_mask_function", local_size),
                       ("sliding_window_bidirectional_mask_function", local_size)]
    for factory_name, size in candidates:
        factory = getattr(mu, factory_name, None)
        if factory is None:
            continue
        reference = factory if size is None else factory(size)
        if _same_value(mask_function, reference):
            return _measured(factory_name, size)
    return None


def _same_value(a, b) -> bool:
    """Structural equality of mask functions: same code, same captured values (recursively)."""
    if a is b:
        return True
    if callable(a) and callable(b):
        code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
        if code_a is None or code_a is not code_b:
            return False
        cells_a, cells_b = a.__closure__ or (), b.__closure__ or ()
        return len(cells_a) == len(cells_b) and all(
            _same_value(x.cell_contents, y.cell_contents) for x, y in zip(cells_a, cells_b))
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, str, bool, type(None))) and type(a) is type(b):
        return a == b
    return False                     # tensors and anything else: not a plain factory


@functools.lru_cache(maxsize=None)
def _measured(factory_name: str, size: int | None) -> Pattern:
    """Evaluate transformers' factory on one query row, far from both ends, and read the interval of
    keys it allows (the factories depend on i - j only)."""
    from transformers import masking_utils as mu

    factory = getattr(mu, factory_name)
    function = factory if size is None else factory(size)
    query = (size or 0) + 2                                  # farther from 0 than any window reaches
    keys = torch.arange(2 * query + 1)
    zero = torch.zeros((), dtype=torch.long)
    allowed = torch.broadcast_to(function(zero, zero, torch.tensor(query), keys), keys.shape)
    where = allowed.nonzero().flatten().tolist()
    first, last = where[0], where[-1]
    if len(where) != last - first + 1:
        raise UnsupportedAttention(f"transformers' {factory_name}({size}) allows a set of keys with "
                                   "holes; attngen cannot say it as a band")
    left = None if first == 0 else query - first
    right = None if last == keys.numel() - 1 else last - query
    return Pattern(causal=right == 0, left=left, right=right)


# ---------------------------------------------------------------------------------------------
# The attention interface: every layer, every call.

def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      sliding_window=None, softcap=None, **kwargs):
    """transformers' attention-interface signature: (B, H, N, D) in, ((B, N, H, D), None) out."""
    layer = _layer_name(module)
    _refuse_options(layer, dropout, kwargs)
    sink = _sinks(layer, kwargs, query)
    mask = _layer_mask(layer, module, attention_mask, sliding_window, query, key)
    _check_agreement(layer, mask, sliding_window, kwargs.get("is_causal"), query, key)
    padded = mask.seg_k is not None
    attn = compiled_for(mask.pattern, query.shape[1], key.shape[1], query.shape[-1], value.shape[-1],
                        None if scaling is None else float(scaling), float(softcap) if softcap else None,
                        padded, sink is not None)
    seg_q = mask.seg_k.new_ones((query.shape[0], query.shape[2])) if padded else None
    extra = {} if sink is None else {"sink": sink}
    out = attn(query, key, value, q_offset=mask.q_offset, seg_q=seg_q, seg_k=mask.seg_k, **extra)
    return out.transpose(1, 2).contiguous(), None


def _layer_name(module) -> str:
    index = getattr(module, "layer_idx", None)
    return f"{type(module).__name__}" + (f" (layer {index})" if index is not None else "")


def _refuse(layer: str, what: str, remedy: str = ""):
    remedy = f"{remedy}, or " if remedy else ""
    raise UnsupportedAttention(f"{layer}: {what}. attngen cannot run this layer exactly; {remedy}{FALLBACK}")


def _refuse_options(layer: str, dropout, kwargs) -> None:
    if dropout:
        _refuse(layer, f"attention dropout {dropout} (training with config.attention_dropout > 0; "
                       "attngen has no dropout)", "set config.attention_dropout = 0")
    if kwargs.get("head_mask") is not None:
        _refuse(layer, "a head_mask")
    packed = [name for name in PACKED_KEYWORDS if kwargs.get(name) is not None]
    if packed:
        _refuse(layer, f"a packed (varlen) call with {', '.join(packed)}")


def _sinks(layer: str, kwargs, query) -> torch.Tensor | None:
    """The layer's attention sinks (``s_aux``, or ``sinks``), one logit per query head, as the spec's
    float32 `sink` on the query's device; None when the layer has none."""
    given = [(name, kwargs[name]) for name in SINK_KEYWORDS if kwargs.get(name) is not None]
    if not given:
        return None
    if len(given) > 1:
        _refuse(layer, f"attention sinks given twice ({', '.join(name for name, _ in given)})")
    name, sink = given[0]
    heads = query.shape[1]
    if not isinstance(sink, torch.Tensor) or tuple(sink.shape) != (heads,):
        shape = tuple(sink.shape) if isinstance(sink, torch.Tensor) else type(sink).__name__
        _refuse(layer, f"attention sinks {name} of shape {shape}; attngen takes one sink logit per "
                       f"query head, shape ({heads},)")
    return sink.to(device=query.device, dtype=torch.float32)


def _layer_mask(layer: str, module, attention_mask, sliding_window, query, key) -> LayerMask:
    if isinstance(attention_mask, LayerMask):
        if attention_mask.pattern is None:
            _refuse(layer, attention_mask.refusal)
        return attention_mask
    if attention_mask is not None:
        shape = tuple(getattr(attention_mask, "shape", ()))
        _refuse(layer, f"an arbitrary {len(shape)}-D attention mask {type(attention_mask).__name__}"
                       f"{list(shape)} (a custom mask passed to the model, or one built by another "
                       "mask interface)")
    return _mask_from_module(layer, module, sliding_window, query.shape[2], key.shape[2])


def _mask_from_module(layer: str, module, sliding_window, q_length: int, kv_length: int) -> LayerMask:
    """No mask: allowed only when attngen's mask interface is the model's (it then built none on
    purpose); otherwise transformers skipped it and the padding is lost."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(implementation) is not attngen_mask:
        _refuse(layer, f"no attention mask came, because transformers' mask interface has no entry "
                       f"{implementation!r} (padding would be silently dropped)",
                "call attngen.integrations.transformers.register(), which registers both interfaces")
    causal = bool(getattr(module, "is_causal", True))
    if sliding_window and not causal:
        _refuse(layer, f"bidirectional sliding_window={sliding_window} without a mask")
    left = sliding_window - 1 if sliding_window else None
    return LayerMask(Pattern(causal, left, 0 if causal else None), q_offset=kv_length - q_length,
                     q_length=q_length, kv_length=kv_length, seg_k=None)


def _check_agreement(layer: str, mask: LayerMask, sliding_window, is_causal, query, key) -> None:
    pattern = mask.pattern
    if sliding_window and pattern.causal and pattern.left != sliding_window - 1:
        _refuse(layer, f"the layer says sliding_window={sliding_window} (keys q - {sliding_window} < k "
                       f"<= q) but its mask keeps {pattern}")
    if is_causal is not None and bool(is_causal) != pattern.causal:
        _refuse(layer, f"the layer says is_causal={is_causal} but its mask is {pattern}")
    if (query.shape[2], key.shape[2]) != (mask.q_length, mask.kv_length):
        _refuse(layer, f"its mask was built for {mask.q_length} queries and {mask.kv_length} keys, "
                       f"the layer has q {tuple(query.shape)} and k {tuple(key.shape)}")


@functools.lru_cache(maxsize=None)
def compiled_for(pattern: Pattern, query_heads: int, kv_heads: int, head_dim: int, value_head_dim: int,
                 scale: float | None, softcap: float | None, padded: bool, sink: bool = False):
    """The compiled spec of one class of layer calls (lengths and batch are call-time: never here)."""
    from .. import api
    from ..spec import Spec, band, segments

    mask = None
    if pattern.causal:
        mask = band(left=pattern.left) if pattern.left is not None else None
    elif pattern.left is not None or pattern.right is not None:
        mask = band(left=pattern.left, right=pattern.right)
    if padded:
        mask = segments() if mask is None else mask & segments()
    tag = json.dumps([scale, softcap]).encode()
    name = "_".join(filter(None, [
        "hf", "causal" if pattern.causal else "full",
        f"left{pattern.left}" if pattern.left is not None else "",
        f"right{pattern.right}" if pattern.right and not pattern.causal else "",
        "padded" if padded else "", f"h{query_heads}x{kv_heads}", f"d{head_dim}",
        f"v{value_head_dim}" if value_head_dim != head_dim else "",
        "softcap" if softcap else "", "sink" if sink else "", hashlib.sha256(tag).hexdigest()[:8]]))
    head_dims = head_dim if value_head_dim == head_dim else {"qk": head_dim, "v": value_head_dim}
    spec = Spec(name=name, query_heads=query_heads, kv_heads=kv_heads, head_dim=head_dims,
                causal=pattern.causal, mask=mask, scale=scale, softcap=softcap, sink=sink)
    return api.compile(spec)
