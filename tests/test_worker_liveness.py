"""The worker liveness check's rules (face2paint/worker/liveness.py), on real files, and the
bounded failure-reason classes of the worker metrics, on the errors the code really raises.
(The check against a running worker is in tests/test_worker_metrics.py.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from face2paint.worker import liveness
from face2paint.worker.metrics import FAILURE_REASONS, OTHER_REASON, failure_reason

TIMEOUT_S = 600.0


def check(d, **kw):
    return liveness.problems(d, stage_timeout_s=TIMEOUT_S, max_heartbeat_age_s=120, **kw)


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def record(d, pid, running_s, stage="stylize"):
    (d / f"task-{pid}.json").write_text(json.dumps(
        {"stage": stage, "item": "i1", "started": time.time() - running_s}))


def test_fresh_heartbeat_is_live(tmp_path):
    liveness.reset(tmp_path)
    assert check(tmp_path) == []


def test_stale_or_missing_heartbeat_is_not_live(tmp_path):
    assert "no heartbeat" in check(tmp_path)[0]
    liveness.beat(tmp_path)
    age(tmp_path / "heartbeat", 200)
    (problem,) = check(tmp_path)
    assert "event loop last beat 200 s ago" in problem


def test_a_warm_shutdown_is_live_while_the_loop_no_longer_beats(tmp_path):
    liveness.reset(tmp_path)
    age(tmp_path / "heartbeat", 500)
    liveness.stopping(tmp_path)
    assert check(tmp_path) == []
    record(tmp_path, os.getpid(), TIMEOUT_S + 120)  # a stuck stage still fails it
    assert len(check(tmp_path)) == 1
    liveness.reset(tmp_path)  # a restarted worker starts clean
    assert check(tmp_path) == [] and not (tmp_path / "stopping").exists()


def test_a_stage_past_its_hard_limit_in_a_live_process_is_stuck(tmp_path):
    liveness.reset(tmp_path)
    record(tmp_path, os.getpid(), TIMEOUT_S - 10)  # long, but within its limit
    assert check(tmp_path) == []
    record(tmp_path, os.getpid(), TIMEOUT_S + liveness.STUCK_MARGIN_S + 5)
    (problem,) = check(tmp_path)
    assert f"pid {os.getpid()}" in problem and "stylize" in problem and "stuck" in problem


def test_records_of_dead_processes_are_ignored(tmp_path):
    liveness.reset(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record(tmp_path, gone.pid, TIMEOUT_S * 10)  # killed at the limit: its record stays behind
    assert check(tmp_path) == []


def test_begin_and_end_write_and_remove_this_process_record(tmp_path):
    liveness.begin("detect", "item-1", tmp_path)
    data = json.loads((tmp_path / f"task-{os.getpid()}.json").read_text())
    assert data["stage"] == "detect" and data["item"] == "item-1"
    liveness.end(tmp_path)
    assert not list(tmp_path.glob("task-*"))


def test_probe_command_exit_codes(tmp_path):
    cmd = [sys.executable, "-m", "face2paint.worker.liveness", "--dir", str(tmp_path)]
    liveness.reset(tmp_path)
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "live"
    age(tmp_path / "heartbeat", 10_000)
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "stuck" in bad.stderr


# --- failure reasons -------------------------------------------------------------------------


def _image_error(data: bytes) -> str:
    from face2paint.models.image_io import ImageError, load_image

    with pytest.raises(ImageError) as e:
        load_image(data)
    return f"detect: {e.value}"


def test_failure_reasons_from_the_real_errors(tmp_path):
    from PIL import Image

    from face2paint.models.registry import ModelUnavailable, Registry
    from face2paint.settings import Settings

    astronaut = pytest.importorskip("skimage.data").astronaut()
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG")
    assert failure_reason(_image_error(buf.getvalue()[:6000])) == "bad_input"  # truncated
    assert failure_reason(_image_error(b"not an image at all")) == "bad_input"
    assert failure_reason(_image_error(b"")) == "bad_input"
    empty = Registry(Settings(home=tmp_path, model_dir=tmp_path))
    for model_id in ("no-such-model", "animeganv2-hayao-int8"):  # unknown; known but missing
        with pytest.raises(ModelUnavailable) as e:
            empty.resolve(model_id)
        assert failure_reason(f"stylize: {e.value}") == "model_unavailable", e.value
    # The reasons the stages themselves write (tasks.py, jobs/service.py).
    assert failure_reason("stylize: gave up after 3 attempts; last error: timed out after 600 s "
                          "(FACE2PAINT_STAGE_TIMEOUT_S)") == "timeout"
    assert failure_reason("gave up after 3 attempts at stage stylize (the worker died each time)") \
        == "worker_died"
    assert failure_reason("parse: gave up after 16 min of retrying through an outage: x. Check the "
                          "database, storage and broker, then submit the image again") == "outage"
    assert failure_reason("parse: gave up after 3 attempts; last error: RuntimeError: boom") == "error"
    assert failure_reason("something new") == OTHER_REASON
    # A bounded label set: every class is one of the declared names.
    assert {r for r, _ in FAILURE_REASONS} | {OTHER_REASON} == {
        "timeout", "worker_died", "outage", "model_unavailable", "error", "bad_input", "other"}
