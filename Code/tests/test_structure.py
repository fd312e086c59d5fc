"""The package's shape: no two modules import each other (directly or round a circle, counting imports
inside functions), and reading results or writing the evaluation's tables needs no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "superres"


def package_imports(path: Path) -> set[str]:
    """The superres modules that `path` imports anywhere in it (`from .x import`, `from . import x`,
    `import superres.x`)."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or node.module == "superres"
                                                 or (node.module or "").startswith("superres.")):
            module = (node.module or "").removeprefix("superres").lstrip(".")
            if module:
                found.add(module.split(".")[0])
            else:   # from . import x
                found |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("superres.")}
    return {m for m in found if m in names and m != "__init__"} - {path.stem}


def test_no_import_cycle_among_the_package_modules():
    graph = {p.stem: package_imports(p) for p in PACKAGE.glob("*.py")}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_evaluation_and_its_tables_load_without_torch():
    code = ("import sys, superres.results, superres.evaluate, superres.report_eval, superres.latex; "
            "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
