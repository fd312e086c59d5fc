"""`python -m superres train --help` explains every option and its default."""
import re
import subprocess
import sys

from conftest import REPO


def option_blocks(help_text: str) -> dict[str, str]:
    """{"--bs": "batch size (default: 16)", ...} from argparse's options section."""
    section = help_text.split("options:", 1)[1]
    blocks = re.split(r"\n  (?=-)", "\n" + section)
    out = {}
    for block in filter(str.strip, blocks):
        words = " ".join(block.split())
        name = words.split()[0].rstrip(",")
        # what follows the option's spelling (and its METAVAR or {choices}) is its help text
        text = re.sub(r"^(-[\w-]+(?: [A-Z_]+| \{[^}]*\})?,? ?)+", "", words)
        out[name] = text
    return out


def test_train_help_gives_every_option_a_meaning_and_a_default():
    res = subprocess.run([sys.executable, "-m", "superres", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    blocks = option_blocks(res.stdout)
    assert {"--data", "--bs", "--lr-gan", "--minutes-gen", "--lattice-weight", "--stages"} <= blocks.keys()
    for name, text in blocks.items():
        assert len(text) > 8, f"{name} has no help text"
        if name not in ("-h", "--data"):            # --data is required
            assert "default" in text, f"{name}: {text!r} does not say its default"
    assert "(default: 16)" in blocks["--bs"] and "(default: 0.0001)" in blocks["--lr-gan"]
