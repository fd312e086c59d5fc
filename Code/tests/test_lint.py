"""The code passes ruff with the rules in pyproject.toml ([tool.ruff]): the package, the web app, the tests and the
notebook."""
import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "Code"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
