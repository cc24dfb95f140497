"""Which optional helpers of templates/common.py.jinja a generated softmax source defines.

A helper is printed only where a kernel of the source calls it (tests/codegen/test_helpers.py
parses every generated source to check): the printed mask and bound code decide the integer
helpers and the random-table lookup, the spec's score decides `tanh`, the kernel kind the score and
online-softmax helpers, the tile walk the closed-form tile ranges. The template only tests the
`uses_<helper>` values returned here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

# Helpers the printer (attngen/codegen/printer.py) writes calls to in mask and bound code.
PRINTED_HELPERS = ("floor_div", "floor_mod", "random_hit")


def printed_helpers(codes: Iterable[str]) -> dict[str, bool]:
    """uses_<helper> for each helper the printer may call: whether any of `codes` calls it."""
    text = "\n".join(codes)
    return {f"uses_{name}": re.search(rf"\b{name}\(", text) is not None for name in PRINTED_HELPERS}


def helper_flags(values: dict, *, extra_code: Iterable[str] = ()) -> dict[str, bool]:
    """uses_<helper> for every optional helper, from the values a softmax template is rendered
    with: the printed code is every value named `*_code`, every line of those named `*_lines`, plus
    `extra_code`."""
    kind = values["kernel_kind"]
    ranges = values["iteration"] == "ranges"
    codes = [value for name, value in values.items() if name.endswith("_code")]
    codes += [line for name, lines in values.items() if name.endswith("_lines") for line in lines]
    return {
        **printed_helpers([*codes, *extra_code]),
        "uses_tanh": values["has_softcap"] or re.search(r"(?<![.\w])tanh\(", "\n".join(codes)) is not None,
        # The backward scores with its own score_and_dcap (the softcap's derivative too) and
        # recomputes p from the forward's lse: no running maximum.
        "uses_score_of": kind != "bwd",
        "uses_online_softmax": kind != "bwd",
        # The sink joins the forward's and decode's rows after their last tile; the backward reads
        # it through the saved lse.
        "uses_join_sink": values["has_sink"] and kind != "bwd",
        # Decode splits the outer key range across programs even where it scans every tile.
        "uses_tile_span": ranges or kind == "decode",
        "uses_full_tile_span": ranges,
    }
