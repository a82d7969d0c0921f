"""`face2paint run` end to end in embedded mode: SQLite, local storage, embedded Redis, the API
on a free port and a real worker process, all started and stopped by the command itself."""

import os
import subprocess
import sys

from PIL import Image

from tests.helpers import model_dir, photos_with_a_broken_one


def test_face2paint_run_embedded(tmp_path):
    src = photos_with_a_broken_one(tmp_path / "photos", b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "results"
    # The weights where `face2paint models pull` puts them (FACE2PAINT_HOME/models), with no
    # FACE2PAINT_MODEL_DIR: the job runs in a temporary home, but its worker uses this cache.
    (tmp_path / ".face2paint").mkdir()
    (tmp_path / ".face2paint" / "models").symlink_to(model_dir(), target_is_directory=True)
    env = {**os.environ, "HOME": str(tmp_path), "FACE2PAINT_HOME": str(tmp_path / ".face2paint")}
    for k in ("FACE2PAINT_DATABASE_URL", "FACE2PAINT_BROKER_URL", "FACE2PAINT_STORAGE_URL",
              "FACE2PAINT_MODEL_DIR", "FACE2PAINT_MODEL_CACHE_DIR"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "face2paint.cli.main", "run", str(src), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # one input is broken: reported, and the exit says so
    assert "style: anime" in log and "stylize: animeganv3-jp-face (best available)" in log
    # ... and the worker ran it (it found the same cache).
    assert "models used: " in log and "stylize: animeganv3-jp-face" in log.split("models used: ")[1]
    assert "broken.jpg" in log and "failed" in log
    assert Image.open(out / "astronaut.png").size == (512, 512)
    assert Image.open(out / "hopper.png").size == (128, 128)
    assert not (out / "broken.png").exists()
    # Everything it started is stopped: no worker or API process is left behind.
    left = subprocess.run(["pgrep", "-f", f"face2paint-run-.*|{tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
