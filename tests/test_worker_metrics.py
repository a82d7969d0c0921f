"""A real worker's observability, over real PostgreSQL, Redis and S3 with one worker process:

- its Prometheus endpoint (the pool's parent serving its pool processes' counts) moves while a
  job runs: stage histograms per stage and model, failures by reason class, CPU per stage;
- while a stage runs, the API's scaling metric counts it as running although the broker's
  queue list for that stage is empty (what a Redis list-length trigger would scale on);
- its liveness check passes while a stage runs and fails once the worker's event loop stops.

A fault rule pauses the stylize stage of one photo, so "during the job" is a fixed point,
not a race against a timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from face2paint.cli.client import Client
from face2paint.cli.stack import ProcessStack, free_port
from face2paint.worker.faults import marker_path
from tests.helpers import astronaut_path
from tests.service_stack import running, stack_env

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple, float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def probe(state_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "face2paint.worker.liveness", "--dir", str(state_dir)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture
def photos(tmp_path):
    held = tmp_path / "held.png"
    Image.open(astronaut_path()).convert("RGB").resize((256, 256)).save(held)
    cut = tmp_path / "cut.jpg"
    Image.open(astronaut_path()).convert("RGB").save(cut, "JPEG")
    cut.write_bytes(cut.read_bytes()[:6000])  # truncated: fails at detect, on the worker
    return held, cut


def test_worker_metrics_move_during_a_job_and_the_scaling_metric_counts_running_items(
        pg_url, redis_url, s3, tmp_path, photos):
    faults_dir, state_dir = tmp_path / "faults", tmp_path / "worker-state"
    faults_dir.mkdir()
    port = free_port()
    extra = {"FACE2PAINT_FAULTS": "pause:stylize:held", "FACE2PAINT_FAULTS_DIR": str(faults_dir),
             "FACE2PAINT_WORKER_METRICS_PORT": str(port), "FACE2PAINT_WORKER_METRICS_ADDR": "127.0.0.1",
             "FACE2PAINT_WORKER_STATE_DIR": str(state_dir),
             "FACE2PAINT_WORKER_HEARTBEAT_MAX_AGE_S": "2"}
    env = stack_env(pg_url, redis_url, s3, **extra)
    worker_url = f"http://127.0.0.1:{port}/metrics"
    with running(ProcessStack(env, tmp_path / "home", workers=1)) as stack:
        client = Client(stack.api_url, stack.api_key)
        wait_for(lambda: _reachable(worker_url), 60, "the worker's metrics endpoint")
        before = scrape(worker_url)
        assert total(before, "face2paint_stage_seconds_count") == 0

        held, cut = photos
        job = client.submit([held, cut], {"style": "classical-cartoon"})
        held_id = next(i["id"] for i in client.items(job["id"]) if i["filename"] == "held.png")
        wait_for(lambda: marker_path(faults_dir, "paused", "stylize", held_id).exists(), 120,
                 "the held photo's stylize stage to start")

        # During the job: detect and parse of the held photo are in the histograms, with the
        # model each used; its stylize is in progress.
        during = scrape(worker_url)
        for stage in ("detect", "parse"):
            assert total(during, "face2paint_stage_seconds_count", stage=stage) >= 1, stage
            assert total(during, "face2paint_stage_cpu_seconds_total", stage=stage) > 0, stage
        assert total(during, "face2paint_stage_seconds_count", stage="detect",
                     model="retinaface-mnet025") >= 1
        assert total(during, "face2paint_stage_in_progress", stage="stylize") == 1
        assert total(during, "face2paint_stage_seconds_count", stage="stylize") == 0

        # The API counts the running stage; the broker's list for it is empty (the message
        # is reserved by the worker, in the unacked hash), so a list-length trigger reads 0.
        api = scrape(f"{stack.api_url}/metrics")
        assert api[("face2paint_stage_items", (("stage", "stylize"), ("state", "running")))] == 1
        broker = redis.Redis.from_url(env["FACE2PAINT_BROKER_URL"])
        stylize_lists = [k for k in broker.keys("stylize*") if broker.type(k) == b"list"]
        assert sum(broker.llen(k) for k in stylize_lists) == 0
        assert broker.hlen("unacked") >= 1

        # Live while the stage runs; not live once the worker's event loop stops beating.
        ok = probe(state_dir, env)
        assert ok.returncode == 0, ok.stderr
        parent = stack.procs["worker0"].pid
        os.kill(parent, signal.SIGSTOP)
        try:
            time.sleep(3)  # past FACE2PAINT_WORKER_HEARTBEAT_MAX_AGE_S
            stuck = probe(state_dir, env)
        finally:
            os.kill(parent, signal.SIGCONT)
        assert stuck.returncode == 1
        assert "event loop" in stuck.stderr
        wait_for(lambda: probe(state_dir, env).returncode == 0, 30, "the heartbeat to resume")

        marker_path(faults_dir, "release", "stylize", held_id).touch()
        done = client.wait(job["id"], interval_s=0.2, timeout_s=180)
        assert done["status"] == "partially_succeeded", done

        after = scrape(worker_url)
        for stage in ("detect", "parse", "stylize", "finalize"):
            assert total(after, "face2paint_stage_seconds_count", stage=stage) >= 1, stage
        assert total(after, "face2paint_stage_seconds_count", stage="stylize",
                     model="classical-cartoon") >= 1
        assert total(after, "face2paint_stage_seconds_sum", stage="stylize") > 0
        assert total(after, "face2paint_photos_succeeded_total") == 1
        assert total(after, "face2paint_photos_failed_total", stage="detect", reason="bad_input") == 1
        assert total(after, "face2paint_photos_failed_total") == 1
        assert total(after, "face2paint_model_load_seconds_count", model="classical-cartoon") >= 1
        assert total(after, "face2paint_stylize_batch_size_count") >= 1
        assert total(after, "face2paint_stage_in_progress") == 0
        # No CUDA here: the GPU memory gauge is absent rather than 0.
        assert not any(name == "face2paint_gpu_memory_bytes" for name, _ in after)
        api = scrape(f"{stack.api_url}/metrics")
        assert total(api, "face2paint_stage_items") == 0
        client.close()


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
