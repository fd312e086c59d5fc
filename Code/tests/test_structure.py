"""The package's shape: its layers, as import-linter contracts in pyproject.toml ([tool.importlinter]: serving imports
nothing of training, evaluation or the write-up, nor torch; no import cycles), and what import-linter cannot see:
imports made only inside functions, which are not run when a module loads."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "Code" / "superres"


def lint_imports(config: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with `config`, on the package `superres` found in `package_parent`."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo", str(config)], cwd=config.parent,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_and_no_cycles_hold():
    res = lint_imports(REPO / "pyproject.toml", PACKAGE.parent)
    assert res.returncode == 0 and "0 broken" in res.stdout, res.stdout + res.stderr


def test_a_serving_module_that_imports_torch_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "superres", ignore=shutil.ignore_patterns("default_model", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path / "pyproject.toml", tmp_path).returncode == 0      # the copy holds as it is
    inference = tmp_path / "superres" / "runtime" / "inference.py"
    inference.write_text(inference.read_text() + "\nimport torch\n")
    res = lint_imports(tmp_path / "pyproject.toml", tmp_path)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "superres.runtime.inference is not allowed to import torch" in res.stdout
    assert "superres.runtime.upload -> superres.runtime.inference" in res.stdout   # and what uses it, indirectly


def test_the_evaluation_and_its_tables_load_without_torch():
    """evaluate imports torch only inside the functions that score; loading it (and the tables) needs none."""
    code = ("import sys, superres.evaluation.results, superres.evaluation.evaluate, superres.writeup.report_eval, "
            "superres.writeup.latex; "
            "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
