"""bench/gpu.py on a machine without a GPU: one clear line and a non-zero exit, no report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_refuses_cleanly_without_a_gpu(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    if gpu.gpu_problem() is None:
        pytest.skip("a CUDA GPU is present: the benchmark would run")
    env = {**os.environ, "FACE2PAINT_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("bench/gpu.py needs a CUDA GPU and found none (")
    assert "CUDAExecutionProvider" in lines[0] and "run it on a GPU machine" in lines[0]
    assert not (tmp_path / "gpu.json").exists()
