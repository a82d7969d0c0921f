"""The pictures of docs/STYLES.md: every named preset on public-domain photos only
(scikit-image's astronaut, NASA; matplotlib's Grace Hopper, US Navy), one small JPEG per preset
(the photos' outputs side by side) and one of the photos themselves.

    python -m face2paint.tools.styles_doc [--out docs/styles] [--only NAME ...]

The photos in ../shared/faces are test fixtures and never go into these pictures. Needs the
`dev` extra (scikit-image and matplotlib ship the photos) and the presets' weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..models.image_io import encode_image, load_image, resize_to
from .style_examples import _square, photo_path

PHOTOS = ("astronaut", "grace_hopper")
WORK_SIDE = 512  # the square the pipeline sees
TILE = 320  # each photo's square in the picture
QUALITY = 80  # about 30-45 KB per picture
OUT = Path(__file__).resolve().parents[2] / "docs" / "styles"


def main(argv: list[str] | None = None) -> int:
    from ..models.cache import ModelCache
    from ..models.pipeline import Face2Paint
    from ..models.presets import NAMED, preset_status

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="*", help="preset names (default: every named preset)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = [_square(load_image(photo_path(name)).rgb, WORK_SIDE) for name in PHOTOS]
    strip = np.concatenate([resize_to(p, (TILE, TILE)) for p in photos], axis=1)
    (args.out / "photos.jpg").write_bytes(encode_image(strip, "JPEG", quality=QUALITY))
    cache = ModelCache()
    for preset in NAMED:
        if args.only and preset.id not in args.only:
            continue
        status = preset_status(preset, cache.registry)
        if not status.available:
            print(f"{preset.id}: skipped, missing {', '.join(status.missing)}", file=sys.stderr)
            continue
        pipe = Face2Paint(cache, style=preset.id)
        params = pipe.params_for()
        tiles = [resize_to(pipe.run(p, params).output, (TILE, TILE)) for p in photos]
        target = args.out / f"{preset.id}.jpg"
        target.write_bytes(encode_image(np.concatenate(tiles, axis=1), "JPEG", quality=QUALITY))
        print(f"{preset.id}: {target} ({target.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
