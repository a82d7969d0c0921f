"""The pictures of docs/STYLES.md: every named preset on public-domain photos only
(scikit-image's astronaut, NASA; matplotlib's Grace Hopper, US Navy), one small JPEG per preset
(the photos' outputs side by side) and one of the photos themselves.

    python -m face2paint.tools.styles_doc [--out docs/styles] [--only NAME ...]

The photos in ../shared/faces are test fixtures and never go into these pictures. Needs the
`dev` extra (scikit-image and matplotlib ship the photos) and the presets' weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..models.image_io import encode_image, resize_to
from .style_examples import parse_args, runnable, squares

PHOTOS = ("astronaut", "grace_hopper")
WORK_SIDE = 512  # the square the pipeline sees
TILE = 320  # each photo's square in the picture
QUALITY = 80  # about 30-45 KB per picture
OUT = Path(__file__).resolve().parents[2] / "docs" / "styles"


def main(argv: list[str] | None = None) -> int:
    from ..models.cache import ModelCache
    from ..models.pipeline import Face2Paint
    from ..models.presets import NAMED

    args = parse_args(argv, __doc__, OUT, "every named preset")
    photos = squares(PHOTOS, WORK_SIDE)
    strip = np.concatenate([resize_to(p, (TILE, TILE)) for p in photos], axis=1)
    (args.out / "photos.jpg").write_bytes(encode_image(strip, "JPEG", quality=QUALITY))
    cache = ModelCache()
    for preset in runnable(NAMED, args.only, cache.registry):
        pipe = Face2Paint(cache, style=preset.id)
        params = pipe.params_for()
        tiles = [resize_to(pipe.run(p, params).output, (TILE, TILE)) for p in photos]
        target = args.out / f"{preset.id}.jpg"
        target.write_bytes(encode_image(np.concatenate(tiles, axis=1), "JPEG", quality=QUALITY))
        print(f"{preset.id}: {target} ({target.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
