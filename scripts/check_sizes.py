"""Module and function sizes: no module over 600 lines, no function over 80 (docs/development.md).

A declarative argparse builder may be longer: it is a table, not logic; those are listed here.
Generated code (``jupyter_ds_jobs/_proto``) is not counted.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
#: (module path, function name) of declarative argparse builders.
DECLARATIVE = {
    ("jupyter_ds_jobs/cli/parser.py", "build_parser"),
}


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    problems: list[str] = []
    for path in sorted((root / "jupyter_ds_jobs").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("jupyter_ds_jobs/_proto/"):
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            problems.append(f"{rel}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in DECLARATIVE:
                    problems.append(
                        f"{rel}:{node.lineno}: {node.name}() is {n} lines (at most {MAX_FUNCTION_LINES})"
                    )
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} size problem(s): split along the seams (docs/development.md)")
        return 1
    print("sizes ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
