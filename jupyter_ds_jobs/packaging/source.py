"""Reading Python source as the analyses need it: cells with IPython syntax, and their imports.

:func:`parse_cell` turns a notebook cell (``!cmd``, ``%magic``, ``%%magic`` and ``obj?`` lines
included) into a Python AST with the same meaning for names; :func:`find_imports` lists every
import of a tree. Both the cell analysis (:mod:`.cell`) and the import analysis (:mod:`.analysis`)
stand on this module; it imports neither.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass

from jupyter_ds_jobs.common.errors import InvalidArgument

__all__ = ["ImportRef", "find_imports", "parse_cell"]

#: Cell magics whose body is Python run in the user namespace.
_PY_BODY_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
#: Line magics whose argument is a Python statement run in the user namespace.
_PY_STMT_LINE_MAGICS = frozenset({"time", "timeit"})

_MAGIC = re.compile(r"^%{1,2}(?P<name>[\w.]+)(?P<rest>.*)$", re.DOTALL)
_ASSIGN_FROM_MAGIC = re.compile(r"^(?P<lhs>[^\W\d][\w.]*(?:\s*,\s*[^\W\d][\w.]*)*)\s*=\s*(?P<rhs>[!%].*)$")
_HELP_SUFFIX = re.compile(r"^%?[\w.*\[\]()'\"]+\s*\?{1,2}$")
_TIMEIT_OPTIONS = re.compile(r"^(?:\s*-(?:[nrp]\s*\d+|[oqtc])(?=\s))*\s*")


# --------------------------------------------------------------------------- IPython syntax


def _strip_magic(text: str) -> str | None:
    """The Python statement inside ``%time stmt`` / ``%timeit [-n N] stmt``, else None."""
    m = _MAGIC.match(text)
    if m is None or text.startswith("%%") or m["name"] not in _PY_STMT_LINE_MAGICS:
        return None
    rest = m["rest"]
    if m["name"] == "timeit":
        rest = _TIMEIT_OPTIONS.sub("", rest + " ", count=1)
    rest = rest.strip()
    return rest or None


def _rewrite_line(line: str) -> str | None:
    """Python with the same meaning for names as an IPython-only ``line``, or None if it is not one."""
    body = line.strip()
    if not body:
        return None
    indent = line[: len(line) - len(line.lstrip())]
    m = _ASSIGN_FROM_MAGIC.match(body)
    if m is not None:
        value = "None"
        stmt = _strip_magic(m["rhs"])
        if stmt is not None:
            try:
                ast.parse(stmt, mode="eval")
            except SyntaxError:
                pass
            else:
                value = stmt
        return f"{indent}{m['lhs']} = {value}"
    if body[0] == "%":
        return indent + (_strip_magic(body) or "pass")
    if body[0] in "!?/,;" or _HELP_SUFFIX.match(body):
        return indent + "pass"
    return None


def _syntax_error(err: SyntaxError, lines: Sequence[str], filename: str) -> InvalidArgument:
    lineno = err.lineno or 0
    text = lines[lineno - 1].strip() if 1 <= lineno <= len(lines) else (err.text or "").strip()
    where = f"{filename}, line {lineno}" if filename != "<cell>" else f"line {lineno}"
    return InvalidArgument(f"syntax error on {where}: {err.msg}" + (f": {text}" if text else ""))


def parse_cell(source: str, filename: str = "<cell>") -> tuple[ast.Module, list[tuple[int, str]]]:
    """Parse a cell's source, IPython syntax included, into a Python AST.

    Lines with IPython-only syntax are replaced, one for one, by Python with the same effect on
    names (``!ls`` -> ``pass``, ``x = !ls`` -> ``x = None``, ``%time y = f(x)`` -> ``y = f(x)``); a
    cell magic whose body is not Python (``%%bash``, ``%%html``, ``%%writefile``...) gives an empty
    module. Returns the tree and the (1-based line, text) of each IPython line. Raises
    ``InvalidArgument`` naming the line for any other syntax error.
    """
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    original = list(lines)
    found: list[tuple[int, str]] = []
    first = next((i for i, text in enumerate(lines) if text.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        head = lines[first].strip()
        found.append((first + 1, head))
        m = _MAGIC.match(head)
        lines[first] = ""
        if m is None or m["name"] not in _PY_BODY_CELL_MAGICS:
            return ast.parse("", filename=filename), found
    rewritten: set[int] = set()
    while True:
        try:
            tree = ast.parse("\n".join(lines), filename=filename)
        except RecursionError:
            raise InvalidArgument(f"{filename}: too deeply nested to parse") from None
        except SyntaxError as err:
            lineno = err.lineno
            if lineno is None or not 1 <= lineno <= len(lines) or lineno in rewritten:
                raise _syntax_error(err, original, filename) from None
            new = _rewrite_line(lines[lineno - 1])
            if new is None:
                raise _syntax_error(err, original, filename) from None
            found.append((lineno, lines[lineno - 1].strip()))
            lines[lineno - 1] = new
            rewritten.add(lineno)
            continue
        found.sort()
        return tree, found


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class ImportRef:
    """One import statement (or literal dynamic import) found in a module."""

    module: str
    """Dotted module as written (``""`` for ``from . import x``)."""
    level: int = 0
    """Number of leading dots of a relative import; 0 for an absolute one."""
    names: tuple[str, ...] = ()
    """Names of a ``from module import a, b`` (each may be a submodule); empty for ``import m``."""
    lineno: int = 0


# --------------------------------------------------------------------------- finding imports


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dynamic_import(call: ast.Call) -> ImportRef | None:
    """``importlib.import_module("x")``, ``import_module(".y", "pkg")``, ``__import__("x")``."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "importlib":
        fname = func.attr
    elif isinstance(func, ast.Name):
        fname = func.id
    else:
        return None
    if fname not in ("import_module", "__import__") or not call.args:
        return None
    name = _literal(call.args[0])
    if not name:
        return None
    if fname == "__import__":
        return None if name.startswith(".") else ImportRef(name, 0, (), call.lineno)
    package = _literal(call.args[1]) if len(call.args) > 1 else None
    for kw in call.keywords:
        if kw.arg == "package":
            package = _literal(kw.value)
    if name.startswith("."):
        if not package:
            return None
        try:
            name = importlib.util.resolve_name(name, package)
        except (ImportError, ValueError):
            return None
    return ImportRef(name, 0, (), call.lineno)


def find_imports(tree: ast.AST) -> list[ImportRef]:
    """Every import in ``tree``, in source order, at any depth (functions, ``try``, ``if``...).

    Includes ``importlib.import_module`` / ``__import__`` calls with a literal name; skips the body
    of ``if TYPE_CHECKING:`` (never run).
    """
    refs: list[ImportRef] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        children: list[ast.AST]
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = list(node.orelse)
        else:
            children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            refs.extend(ImportRef(a.name, 0, (), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names)
            refs.append(ImportRef(node.module or "", node.level, names, node.lineno))
        elif isinstance(node, ast.Call):
            ref = _dynamic_import(node)
            if ref is not None:
                refs.append(ref)
        stack.extend(reversed(children))
    return refs
