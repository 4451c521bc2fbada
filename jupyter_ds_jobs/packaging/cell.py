"""Static analysis of one notebook cell's Python source (no IPython import, never executes it).

``analyze_cell`` tells which names a cell needs from the kernel (``reads``), which names it leaves
behind (``assigns``), which modules it imports and which of its lines are IPython-only syntax
(``!cmd``, ``%magic``, ``%%magic``, ``x = !ls``, ``obj?``).

How reads are decided:

* The cell's top level is walked in execution order with *definite assignment*: a name read while it
  may still be unbound (never assigned so far, assigned in only one branch of an ``if``, only inside
  a loop body or a ``try`` body...) is a read. Builtins are never reads.
* Function, lambda and class bodies get their own scopes (parameters, locals, ``global``,
  ``nonlocal``, closures, comprehension variables, ``:=`` leaking out of comprehensions), in
  :mod:`.cellscope`.
* The global names a function needs are resolved where the function is first *used* at top level
  (called, passed, decorated...), or at the end of the cell when it never is: ``def f(): return x``
  then ``x = 1`` then ``f()`` does not read ``x``, but ``f()`` before ``x = 1`` does.
* Class bodies run at once; their methods behave like functions, resolved when the class is used.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging.cellscope import (
    Comprehension,
    arg_annotations,
    arg_defaults,
    comprehension_scope,
    function_scope,
    scope_needs,
    type_param_names,
)
from jupyter_ds_jobs.packaging.source import find_imports, parse_cell

__all__ = ["CellAnalysis", "analyze_cell", "parse_cell"]

#: Names that exist in every module namespace: never inputs.
_ALWAYS_DEFINED = frozenset(dir(builtins)) | {
    "__builtins__",
    "__file__",
    "__cached__",
    "__annotations__",
}


@dataclass
class CellAnalysis:
    """What one cell reads, binds and imports (see the module docstring for the rules)."""

    reads: list[str]
    """Names read while possibly unbound in the cell: candidates for inputs, in first-use order."""
    assigns: list[str]
    """Names the cell may bind at top level, in first-binding order (names it deletes are left out)."""
    imports: list[str]
    """Top-level names of the modules the cell imports (anywhere in it), in order."""
    ipython_syntax: list[tuple[int, str]]
    """(1-based line, stripped text) of each line using IPython-only syntax."""
    deletes: list[str] = field(default_factory=list)
    """Names the cell deletes at top level (``del x``) and does not bind again afterwards."""


# --------------------------------------------------------------------------- cell top level


def _irrefutable(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchAs):
        return pattern.pattern is None or _irrefutable(pattern.pattern)
    if isinstance(pattern, ast.MatchOr):
        return any(_irrefutable(p) for p in pattern.patterns)
    return False


class _Flow:
    """Walks statements of the cell (or of a class body in it) in execution order."""

    def __init__(self, parent: _Flow | None = None, sink: dict[str, None] | None = None) -> None:
        self.parent = parent
        self.sink = sink  # class body: where methods' needs go
        self.bound: set[str] = set()
        self.reads: dict[str, None] = {}
        self.assigns: dict[str, None] = {}
        self.deleted: dict[str, None] = {}
        self.pending: dict[str, dict[str, None]] = {}
        self.future_annotations = False

    @property
    def top(self) -> _Flow:
        return self if self.parent is None else self.parent.top

    # names ---------------------------------------------------------------
    def read(self, name: str) -> None:
        if self.parent is not None:
            if name not in self.bound:
                self.parent.read(name)
            return
        needs = self.pending.pop(name, None)
        if needs is not None:
            for dep in needs:
                self.read(dep)
        if name not in self.bound and name not in _ALWAYS_DEFINED:
            self.reads.setdefault(name)

    def bind(self, name: str) -> None:
        self.bound.add(name)
        if self.parent is None:
            self.assigns.setdefault(name)
            self.deleted.pop(name, None)
            self.pending.pop(name, None)

    def unbind(self, name: str) -> None:
        self.bound.discard(name)
        if self.parent is None:
            self.deleted.setdefault(name)
            self.pending.pop(name, None)

    def defer(self, name: str | None, needs: dict[str, None]) -> None:
        """Record what a function/class needs, to be resolved when ``name`` is used."""
        if self.sink is not None:
            self.sink.update(needs)
        elif name is not None:
            self.pending[name] = needs
        else:
            for dep in needs:
                self.read(dep)

    def finish(self) -> None:
        """Resolve functions and classes never used at top level against the final state."""
        while self.pending:
            name = next(iter(self.pending))
            for dep in self.pending.pop(name):
                self.read(dep)

    # expressions ---------------------------------------------------------
    def expr(self, node: ast.AST | None) -> None:
        if node is None:
            return
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.read(node.id)
            else:
                self.bind(node.id)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value)
            self.target(node.target)
        elif isinstance(node, ast.Lambda):
            for default in arg_defaults(node.args):
                self.expr(default)
            for dep in scope_needs(function_scope(node)):
                self.read(dep)
        elif isinstance(node, Comprehension):
            self.expr(node.generators[0].iter)
            scope = comprehension_scope(node)
            for dep in scope_needs(scope):
                self.read(dep)
            for name in scope.walrus:
                self.bind(name)
        else:
            for child in ast.iter_child_nodes(node):
                self.expr(child)

    def target(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self.bind(node.id)
        elif isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Starred):
            self.target(node.value)
        elif isinstance(node, ast.Attribute):
            self.expr(node.value)
        elif isinstance(node, ast.Subscript):
            self.expr(node.value)
            self.expr(node.slice)
        else:
            self.expr(node)

    def annotation(self, node: ast.expr | None) -> None:
        if not self.top.future_annotations:
            self.expr(node)

    # statements ----------------------------------------------------------
    def block(self, stmts: Sequence[ast.stmt]) -> bool:
        """Walk a block; True when it always ends by raise/return/break/continue."""
        return any(self.stmt(s) for s in stmts)

    def branches(self, before: set[str], outcomes: list[tuple[set[str], bool]]) -> bool:
        """Join the bound sets of alternative paths; True when every path terminates."""
        live = [bound for bound, terminated in outcomes if not terminated]
        if not live:
            self.bound = before
            return True
        joined = set(live[0])
        for bound in live[1:]:
            joined &= bound
        self.bound = joined
        return False

    def run_branch(self, before: set[str], stmts: Sequence[ast.stmt]) -> tuple[set[str], bool]:
        self.bound = set(before)
        terminated = self.block(stmts)
        return self.bound, terminated

    def stmt(self, node: ast.stmt) -> bool:
        """Walk one statement; True when it always ends by raise/return/break/continue."""
        handler = _STMT_HANDLERS.get(type(node).__name__)
        if handler is None:  # Expr, Assert and anything new: read every expression in it
            self.expr(node)
            return False
        return handler(self, node)

    def assign_stmt(self, node: ast.Assign) -> bool:
        value = node.value
        if isinstance(value, ast.Lambda) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            for default in arg_defaults(value.args):
                self.expr(default)
            self.bind(node.targets[0].id)
            self.defer(node.targets[0].id, scope_needs(function_scope(value)))
            return False
        self.expr(value)
        for tgt in node.targets:
            self.target(tgt)
        return False

    def aug_assign_stmt(self, node: ast.AugAssign) -> bool:
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
            self.expr(node.value)
            self.bind(node.target.id)
        else:
            self.target(node.target)
            self.expr(node.value)
        return False

    def ann_assign_stmt(self, node: ast.AnnAssign) -> bool:
        self.expr(node.value)
        self.annotation(node.annotation)
        if node.value is not None or not isinstance(node.target, ast.Name):
            self.target(node.target)
        return False

    def function_stmt(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        for dec in node.decorator_list:
            self.expr(dec)
        for default in arg_defaults(node.args):
            self.expr(default)
        for ann in arg_annotations(node.args):
            self.annotation(ann)
        self.annotation(node.returns)
        scope = function_scope(node)
        self.bind(node.name)
        for name in scope.assigned_globals():
            self.top.assigns.setdefault(name)
        self.defer(node.name, scope_needs(scope))
        return False

    def class_stmt(self, node: ast.ClassDef) -> bool:
        for dec in node.decorator_list:
            self.expr(dec)
        for base in node.bases:
            self.expr(base)
        for kw in node.keywords:
            self.expr(kw.value)
        sink: dict[str, None] = {} if self.sink is None else self.sink
        body = _Flow(parent=self, sink=sink)
        body.bound.update(type_param_names(node))
        body.block(node.body)
        self.bind(node.name)
        if self.sink is None:
            self.pending[node.name] = sink
        return False

    def import_stmt(self, node: ast.Import) -> bool:
        for alias in node.names:
            self.bind(alias.asname or alias.name.partition(".")[0])
        return False

    def import_from_stmt(self, node: ast.ImportFrom) -> bool:
        if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
            self.top.future_annotations = True
        for alias in node.names:
            if alias.name != "*":
                self.bind(alias.asname or alias.name)
        return False

    def delete_stmt(self, node: ast.Delete) -> bool:
        for tgt in node.targets:
            self.delete(tgt)
        return False

    def if_stmt(self, node: ast.If) -> bool:
        self.expr(node.test)
        before = set(self.bound)
        return self.branches(
            before, [self.run_branch(before, node.body), self.run_branch(before, node.orelse)]
        )

    def loop_stmt(self, node: ast.For | ast.AsyncFor | ast.While) -> bool:
        """A loop body may run zero times: what it binds stays possibly unbound after it."""
        self.expr(node.test if isinstance(node, ast.While) else node.iter)
        before = set(self.bound)
        if not isinstance(node, ast.While):
            self.target(node.target)
        self.block(node.body)
        self.run_branch(before, node.orelse)
        self.bound = before
        return False

    def with_stmt(self, node: ast.With | ast.AsyncWith) -> bool:
        for item in node.items:
            self.expr(item.context_expr)
            if item.optional_vars is not None:
                self.target(item.optional_vars)
        return self.block(node.body)

    def match_stmt(self, node: ast.Match) -> bool:
        self.expr(node.subject)
        before = set(self.bound)
        outcomes = []
        for case in node.cases:
            self.bound = set(before)
            self.pattern(case.pattern)
            self.expr(case.guard)
            outcomes.append((self.bound, self.block(case.body)))
        self.bound = before
        if not any(c.guard is None and _irrefutable(c.pattern) for c in node.cases):
            outcomes.append((before, False))
        return self.branches(before, outcomes)

    def return_stmt(self, node: ast.Return) -> bool:
        self.expr(node.value)
        return True

    def raise_stmt(self, node: ast.Raise) -> bool:
        self.expr(node.exc)
        self.expr(node.cause)
        return True

    def jump_stmt(self, node: ast.Break | ast.Continue) -> bool:
        return True

    def no_op_stmt(self, node: ast.Global | ast.Nonlocal | ast.Pass) -> bool:
        return False

    def type_alias_stmt(self, node: ast.stmt) -> bool:
        """``type X = ...`` (Python >= 3.12)."""
        type_name = getattr(node, "name", None)
        if isinstance(type_name, ast.Name):
            self.bind(type_name.id)
        self.expr(getattr(node, "value", None))
        return False

    def try_stmt(self, node: ast.Try | ast.TryStar) -> bool:
        before = set(self.bound)
        terminated = self.block(node.body)
        if not terminated:
            terminated = self.block(node.orelse)
        outcomes = [(self.bound, terminated)]
        for handler in node.handlers:
            self.bound = set(before)
            self.expr(handler.type)
            if handler.name:  # bound for the handler only: Python deletes it afterwards
                self.bound.add(handler.name)
            handler_terminated = self.block(handler.body)
            if handler.name:
                self.bound.discard(handler.name)
            outcomes.append((self.bound, handler_terminated))
        terminated = self.branches(before, outcomes)
        if node.finalbody:
            terminated = self.block(node.finalbody) or terminated
        return terminated

    def delete(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self.read(node.id)
            self.unbind(node.id)
        elif isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                self.delete(elt)
        else:
            self.target(node)

    def pattern(self, node: ast.AST) -> None:
        """Reads and bindings of a ``case`` pattern, in source order."""
        if isinstance(node, ast.MatchValue):
            self.expr(node.value)
        elif isinstance(node, ast.MatchClass):
            self.expr(node.cls)
        elif isinstance(node, ast.MatchMapping):
            for key in node.keys:
                self.expr(key)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.pattern):
                self.pattern(child)
        if isinstance(node, ast.MatchMapping) and node.rest:
            self.bind(node.rest)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            self.bind(node.name)


#: Statement class name -> its handler (by name: ``TypeAlias`` exists from Python 3.12 on); any other
#: statement has its expressions read (:meth:`_Flow.stmt`).
_STMT_HANDLERS: dict[str, Callable[[_Flow, Any], bool]] = {
    "Assign": _Flow.assign_stmt,
    "AugAssign": _Flow.aug_assign_stmt,
    "AnnAssign": _Flow.ann_assign_stmt,
    "FunctionDef": _Flow.function_stmt,
    "AsyncFunctionDef": _Flow.function_stmt,
    "ClassDef": _Flow.class_stmt,
    "Import": _Flow.import_stmt,
    "ImportFrom": _Flow.import_from_stmt,
    "Delete": _Flow.delete_stmt,
    "If": _Flow.if_stmt,
    "For": _Flow.loop_stmt,
    "AsyncFor": _Flow.loop_stmt,
    "While": _Flow.loop_stmt,
    "With": _Flow.with_stmt,
    "AsyncWith": _Flow.with_stmt,
    "Try": _Flow.try_stmt,
    "TryStar": _Flow.try_stmt,
    "Match": _Flow.match_stmt,
    "Return": _Flow.return_stmt,
    "Raise": _Flow.raise_stmt,
    "Break": _Flow.jump_stmt,
    "Continue": _Flow.jump_stmt,
    "Global": _Flow.no_op_stmt,
    "Nonlocal": _Flow.no_op_stmt,
    "Pass": _Flow.no_op_stmt,
    "TypeAlias": _Flow.type_alias_stmt,
}


def analyze_cell(source: str) -> CellAnalysis:
    """Analyze one notebook cell's source statically (see the module docstring).

    Raises ``InvalidArgument`` naming the line when the source (IPython syntax aside) is not valid
    Python.
    """
    tree, ipython_lines = parse_cell(source)
    flow = _Flow()
    try:
        flow.block(tree.body)
        flow.finish()
    except RecursionError:
        raise InvalidArgument("cell too deeply nested to analyze") from None
    imports: dict[str, None] = {}
    for ref in find_imports(tree):
        if ref.level == 0 and ref.module:
            imports.setdefault(ref.module.partition(".")[0])
    deleted = set(flow.deleted)
    return CellAnalysis(
        reads=list(flow.reads),
        assigns=[n for n in flow.assigns if n not in deleted],
        imports=list(imports),
        ipython_syntax=ipython_lines,
        deletes=list(flow.deleted),
    )
