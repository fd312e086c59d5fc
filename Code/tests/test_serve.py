"""How `python -m superres serve` finds the web app: Web_App/app.py, loaded by its path (superres.runtime.serve)."""
import ast
import os
import subprocess
import sys

from conftest import REPO
from superres.runtime import serve

APP = REPO / "Code" / "Web_App" / "app.py"


def test_serve_loads_the_web_app_beside_the_package_once():
    webapp = serve.load_webapp()
    assert webapp.__name__ == serve.WEBAPP_MODULE and webapp.__file__ == str(APP)
    assert serve.load_webapp() is webapp
    assert all(callable(getattr(webapp, name)) for name in ("Settings", "load_models", "create_app"))


def test_the_web_app_uses_the_package_but_never_serve():
    imported = set()   # "superres.runtime.x" for `from superres.runtime.x import` and `from superres.runtime import x`
    for node in ast.walk(ast.parse(APP.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("superres"):
            packages = ("superres", "superres.runtime")
            imported |= ({f"{node.module}.{a.name}" for a in node.names} if node.module in packages else {node.module})
    assert imported and "superres.runtime.serve" not in imported
    assert imported <= {"superres.runtime.imaging", "superres.runtime.inference", "superres.runtime.jobs",
                        "superres.runtime.model_folder", "superres.runtime.upload", "superres.DEFAULT_MODEL_DIR",
                        "superres.__version__"}


def test_a_missing_web_app_folder_is_a_clear_error(tmp_path):
    env = {**os.environ, "SUPERRES_WEBAPP_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "superres", "serve"], env=env, capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.returncode == 2 and f"The web app is not at {tmp_path / 'app.py'}" in res.stderr
    assert "Traceback" not in res.stderr
