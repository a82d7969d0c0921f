"""Real worker processes split as a deployment splits them: a CPU worker on
detect,parse,finalize and a stylize worker, in the embedded stack (SQLite, local storage, an
embedded Redis, the API). Three jobs with three parameter sets go through them.

What each worker process loaded is read from its log: the model cache logs every load
("model loaded: ID ..."). The CPU worker never loads a stylizer; each model loads once,
whatever the parameters; and the results equal the in-process pipeline's, pixel for pixel.
"""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from face2paint.cli.client import Client
from face2paint.cli.stack import EmbeddedStack
from face2paint.models.cache import ModelCache
from face2paint.models.image_io import load_image
from face2paint.models.pipeline import Face2Paint
from face2paint.models.registry import Registry
from face2paint.models.types import Params
from face2paint.settings import Settings
from tests.helpers import astronaut_path, model_dir
from tests.service_stack import running

SPLIT = [("detect", "parse", "finalize"), ("stylize",)]
PARAM_SETS = [
    {},
    {"skin_smoothing_factor": 0.3, "eye_enhance_ratio": 1.2},
    {"post_sharpen_weight": 0.0, "face_min_size": 512, "background_max_side": 384},
]
LOADED = re.compile(r"model loaded: (\S+) .*, pid (\d+)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model_dir()  # skips without weights
    with running(EmbeddedStack(tmp_path_factory.mktemp("split"), worker_queues=SPLIT)) as st:
        yield st


def _loads(log: str) -> tuple[Counter, set[str]]:
    found = LOADED.findall(log)
    return Counter(model_id for model_id, _ in found), {pid for _, pid in found}


def test_split_workers_load_their_own_models_once_and_match_in_process(stack):
    client = Client(stack.api_url, stack.api_key)
    results = []
    try:
        for params in PARAM_SETS:
            job = client.submit([astronaut_path()], {"params": params})
            done = client.wait(job["id"], interval_s=0.2, timeout_s=300)
            assert done["status"] == "succeeded", done
            item = client.items(job["id"])[0]
            results.append(client.download(job["id"], item["id"]))
    finally:
        client.close()

    cpu, cpu_pids = _loads(stack.log("worker0"))
    gpu, gpu_pids = _loads(stack.log("worker1"))
    # One pool process each; each model once for all three parameter sets; no stylizer on CPU.
    assert len(cpu_pids) == 1 and len(gpu_pids) == 1
    assert cpu == {"retinaface-mnet025": 1, "bisenetv2-celebamaskhq-448-int8": 1}
    assert gpu == {"animeganv3-jp-face": 1, "animeganv3-hayao": 1}  # the default style, anime

    pipe = Face2Paint(ModelCache(Registry(Settings(model_dir=model_dir()))))
    image = load_image(astronaut_path())
    for params, data in zip(PARAM_SETS, results):
        expected = pipe.run(image, Params(**params)).output
        with Image.open(io.BytesIO(data)) as im:
            got = np.asarray(im.convert("RGB"))
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), (params, np.abs(got.astype(int) - expected).max())
