"""GPU batching (models/batch.py, worker/batching.py): several photos' stylize work run as one
batch gives what each photo gives alone, with the weight-free filter, with the default real
weights (skipped without them) and with a generator whose graph takes a real batch
(AnimeGANv3 Shinkai: a stacked forward pass, equal within float rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from face2paint.models.batch import Work, stylize_many
from face2paint.models.cache import ModelCache
from face2paint.models.face import FaceBatch
from face2paint.models.pipeline import Face2Paint
from face2paint.models.registry import Registry
from face2paint.models.types import Params
from face2paint.settings import Settings
from tests.helpers import astronaut_path, model_dir


def _photo(side_w: int, side_h: int) -> np.ndarray:
    return np.asarray(Image.open(astronaut_path()).convert("RGB").resize((side_w, side_h)))


def _faces(rgb: np.ndarray, scales: list[float], size: int) -> FaceBatch:
    """Crops of the photo standing in for prepared faces; `scales` (image px per crop px)
    give them different work sizes (FaceHelper.work_size)."""
    crops, inverses = [], []
    for k, s in enumerate(scales):
        y = x = 16 * k
        crop = np.asarray(Image.fromarray(rgb[y:y + 200, x:x + 200]).resize((size, size)))
        crops.append(crop)
        inverses.append(np.array([[s, 0.0, x], [0.0, s, y]]))
    n = len(scales)
    return FaceBatch(np.stack(crops) if n else np.zeros((0, size, size, 3), np.uint8),
                     np.stack(inverses) if n else np.zeros((0, 2, 3)),
                     np.full((n, size, size), 255, np.uint8))


def _works(pipe, size: int = 512, params: Params | None = None) -> list[Work]:
    params = params or Params(face_size=size, face_min_size=size // 2)
    a = _photo(size, size)
    b = _photo(size * 3 // 4, size * 3 // 4)
    big = _photo(size * 2, size * 3 // 2)  # past background_max_side: capped, then restored
    capped = Params(face_size=size, face_min_size=size // 2, background_max_side=size)
    return [
        Work(pipe, _faces(a, [0.3, 1.0], size), a, params),   # two work sizes
        Work(pipe, _faces(b, [0.6], size), b, params),
        Work(pipe, _faces(a, [], size), a, params),           # no face; background as a's
        Work(pipe, _faces(big, [1.0], size), big, capped),
    ]


def _compare(works: list[Work], max_batch: int, exact: bool) -> float:
    """Worst PSNR (dB) of the batched outputs against each photo alone (inf when equal)."""
    batched = stylize_many(works, max_batch=max_batch)
    worst = float("inf")
    for w, (crops, background) in zip(works, batched):
        single_crops = w.pipe.stylize_faces(w.faces, w.params)
        single_bg = w.pipe.stylize_background(w.rgb, w.params)
        assert len(crops) == len(single_crops)
        for got, want in [*zip(crops, single_crops), (background, single_bg)]:
            assert got.shape == want.shape and got.dtype == np.uint8
            if exact:
                np.testing.assert_array_equal(got, want)
                continue
            mse = float(np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2))
            worst = min(worst, float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse))
    return worst


def test_batched_equals_single_with_the_builtin_filter(tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    pipe = Face2Paint(ModelCache(Registry(Settings(model_dir=empty))), style="classical-cartoon")
    _compare(_works(pipe, 256), max_batch=16, exact=True)
    _compare(_works(pipe, 256), max_batch=1, exact=True)  # the bound splits groups


def test_batched_equals_single_with_a_tflite_generator():
    pipe = Face2Paint(ModelCache(Registry(Settings(model_dir=model_dir()))), style="animeganv2-hayao-int8")
    assert pipe.choice("stylize").model_id == "animeganv2-hayao-int8"
    _compare(_works(pipe, 256), max_batch=16, exact=True)  # TFLite: one image per run


def test_stacked_batches_equal_single_runs_within_rounding():
    cache = ModelCache(Registry(Settings(model_dir=model_dir())))
    try:
        pipe = Face2Paint(cache, style="animeganv3-shinkai")
        generator = pipe.face_stylizer
    except Exception as e:  # noqa: BLE001 - the weights are not there
        pytest.skip(f"needs AnimeGANv3 Shinkai: {e}")
    assert generator.batchable, "Shinkai's graph has a free batch dimension"
    # Small photos: the point is the stacked run, not the size.
    assert _compare(_works(pipe, 128), max_batch=16, exact=False) >= 40.0


# --- the gatherer in a real worker ------------------------------------------------------------


def test_a_stylize_worker_batches_waiting_photos_and_each_keeps_its_own_record(tmp_path):
    """A CPU worker (detect, parse, finalize) and a stylize worker that batches: photos that
    wait for stylize together go through one batch, each item still gets exactly one
    stylize attempt, and every result equals the photo run alone in-process."""
    import io
    import shutil
    from contextlib import closing

    from sqlalchemy import select

    from face2paint.cli.client import Client
    from face2paint.cli.stack import EmbeddedStack
    from face2paint.jobs.db import Item, StageAttempt, make_engine, session_factory
    from face2paint.jobs.storage import LocalStorage
    from face2paint.models.image_io import load_image

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    names = [f"p{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        Image.open(astronaut_path()).convert("RGB").resize((256 + 32 * i, 256)).save(tmp_path / name)
    home = tmp_path / "home"
    stack = EmbeddedStack(home, worker_queues=[("detect", "parse", "finalize"), ("stylize",)])
    # A long wait, so the photos the CPU worker prepares one after another meet in one batch.
    stack.base_env.update(FACE2PAINT_MODEL_DIR=str(no_weights), FACE2PAINT_STYLIZE_BATCH_MAX="4",
                          FACE2PAINT_STYLIZE_BATCH_WAIT_MS="4000")
    with stack:
        with closing(Client(stack.api_url, stack.api_key)) as client:
            job = client.submit([tmp_path / n for n in names], {"style": "classical-cartoon"})
            done = client.wait(job["id"], interval_s=0.2, timeout_s=240)
        log = stack.log("worker1")
    assert done["status"] == "succeeded", done
    sizes = [int(m) for m in __import__("re").findall(r"stylize batch of (\d+) photo", log)]
    assert sizes and max(sizes) >= 2, log[-3000:]
    assert sum(sizes) == len(names)  # every photo stylized once, in some batch
    engine = make_engine(f"sqlite:///{home / 'face2paint.db'}")
    storage = LocalStorage(home / "storage")
    pipe = Face2Paint(ModelCache(Registry(Settings(model_dir=no_weights))), style="classical-cartoon")
    try:
        with session_factory(engine)() as s:
            items = list(s.scalars(select(Item).where(Item.job_id == job["id"])))
            for item in items:
                attempts = [(a.stage, a.outcome) for a in s.scalars(
                    select(StageAttempt).where(StageAttempt.item_id == item.id).order_by(StageAttempt.id))]
                assert attempts == [(st, "succeeded") for st in ("detect", "parse", "stylize", "finalize")]
                got = np.asarray(Image.open(io.BytesIO(storage.get_bytes(item.output_key))).convert("RGB"))
                alone = pipe.run(load_image(tmp_path / item.filename)).output
                np.testing.assert_array_equal(got, alone)
    finally:
        engine.dispose()
        shutil.rmtree(home / "storage", ignore_errors=True)
