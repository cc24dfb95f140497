"""Strict jinja2 rendering of the templates under ``templates/``.

Strict: a value the template asks for and the renderer did not give is an error, never an empty
string. Templates hold no decisions: they receive values the lowering computed in Python.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    if not TEMPLATE_DIR.is_dir():
        raise FileNotFoundError(f"attngen's templates folder is missing: {TEMPLATE_DIR} "
                                "(install attngen from its source tree with `pip install -e .`)")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(template: str, **values) -> str:
    """Render ``templates/<template>`` with `values`; strict about missing values."""
    return environment().get_template(template).render(**values)


def template_digest() -> str:
    """sha256 over every template's name and text: part of every cache key."""
    h = hashlib.sha256()
    for path in sorted(TEMPLATE_DIR.rglob("*.jinja")):
        h.update(path.relative_to(TEMPLATE_DIR).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
