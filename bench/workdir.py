"""A scratch folder with a photo in it, for the benchmarks that run the stack on real weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def astronaut_workdir(prefix: str) -> tuple[Path, Path]:
    """A new temporary folder (named `prefix`...) and scikit-image's astronaut saved in it as
    astronaut.png. Exits saying what to set where FACE2PAINT_MODEL_DIR is not set."""
    if not os.environ.get("FACE2PAINT_MODEL_DIR"):
        raise SystemExit("set FACE2PAINT_MODEL_DIR to a directory of weights (e.g. ../shared/models)")
    from PIL import Image
    from skimage import data

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    image = tmp / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image)
    return tmp, image
