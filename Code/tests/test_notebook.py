"""The notebook Code/SuperResolution.ipynb.

The slow test executes it end to end in SMOKE mode (SUPERRES_SMOKE=1: two sample photos, tiny crops, 1 epoch
per stage, ~1-2 min on 2 CPU cores) with nbclient, on a copy in a temp folder, so nothing is written into the
repo; then checks the model folder it exported and runs the command lines the notebook printed for it. The quick
test checks the committed file itself.
"""
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, wait_http

CODE = Path(__file__).resolve().parents[1]
NOTEBOOK = CODE / "SuperResolution.ipynb"
STAGES = ("generator", "critic", "gan", "polish")


def code_cells(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_is_clean():
    """Valid, outputs cleared (small diffs), parameters and the Colab/Kaggle setup on top, no code of its own."""
    import nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    cells = code_cells(nb)
    assert "REPO_URL" in cells[0] and "google.colab" in cells[0] and "KAGGLE" in cells[0]
    assert "YOUR-ACCOUNT" not in cells[0]          # runs without edits where the repository was uploaded or cloned
    params = next(c for c in cells if "SMOKE = False" in c)
    for name in ("DATA", "VALID", "SCALES", "HR_SIZE", "TrainConfig(", "PRETRAINED = False", "SUPERRES_SMOKE"):
        assert name in params, name
    for src in cells:  # the notebook calls the package; functions and classes belong in superres/
        assert not any(line.lstrip().startswith(("def ", "class ")) for line in src.splitlines()), src


@pytest.mark.slow
def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
    import nbclient  # all installed by requirements.txt
    import nbformat

    # A kernel spec for *this* interpreter, so the notebook runs in the test's environment whether or not a
    # kernel was ever registered for it (fresh CI machine, .venv made by Code/test.sh).
    jupyter = tmp_path / "jupyter"
    kernel_dir = jupyter / "kernels" / "superres-test"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "superres test", "language": "python"}))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("SUPERRES_SMOKE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebook's sample-photo folder goes here too
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CODE), os.environ.get("PYTHONPATH")])))

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="superres-test", timeout=900, allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    try:
        client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for inspection when the test fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "SMOKE=True" in text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 8, f"expected the data, stage and demo figures, got {len(figures)}"

    # the run folders (one per scale) live in the working copy, each with a record of the four stages
    run_dir = work / "runs" / "smoke"
    for scale in (4, 2):
        record = json.loads((run_dir / f"x{scale}" / "record.json").read_text())
        assert set(STAGES) <= set(record["stages"])

    # ... and an exported model folder whose card matches its files
    export = run_dir / "export"
    card = json.loads((export / "model_card.json").read_text())
    assert card["scales"] == [2, 4] and set(STAGES) <= set(card["stages"]["x4"])
    assert card["losses"]["x4"]["generator"] == card["losses"]["x2"]["generator"] == "weightfree"
    for name, digest in card["sha256"].items():
        path = export / name
        assert path.stat().st_size > 100_000, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    for err in card["onnx_max_abs_error_vs_torch"].values():
        assert err < 1e-3

    # the commands the notebook printed for its own model folder work as printed
    commands = [line[2:] for line in text.splitlines() if line.startswith("$ python -m superres ")]
    assert [shlex.split(c)[3] for c in commands] == ["enhance", "serve"], commands
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        if argv[3] == "enhance":
            res = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr
            assert (work / "runs" / "smoke" / "enhanced" / "demo_input.png").is_file()
        else:
            port = free_port()                     # the printed port may be taken on a test machine
            argv[argv.index("--port") + 1] = str(port)
            server = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", 120, server)
            finally:
                server.terminate()
                server.wait(10)
