"""Shared fixtures. Real photos come from packages (scikit-image's astronaut, matplotlib's Grace Hopper);
data from ../shared/data is used only where present (CI has it) and never copied into the repo."""
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (present in CI)")


def astronaut() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    import matplotlib.cbook as cbook
    return Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> Path:
    """A folder with two real portraits that packages ship."""
    d = tmp_path_factory.mktemp("photos")
    astronaut().save(d / "astronaut.png")
    grace_hopper().save(d / "grace_hopper.jpg", quality=95)
    return d
