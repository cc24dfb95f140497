"""Strict jinja2 rendering of the templates in ``attngen/codegen/templates/``.

The templates are package data: they ship inside the wheel and are read as resources
(`importlib.resources`), so an installed attngen renders kernels without its source tree.
Strict: a value the template asks for and the renderer did not give is an error, never an empty
string. Templates hold no decisions: they receive values the lowering computed in Python.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

import jinja2

# A Traversable (a plain Path for an unpacked install); tests point it at a copy.
TEMPLATE_DIR = resources.files(__package__) / "templates"


def _template_files() -> list:
    if not TEMPLATE_DIR.is_dir():
        raise FileNotFoundError(f"attngen's templates are missing from the package: {TEMPLATE_DIR} "
                                "(reinstall attngen; the templates are package data)")
    return sorted((t for t in TEMPLATE_DIR.iterdir() if t.name.endswith(".jinja")), key=lambda t: t.name)


def _load(name: str) -> str:
    template = TEMPLATE_DIR / name
    if not template.is_file():
        raise jinja2.TemplateNotFound(name)
    return template.read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    _template_files()
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(template: str, **values) -> str:
    """Render the template named `template` with `values`; strict about missing values."""
    return environment().get_template(template).render(**values)


def template_digest() -> str:
    """sha256 over every template's name and text: part of every cache key."""
    h = hashlib.sha256()
    for template in _template_files():
        h.update(template.name.encode() + b"\0")
        h.update(template.read_bytes() + b"\0")
    return h.hexdigest()
