"""Scopes nested in a notebook cell: what a function, lambda, class body or comprehension needs.

A :class:`Scope` collects a nested scope's bindings and loads (parameters, locals, ``global``,
``nonlocal``, closures, comprehension variables, ``:=`` leaking out of comprehensions, methods
whose free names skip the class scope); :func:`scope_needs` gives the global names it needs, which
:mod:`jupyter_ds_jobs.packaging.cell` resolves where the function or class is used at top level.
Never executes anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

__all__ = [
    "Comprehension",
    "FunctionNode",
    "Scope",
    "arg_annotations",
    "arg_defaults",
    "comprehension_scope",
    "function_scope",
    "scope_needs",
    "type_param_names",
]

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
Comprehension = ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp


def _arg_names(args: ast.arguments) -> list[str]:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return names


def arg_defaults(args: ast.arguments) -> list[ast.expr]:
    return [*args.defaults, *(d for d in args.kw_defaults if d is not None)]


def arg_annotations(args: ast.arguments) -> list[ast.expr]:
    all_args = (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg)
    return [a.annotation for a in all_args if a is not None and a.annotation is not None]


def type_param_names(node: ast.AST) -> list[str]:
    """Names of PEP 695 type parameters (Python >= 3.12), if any."""
    return [str(getattr(p, "name", "")) for p in getattr(node, "type_params", ()) or ()]


class Scope:
    """Free names of a scope nested in the cell (function, lambda, class body, comprehension)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "function" | "class" | "comprehension"
        self.bound: dict[str, None] = {}
        self.loads: dict[str, None] = {}
        self.passthrough: dict[str, None] = {}  # free names of methods: skip the class scope
        self.declared_global: set[str] = set()
        self.declared_nonlocal: set[str] = set()
        self.forced_globals: dict[str, None] = {}
        self.global_assigns: dict[str, None] = {}
        self.walrus: dict[str, None] = {}

    # results -------------------------------------------------------------
    def free(self) -> dict[str, None]:
        """Names this scope needs from enclosing scopes (or globals), in first-use order."""
        local = {n for n in self.bound if n not in self.declared_global and n not in self.declared_nonlocal}
        out = {n: None for n in self.loads if n not in local and n not in self.declared_global}
        out.update((n, None) for n in self.passthrough if n not in self.declared_global)
        return out

    def forced(self) -> dict[str, None]:
        """Names referenced through a ``global`` declaration here or in nested scopes."""
        out = dict(self.forced_globals)
        out.update((n, None) for n in (*self.loads, *self.passthrough) if n in self.declared_global)
        return out

    def assigned_globals(self) -> dict[str, None]:
        out = dict(self.global_assigns)
        out.update((n, None) for n in self.bound if n in self.declared_global)
        return out

    # building ------------------------------------------------------------
    def bind(self, name: str) -> None:
        self.bound.setdefault(name)

    def load(self, name: str) -> None:
        self.loads.setdefault(name)

    def absorb(self, child: Scope) -> None:
        """Take a nested scope's needs: its free names resolve here (except through a class)."""
        target = self.passthrough if (self.kind == "class" and child.kind == "function") else self.loads
        for name in child.free():
            target.setdefault(name)
        self.forced_globals.update(child.forced())
        self.global_assigns.update(child.assigned_globals())
        for name in child.walrus:
            if self.kind == "comprehension":
                self.walrus.setdefault(name)
            else:
                self.bind(name)

    def visit_all(self, nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            self.visit(node)

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.load(node.id)
            else:
                self.bind(node.id)
        elif isinstance(node, ast.NamedExpr):
            self.visit(node.value)
            if isinstance(node.target, ast.Name):
                if self.kind == "comprehension":
                    self.walrus.setdefault(node.target.id)
                else:
                    self.bind(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self.visit_all(node.decorator_list)
            self.visit_all(arg_defaults(node.args))
            self.visit_all(arg_annotations(node.args))
            if node.returns is not None:
                self.visit(node.returns)
            self.bind(node.name)
            self.absorb(function_scope(node))
        elif isinstance(node, ast.Lambda):
            self.visit_all(arg_defaults(node.args))
            self.absorb(function_scope(node))
        elif isinstance(node, ast.ClassDef):
            self.visit_all(node.decorator_list)
            self.visit_all(node.bases)
            self.visit_all(k.value for k in node.keywords)
            self.bind(node.name)
            self.absorb(_class_scope(node))
        elif isinstance(node, Comprehension):
            self.visit(node.generators[0].iter)
            self.absorb(comprehension_scope(node))
        elif isinstance(node, ast.Global):
            self.declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            self.declared_nonlocal.update(node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                self.bind(alias.asname or alias.name.partition(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    self.bind(alias.asname or alias.name)
        elif isinstance(node, ast.AnnAssign) and self.kind == "function":
            # a local variable's annotation is never evaluated
            if node.value is not None:
                self.visit(node.value)
            self.visit(node.target)
        elif isinstance(node, ast.ExceptHandler):
            if node.type is not None:
                self.visit(node.type)
            if node.name:
                self.bind(node.name)
            self.visit_all(node.body)
        elif isinstance(node, ast.MatchAs | ast.MatchStar):
            if node.name:
                self.bind(node.name)
            for child in ast.iter_child_nodes(node):
                self.visit(child)
        elif isinstance(node, ast.MatchMapping):
            if node.rest:
                self.bind(node.rest)
            for child in ast.iter_child_nodes(node):
                self.visit(child)
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child)


def function_scope(node: FunctionNode) -> Scope:
    scope = Scope("function")
    for name in (*_arg_names(node.args), *type_param_names(node)):
        scope.bind(name)
    if isinstance(node, ast.Lambda):
        scope.visit(node.body)
    else:
        scope.visit_all(node.body)
    return scope


def _class_scope(node: ast.ClassDef) -> Scope:
    scope = Scope("class")
    for name in type_param_names(node):
        scope.bind(name)
    scope.visit_all(node.body)
    return scope


def comprehension_scope(node: Comprehension) -> Scope:
    scope = Scope("comprehension")
    for i, gen in enumerate(node.generators):
        if i:
            scope.visit(gen.iter)
        scope.visit(gen.target)
        scope.visit_all(gen.ifs)
    if isinstance(node, ast.DictComp):
        scope.visit(node.key)
        scope.visit(node.value)
    else:
        scope.visit(node.elt)
    return scope


def scope_needs(scope: Scope) -> dict[str, None]:
    """Global names a scope nested directly in the cell needs."""
    out = scope.free()
    out.update(scope.forced())
    return out
