"""The web page's style thumbnails: each preset run on public-domain photos only
(scikit-image's astronaut and coffee, matplotlib's Grace Hopper), side by side in one small JPEG
per model combination, plus examples.json: each preset's image (the web page's index) and which
photos, models and licences it came from.

    python -m face2paint.tools.style_examples [--out face2paint/api/static/examples] [--only NAME ...]

Needs the `dev` extra (scikit-image and matplotlib ship the photos) and the presets' weights
(FACE2PAINT_MODEL_DIR); a preset whose weights are absent is skipped and said so. Runs the
photos at a reduced size, since the thumbnails are small.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from ..models.image_io import encode_image, load_image, resize_to
from ..models.presets import preset_status

# (name, where it comes from, its licence); the only photos examples may be made from.
PHOTOS = (
    ("astronaut", "scikit-image data: astronaut.png (NASA, Eileen Collins)", "public domain"),
    ("grace_hopper", "matplotlib sample data: grace_hopper.jpg (US Navy)", "public domain"),
    ("coffee", "scikit-image data: coffee.png (Rachel Michetti)", "CC0"),
)
WORK_SIDE = 384  # the square the pipeline sees (a multiple of 32, as some generators need)
TILE = 160  # each photo's square in the thumbnail
OUT = Path(__file__).resolve().parents[1] / "api" / "static" / "examples"


def photo_path(name: str) -> Path:
    if name == "grace_hopper":
        from matplotlib import cbook

        return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    import skimage.data

    return Path(skimage.data.__file__).parent / f"{name}.png"


def _square(rgb: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(ImageOps.fit(Image.fromarray(rgb), (side, side), Image.Resampling.LANCZOS))


def squares(names, side: int) -> list[np.ndarray]:
    """The named photos (photo_path), each cropped to a `side` square."""
    return [_square(load_image(photo_path(name)).rgb, side) for name in names]


def parse_args(argv: list[str] | None, doc: str, out: Path, every: str) -> argparse.Namespace:
    """The options of the tools that picture presets: --out (made here) and --only NAME ..."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--only", nargs="*", help=f"preset names (default: {every})")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def runnable(presets, only: list[str] | None, registry, hint: str = "") -> Iterator:
    """The presets asked for (all, without `only`) whose models are all here; each other one
    asked for is skipped and said so on stderr, with `hint` (how to get its weights)."""
    for preset in presets:
        if only and preset.id not in only:
            continue
        status = preset_status(preset, registry)
        if status.available:
            yield preset
        else:
            print(f"{preset.id}: skipped, missing {', '.join(status.missing)}{hint}", file=sys.stderr)


def make_example(preset, cache, photos: list[np.ndarray]) -> np.ndarray:
    from ..models.pipeline import Face2Paint
    from ..models.types import Params

    pipe = Face2Paint(cache, style=preset.face_model, background_style=preset.background_model)
    params = Params(**dict(preset.params))
    tiles = [resize_to(pipe.run(rgb, params).output, (TILE, TILE)) for rgb in photos]
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> int:
    from ..models.cache import ModelCache
    from ..models.presets import PRESETS

    args = parse_args(argv, __doc__, OUT, "every preset")
    photos = squares([name for name, _, _ in PHOTOS], WORK_SIDE)
    cache = ModelCache()
    record_path = args.out / "examples.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record["photos"] = [{"name": n, "source": s, "licence": lic} for n, s, lic in PHOTOS]
    styles = record.setdefault("styles", {})
    made: set[str] = set()
    hint = " (set FACE2PAINT_MODEL_DIR or `face2paint models pull ID`)"
    for preset in runnable(PRESETS, args.only, cache.registry, hint):
        # Presets that run the same models with the same parameters share one image.
        image = f"{'+'.join(preset.models)}.jpg" if not preset.params else f"{preset.id}.jpg"
        if image not in made:
            try:
                strip = make_example(preset, cache, photos)
            except Exception as e:  # noqa: BLE001 - one broken model must not stop the others
                print(f"{preset.id}: failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
                continue
            (args.out / image).write_bytes(encode_image(strip, "JPEG", quality=82))
            made.add(image)
        styles[preset.id] = {"image": image, "models": list(preset.models),
                             "licences": list(preset.licences), "commercial_use": preset.commercial_use}
        print(f"{preset.id}: {args.out / image}")
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
