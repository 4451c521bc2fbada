"""Cell analysis: reads (inputs), assigns (outputs), imports and IPython syntax of real snippets."""

from __future__ import annotations

import ast
import textwrap

import pytest

from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging.cell import _STMT_HANDLERS, analyze_cell, parse_cell


def cell(source: str) -> str:
    return textwrap.dedent(source).strip("\n") + "\n"


READS_ASSIGNS = [
    pytest.param("x = 1\nprint(x)", [], ["x"], id="assigned-then-read"),
    pytest.param("y = x + 1", ["x"], ["y"], id="plain-read"),
    pytest.param("print(len(range(3)), __name__)", [], [], id="builtins-not-reads"),
    pytest.param("x += 1", ["x"], ["x"], id="augassign-reads"),
    pytest.param("x = x + 1", ["x"], ["x"], id="self-referencing-assign"),
    pytest.param("a.b.c = d", ["d", "a"], [], id="attribute-target-reads-base"),
    pytest.param("d[k] = v", ["v", "d", "k"], [], id="subscript-target"),
    pytest.param("df.col.mean()", ["df"], [], id="attribute-reads-base"),
    pytest.param("a, (b, *c) = t", ["t"], ["a", "b", "c"], id="unpacking"),
    pytest.param("n: int = 3\nm: Foo", ["Foo"], ["n"], id="annotations"),
    pytest.param("[i * k for i in range(3)]", ["k"], [], id="comprehension-var-not-read"),
    pytest.param("{k: v for k, v in d.items() if v > lim}", ["d", "lim"], [], id="dictcomp"),
    pytest.param("[j for i in rows for j in i]", ["rows"], [], id="nested-generators"),
    pytest.param("[w := v for v in data]\nprint(w)", ["data"], ["w"], id="walrus-leaks-from-comprehension"),
    pytest.param("x = (y := 3) + y", [], ["y", "x"], id="walrus"),
    pytest.param("import numpy as np\nimport os.path\nnp.zeros(n)", ["n"], ["np", "os"], id="imports-bind"),
    pytest.param("from m import a as b, c\nb(c)", [], ["b", "c"], id="from-import-binds"),
    pytest.param(
        "for i in items:\n    total = i\nprint(total)",
        ["items", "total"],
        ["i", "total"],
        id="loop-may-not-run",
    ),
    pytest.param(
        "for x in xs:\n    print(prev)\n    prev = x", ["xs", "prev"], ["x", "prev"], id="loop-carried"
    ),
    pytest.param("while cond():\n    z = 1", ["cond"], ["z"], id="while"),
    pytest.param("if c:\n    v = 1\nprint(v)", ["c", "v"], ["v"], id="if-one-branch"),
    pytest.param("if c:\n    v = 1\nelse:\n    v = 2\nprint(v)", ["c"], ["v"], id="if-both-branches"),
    pytest.param("if c:\n    v = 1\nelse:\n    raise E\nprint(v)", ["c", "E"], ["v"], id="else-raises"),
    pytest.param(
        "try:\n    import foo\nexcept ImportError:\n    foo = None\nfoo.x",
        [],
        ["foo"],
        id="try-except-both-bind",
    ),
    pytest.param(
        "try:\n    r = f()\nexcept Exception as e:\n    print(e)\nprint(r)",
        ["f", "r"],
        ["r"],
        id="try-may-fail",
    ),
    pytest.param("try:\n    pass\nfinally:\n    done = True\nprint(done)", [], ["done"], id="finally-always"),
    pytest.param(
        "with open(p) as fh, lock:\n    s = fh.read()\nprint(s)", ["p", "lock"], ["fh", "s"], id="with"
    ),
    pytest.param(
        "match cmd:\n    case [a, b]:\n        r = a\n    case {'k': kk, **rest}:\n        r = kk\n    case _:\n        r = None\nprint(r)",
        ["cmd"],
        ["a", "b", "r", "kk", "rest"],
        id="match-irrefutable",
    ),
    pytest.param(
        "match cmd:\n    case Point(x=px) if px > lim:\n        r = px\nprint(r)",
        ["cmd", "Point", "lim", "r"],
        ["px", "r"],
        id="match-refutable",
    ),
    pytest.param("del old", ["old"], [], id="del-reads"),
    pytest.param("t = 1\ndel t", [], [], id="del-removes-assign"),
    pytest.param("t = 1\ndel t\nt = 2", [], ["t"], id="del-then-rebind"),
    pytest.param("def f():\n    return a + b\nb = 2\nf()", ["a"], ["f", "b"], id="function-globals-at-call"),
    pytest.param("def f():\n    return a\nf()\na = 1", ["a"], ["f", "a"], id="called-before-assign"),
    pytest.param("def f():\n    return g_val", ["g_val"], ["f"], id="uncalled-function-free-var"),
    pytest.param("g_val = 1\ndef f():\n    return g_val", [], ["g_val", "f"], id="assigned-before-def"),
    pytest.param(
        "def f(p, *args, k=dflt, **kw):\n    loc = p + len(args)\n    return loc, k, kw",
        ["dflt"],
        ["f"],
        id="params-locals-defaults",
    ),
    pytest.param(
        "def outer():\n    z = 1\n    def inner():\n        return z + glob\n    return inner\nouter()",
        ["glob"],
        ["outer"],
        id="closure",
    ),
    pytest.param(
        "def f():\n    helper()\ndef helper():\n    return cfg\nf()",
        ["cfg"],
        ["f", "helper"],
        id="function-chain",
    ),
    pytest.param("def f():\n    return f()\n", [], ["f"], id="recursion"),
    pytest.param("def f():\n    x = 1\n    return x\nprint(x)", ["x"], ["f"], id="function-local-not-global"),
    pytest.param(
        "def f():\n    global G\n    G = 1\n    return H\nf()", ["H"], ["f", "G"], id="global-declaration"
    ),
    pytest.param(
        "def f():\n    u = 0\n    def g():\n        nonlocal u\n        u += 1\n    g()\n    return u\nf()",
        [],
        ["f"],
        id="nonlocal",
    ),
    pytest.param(
        "@deco(arg)\ndef f() -> Ret:\n    pass", ["deco", "arg", "Ret"], ["f"], id="decorator-annotations"
    ),
    pytest.param("lam = lambda q: q + free\n", ["free"], ["lam"], id="lambda-assigned-deferred"),
    pytest.param(
        "lam = lambda q: q + free\nfree = 1\nlam(2)", [], ["lam", "free"], id="lambda-resolved-at-use"
    ),
    pytest.param("sorted(xs, key=lambda v: w[v])", ["xs", "w"], [], id="inline-lambda"),
    pytest.param(
        "class A(Base, metaclass=Meta):\n    k = 1\n    m = k + g\n    def meth(self):\n        return h + k\nA()",
        ["Base", "Meta", "g", "h", "k"],
        ["A"],
        id="class-body-and-methods",
    ),
    pytest.param("class A:\n    x = 1\nprint(x)", ["x"], ["A"], id="class-attr-not-global"),
    pytest.param(
        "class A:\n    class B:\n        def m(self):\n            return deep\nA.B().m()",
        ["deep"],
        ["A"],
        id="nested-class",
    ),
    pytest.param(
        "async def main():\n    await thing()\nasyncio.run(main())",
        ["asyncio", "thing"],
        ["main"],
        id="async",
    ),
    pytest.param(
        "from __future__ import annotations\ndef f(a: Later) -> Later2:\n    pass",
        [],
        ["annotations", "f"],
        id="future-annotations-not-evaluated",
    ),
    pytest.param("f'{name!r} {width:{prec}}'", ["name", "width", "prec"], [], id="fstring"),
    pytest.param("print(__file__, __builtins__)", [], [], id="module-dunders"),
]


@pytest.mark.parametrize(("source", "reads", "assigns"), READS_ASSIGNS)
def test_reads_and_assigns(source: str, reads: list[str], assigns: list[str]) -> None:
    result = analyze_cell(source)
    assert result.reads == reads
    assert result.assigns == assigns


def test_reads_in_first_use_order() -> None:
    result = analyze_cell("out = f(b, a)\nprint(c, a, b)\ng(out)")
    assert result.reads == ["f", "b", "a", "c", "g"]


def test_deletes_listed() -> None:
    result = analyze_cell("del old\nt = 1\ndel t\nu = 1\ndel u\nu = 2")
    assert result.deletes == ["old", "t"]
    assert result.assigns == ["u"]


def test_except_name_is_neither_assign_nor_delete() -> None:
    result = analyze_cell("try:\n    f()\nexcept E as err:\n    print(err)")
    assert result.assigns == []
    assert result.deletes == []


def test_imports() -> None:
    source = cell(
        """
        import numpy as np, os.path
        from pandas import DataFrame
        from . import rel
        def f():
            import scipy.stats
        importlib.import_module("sklearn.linear_model")
        import numpy
        """
    )
    assert analyze_cell(source).imports == ["numpy", "os", "pandas", "scipy", "sklearn"]


IPYTHON = [
    pytest.param("!pip install foo", [(1, "!pip install foo")], [], [], id="shell"),
    pytest.param("!!ls -la", [(1, "!!ls -la")], [], [], id="shell-capture"),
    pytest.param("%matplotlib inline\nx = 1", [(1, "%matplotlib inline")], [], ["x"], id="line-magic"),
    pytest.param(
        "files = !ls\nprint(files, z)", [(1, "files = !ls")], ["z"], ["files"], id="assign-from-shell"
    ),
    pytest.param("a, b = %sx echo 1 2", [(1, "a, b = %sx echo 1 2")], [], ["a", "b"], id="assign-from-magic"),
    pytest.param("obj?", [(1, "obj?")], [], [], id="help-suffix"),
    pytest.param("np.*int*??", [(1, "np.*int*??")], [], [], id="help-wildcard"),
    pytest.param("?obj", [(1, "?obj")], [], [], id="help-prefix"),
    pytest.param("%%time\nq = r * 2", [(1, "%%time")], ["r"], ["q"], id="cell-magic-python-body"),
    pytest.param("\n\n%%bash\necho $x\nls", [(3, "%%bash")], [], [], id="cell-magic-shell-body"),
    pytest.param(
        "%%writefile mod.py\ndef f(:\n", [(1, "%%writefile mod.py")], [], [], id="cell-magic-non-python"
    ),
    pytest.param(
        "%time res = compute(data2)",
        [(1, "%time res = compute(data2)")],
        ["compute", "data2"],
        ["res"],
        id="time-statement",
    ),
    pytest.param(
        "%timeit -n 10 -r 3 compute(data3)",
        [(1, "%timeit -n 10 -r 3 compute(data3)")],
        ["compute", "data3"],
        [],
        id="timeit-options",
    ),
    pytest.param("t = %time f(x)", [(1, "t = %time f(x)")], ["f", "x"], ["t"], id="assign-from-time"),
    pytest.param(
        "for p in paths:\n    !cp {p} /tmp\n    n = 1",
        [(2, "!cp {p} /tmp")],
        ["paths"],
        ["p", "n"],
        id="indented-shell",
    ),
    pytest.param(
        's = """\n!not shell\n%not magic\n"""\nx = s', [], [], ["s", "x"], id="inside-string-untouched"
    ),
]


@pytest.mark.parametrize(("source", "lines", "reads", "assigns"), IPYTHON)
def test_ipython_syntax(
    source: str, lines: list[tuple[int, str]], reads: list[str], assigns: list[str]
) -> None:
    result = analyze_cell(source)
    assert result.ipython_syntax == lines
    assert result.reads == reads
    assert result.assigns == assigns


def test_many_ipython_lines_mixed() -> None:
    source = cell(
        """
        !pip install -q foo
        %load_ext autoreload
        %autoreload 2
        import foo
        out = foo.run(cfg)
        out?
        files = !ls data/
        """
    )
    result = analyze_cell(source)
    assert [ln for ln, _ in result.ipython_syntax] == [1, 2, 3, 6, 7]
    assert result.reads == ["cfg"]
    assert result.assigns == ["foo", "out", "files"]
    assert result.imports == ["foo"]


def test_parse_cell_keeps_line_numbers() -> None:
    tree, lines = parse_cell("!echo hi\nx = 1\n%ls\ny = 2\n")
    assigns = [node.lineno for node in tree.body if node.__class__.__name__ == "Assign"]
    assert assigns == [2, 4]
    assert lines == [(1, "!echo hi"), (3, "%ls")]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("x = 1\nif x\n    pass", 2),
        ("x = (1,\n", 1),
        ("a = 1\nb = 2\nc = = 3", 3),
        ("!ls\ndef f(:\n", 2),
    ],
)
def test_syntax_error_names_line(source: str, line: int) -> None:
    with pytest.raises(InvalidArgument, match=rf"line {line}\b"):
        analyze_cell(source)


def test_crlf_source() -> None:
    result = analyze_cell("x = y\r\n!ls\r\nz = x\r\n")
    assert result.reads == ["y"]
    assert result.assigns == ["x", "z"]
    assert result.ipython_syntax == [(2, "!ls")]


def test_empty_cell() -> None:
    result = analyze_cell("")
    assert (result.reads, result.assigns, result.imports, result.ipython_syntax) == ([], [], [], [])


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert analyze_cell("x = " + " + ".join(["a"] * 500)).reads == ["a"]
    with pytest.raises(InvalidArgument, match="too deeply nested"):
        analyze_cell("x = " + " + ".join(["a"] * 5000))


# Each statement kind through its handler (values as the if/elif chain gave them before the table).
STATEMENT_KINDS = [
    pytest.param(
        "async for i in agen():\n    j = i\nelse:\n    k = 1\nprint(i, j, k)",
        ["agen", "i", "j", "k"],
        ["i", "j", "k"],
        [],
        id="async-for",
    ),
    pytest.param(
        "async with ctx() as (a, b):\n    c = a\nprint(a, b, c)",
        ["ctx"],
        ["a", "b", "c"],
        [],
        id="async-with-tuple",
    ),
    pytest.param(
        "for i in xs:\n    if i:\n        break\n    y = i\nelse:\n    z = 1\nprint(y, z)",
        ["xs", "y", "z"],
        ["i", "y", "z"],
        [],
        id="for-break-else",
    ),
    pytest.param("while True:\n    continue\nprint(w)", ["w"], [], [], id="while-continue"),
    pytest.param(
        "if c:\n    raise E(v) from err\nelse:\n    r = 1\nprint(r)",
        ["c", "E", "v", "err"],
        ["r"],
        [],
        id="raise-from-terminates",
    ),
    pytest.param(
        "try:\n    t = 1\nexcept* ValueError as eg:\n    t = eg\nprint(t, eg)",
        ["eg"],
        ["t"],
        [],
        id="try-star",
    ),
    pytest.param(
        "o.attr += n\nq[k] += 1\ntotal += 1",
        ["o", "n", "q", "k", "total"],
        ["total"],
        [],
        id="aug-assign-targets",
    ),
    pytest.param(
        "x: int\ny: List[int] = []\nprint(x, y)", ["List", "x"], ["y"], [], id="ann-assign-without-value"
    ),
    pytest.param("global g\nnonlocal_ok = 1\npass\nprint(g)", ["g"], ["nonlocal_ok"], [], id="global-pass"),
    pytest.param("f = lambda a=d: a + e\nf()", ["d", "e"], ["f"], [], id="lambda-assigned"),
    pytest.param("del a, b[0]\nprint(a)", ["a", "b"], [], ["a"], id="del-name-and-item"),
    pytest.param(
        "from m import *\nfrom n import p as q\nimport os.path\nprint(q, os, p)",
        ["p"],
        ["q", "os"],
        [],
        id="imports-star-as-dotted",
    ),
    pytest.param("assert cond, msg\nexpr_only", ["cond", "msg", "expr_only"], [], [], id="assert-and-expr"),
]


@pytest.mark.parametrize(("source", "reads", "assigns", "deletes"), STATEMENT_KINDS)
def test_each_statement_kind(source: str, reads: list[str], assigns: list[str], deletes: list[str]) -> None:
    a = analyze_cell(source)
    assert (a.reads, a.assigns, a.deletes) == (reads, assigns, deletes)


def test_statement_handlers_are_keyed_by_real_statement_classes() -> None:
    # keyed by class name: a typo would silently fall back to "read every expression"
    statements = {c.__name__ for c in vars(ast).values() if isinstance(c, type) and issubclass(c, ast.stmt)}
    newer = {"TypeAlias"}  # Python >= 3.12
    assert set(_STMT_HANDLERS) - newer <= statements
    assert newer & statements <= set(_STMT_HANDLERS)
