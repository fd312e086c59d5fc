"""Real portraits that Python packages ship, usable anywhere (demos, the notebook's SMOKE mode, tests):
scikit-image's `astronaut` (Eileen Collins, NASA, public domain) and matplotlib's `grace_hopper.jpg`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

SAMPLE_NAMES = ("astronaut.png", "grace_hopper.jpg")


def sample_photos(dest) -> Path:
    """Write the two sample portraits into the folder `dest` (created if needed); returns `dest`."""
    from matplotlib import cbook
    from PIL import Image
    try:
        from skimage.data import astronaut
    except ImportError as e:
        raise ImportError("sample_photos needs scikit-image (pip install scikit-image)") from e
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    Image.fromarray(astronaut()).save(dest / SAMPLE_NAMES[0])
    shutil.copyfile(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), dest / SAMPLE_NAMES[1])
    return dest
