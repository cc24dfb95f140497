"""Typed errors, raised where the user can act on them.

`SpecError` names the field path (``mask.any[1].band.left``) and the offending value, and, for YAML
read from a file, the file, line and column. `ShapeError` names the tensor, its shape and the shape
that was expected. Neither is ever raised through ``assert``.
"""
from __future__ import annotations


NO_VALUE = object()   # the error is about the document as a whole (not YAML, empty): no value to show


class SpecError(ValueError):
    """A spec was refused: the message names the field path and the value."""

    def __init__(self, field: str, value, reason: str, *, source: str | None = None,
                 line: int | None = None, column: int | None = None):
        self.field, self.value, self.reason = field, value, reason
        self.source, self.line, self.column = source, line, column
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.source is not None or self.line is not None:
            where = f"{self.source or '<yaml>'}"
            if self.line is not None:
                where += f":{self.line}:{self.column or 1}"
            where += ": "
        field = self.field or "<spec>"
        if self.value is NO_VALUE:
            return f"{where}{field}: {self.reason}"
        return f"{where}{field}: {self.reason}, got {self.value!r}"

    def under(self, prefix: str) -> "SpecError":
        """The same error with the field path placed under `prefix` (for nested validation)."""
        if not prefix:
            return self
        field = prefix if not self.field else (
            f"{prefix}{self.field}" if self.field.startswith("[") else f"{prefix}.{self.field}")
        return self._replaced(field=field)

    def located(self, source: str | None, line: int | None, column: int | None) -> "SpecError":
        return self._replaced(source=source, line=line, column=column)

    def _replaced(self, **changes) -> "SpecError":
        """A copy with some attributes changed, of the same class (subclasses keep their own)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new.args = (new._render(),)
        return new

    def __str__(self) -> str:
        return self._render()


class ShapeError(ValueError):
    """A tensor passed at call time has the wrong shape, dtype or device."""


class CompileError(RuntimeError):
    """Code generation or compilation failed; the message names the stage and the spec."""
