"""superres.runtime.model_folder: a model folder is checked against its card, and one fetched as an archive is unpacked,
checked and bounded in size (real files in temporary folders, a real local HTTP server)."""
import asyncio
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from superres.runtime.model_folder import CARD, ModelError, fetch_model, model_files, sha256, verify_model_dir

MB = 1024 * 1024


@pytest.fixture
def folder(untrained_model_dir, tmp_path) -> Path:
    """A copy of a valid model folder, free to damage."""
    return Path(shutil.copytree(untrained_model_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """A local HTTP server over a folder; yields (folder, base URL)."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(url, cache, digest="skip", max_bytes=1024 * MB) -> Path:
    return asyncio.run(fetch_model(url, cache, digest, max_bytes))


def test_sha256_is_the_files_sha256(tmp_path):
    data = bytes(range(256)) * 9000                       # more than one 1 MB block
    (tmp_path / "f").write_bytes(data)
    assert sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_good_folder_passes_and_its_card_lists_the_onnx_files(folder):
    card = verify_model_dir(folder)
    assert sorted(model_files(card)) == sorted(p.name for p in folder.glob("*.onnx"))


def test_a_damaged_file_is_named_with_a_clear_error(folder):
    with open(folder / "x2_faithful.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"x2_faithful.onnx does not match its model card .*damaged"):
        verify_model_dir(folder)


def test_a_missing_file_or_card_is_a_clear_error(folder):
    (folder / "x4_gan.onnx").unlink()
    with pytest.raises(ModelError, match="lacks x4_gan.onnx"):
        verify_model_dir(folder)
    (folder / CARD).unlink()
    with pytest.raises(ModelError, match=f"No model found: .* has no {CARD}"):
        verify_model_dir(folder)


def test_a_card_of_another_format_is_refused(folder):
    card = json.loads((folder / CARD).read_text())
    (folder / CARD).write_text(json.dumps({**card, "format": 1}))
    with pytest.raises(ModelError, match="format 1"):
        verify_model_dir(folder)


def test_a_good_archive_is_fetched_unpacked_and_checked(untrained_model_dir, www, tmp_path):
    root, base = www
    shutil.make_archive(str(root / "good"), "gztar", untrained_model_dir)
    digest = sha256(root / "good.tar.gz")
    dest = fetch(base + "/good.tar.gz", tmp_path / "cache", digest)
    assert verify_model_dir(dest) == json.loads((untrained_model_dir / CARD).read_text())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [dest.name]      # no temporary files left


def test_an_archive_with_a_damaged_file_or_wrong_sha256_is_refused(folder, www, tmp_path):
    root, base = www
    shutil.make_archive(str(root / "fine"), "zip", folder)
    with pytest.raises(ModelError, match="not MODEL_SHA256=" + "0" * 64):
        fetch(base + "/fine.zip", tmp_path / "cache", "0" * 64)
    with open(folder / "x4_gan.onnx", "ab") as f:
        f.write(b"tampered")
    shutil.make_archive(str(root / "damaged"), "zip", folder)
    with pytest.raises(ModelError, match="x4_gan.onnx does not match its model card"):
        fetch(base + "/damaged.zip", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_archives_over_the_size_limit_are_refused(untrained_model_dir, www, tmp_path):
    root, base = www
    shutil.make_archive(str(root / "model"), "zip", untrained_model_dir)
    size = (root / "model.zip").stat().st_size
    with pytest.raises(ModelError, match=r"over the .* MB limit \(MODEL_MAX_MB\)"):
        fetch(base + "/model.zip", tmp_path / "cache", max_bytes=size - 1)
    with zipfile.ZipFile(root / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:   # small packed, 2 MB unpacked
        z.writestr("model/big.bin", b"\0" * 2 * MB)
    with pytest.raises(ModelError, match=r"unpacks to 2 MB, over the 1 MB limit"):
        fetch(base + "/bomb.zip", tmp_path / "cache", max_bytes=1 * MB)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unsafe_or_unknown_archives_are_refused(www, tmp_path):
    root, base = www
    with zipfile.ZipFile(root / "escape.zip", "w") as z:
        z.writestr("../outside.txt", b"x")
    with pytest.raises(ModelError, match="unsafe member path '../outside.txt'"):
        fetch(base + "/escape.zip", tmp_path / "cache")
    (root / "plain.txt").write_text("not an archive")
    with pytest.raises(ModelError, match="neither a zip nor a tar"):
        fetch(base + "/plain.txt", tmp_path / "cache")
    with pytest.raises(ModelError, match="MODEL_URL needs MODEL_SHA256"):
        fetch(base + "/plain.txt", tmp_path / "cache", "")
    assert not (tmp_path / "outside.txt").exists()


def test_the_model_folder_and_inference_load_without_torch():
    code = ("import sys, superres.runtime.model_folder, superres.runtime.inference; "
            "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
