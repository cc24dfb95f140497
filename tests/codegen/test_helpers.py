"""Every generated source defines the helpers its kernels call, and no others.

For every shipped spec and every kernel kind it has (fwd, bwd, decode for softmax specs without a
segments mask; a linear spec's own fwd and bwd), the source is parsed with `ast`: every
`@triton.jit` function must be reachable from the kernels the runtime launches (the jit functions
named `attngen_*`), following calls through the code Triton compiles: a branch `if FLAG:` on a
module constant `FLAG = tl.constexpr(False)` is never compiled, so a call there does not count.
Every plain-name call must name a function of the source (or a Python builtin Triton accepts).
"""
from __future__ import annotations

import ast

import pytest

import attngen as A
from attngen.codegen.emit import generate
from attngen.codegen.plan_varlen import varlen_unsupported

CASES = [(s, kind) for s in A.load_specs("specs")
         for kind in ("fwd", "bwd") + (("decode",) if s.kind == "softmax" and not s.uses_segments else ())
         + (("varlen_fwd", "varlen_bwd") if not varlen_unsupported(s) else ())]
BUILTINS = {"range", "float", "int", "min", "max", "len", "isinstance"}


def jit_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    def is_jit(decorator):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(target, ast.Attribute) and target.attr == "jit"
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and any(map(is_jit, node.decorator_list))}


def constexpr_flags(tree: ast.Module) -> dict[str, bool]:
    """{NAME: value} of the module's `NAME = tl.constexpr(True|False)` constants."""
    flags = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "constexpr" and len(node.value.args) == 1
                and isinstance(node.value.args[0], ast.Constant) and isinstance(node.value.args[0].value, bool)):
            flags[node.targets[0].id] = node.value.args[0].value
    return flags


class CompiledCalls(ast.NodeVisitor):
    """Names called by plain name in the code Triton compiles, given the module's flags."""

    def __init__(self, flags: dict[str, bool]):
        self.flags, self.calls = flags, set()

    def visit_If(self, node):
        if isinstance(node.test, ast.Name) and node.test.id in self.flags:
            for stmt in node.body if self.flags[node.test.id] else node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name):
            self.calls.add(node.func.id)
        self.generic_visit(node)


def reachable(functions: dict[str, ast.FunctionDef], flags: dict[str, bool]) -> set[str]:
    seen, todo = set(), [name for name in functions if name.startswith("attngen_")]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            visitor = CompiledCalls(flags)
            visitor.visit(functions[name])
            todo += [c for c in visitor.calls if c in functions]
    return seen


def check_source(source: str) -> tuple[set[str], set[str]]:
    """(jit functions no launched kernel calls, plain-name calls naming nothing in the source)."""
    tree = ast.parse(source)
    functions, flags = jit_functions(tree), constexpr_flags(tree)
    called = {node.func.id for fn in functions.values() for node in ast.walk(fn)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return set(functions) - reachable(functions, flags), called - set(functions) - BUILTINS


@pytest.mark.parametrize("spec, kind", CASES, ids=lambda x: getattr(x, "name", x))
def test_every_helper_is_called_and_every_call_defined(spec, kind):
    source = generate(spec, kind).source
    uncalled, undefined = check_source(source)
    assert not uncalled, f"{spec.name} {kind}: jit functions no kernel calls: {sorted(uncalled)}"
    assert not undefined, f"{spec.name} {kind}: calls to functions the source lacks: {sorted(undefined)}"


def test_checker_finds_uncalled_helpers_and_dead_branches():
    source = '''
import triton
import triton.language as tl
HAS_X = tl.constexpr(False)


@triton.jit
def used(a):
    return a


@triton.jit
def only_under_false_flag(a):
    return a


@triton.jit
def never(a):
    return a


@triton.jit
def attngen_kernel(a, FLAG: tl.constexpr):
    if HAS_X:
        a = only_under_false_flag(a)
    if FLAG:                        # a launch-time constexpr: both branches may compile
        a = used(a)
    return missing(a)
'''
    uncalled, undefined = check_source(source)
    assert uncalled == {"only_under_false_flag", "never"}
    assert undefined == {"missing"}
