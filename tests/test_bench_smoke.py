"""The benchmarks run and write complete reports (their timings are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import model_dir

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = {**os.environ, "FACE2PAINT_MODEL_DIR": str(model_dir()), "FACE2PAINT_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, *args, "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_stage_benchmark_report_is_complete(tmp_path):
    _run(["bench/stages.py", "--sizes", "256", "--repeat", "1"], tmp_path)
    report = json.loads((tmp_path / "stages.json").read_text())
    seen = {(r["stage"], r["runtime"]) for r in report["rows"]}
    assert {("detect", "onnxruntime"), ("detect", "opencv"), ("parse", "tflite int8"),
            ("stylize", "torch fp32"), ("stylize", "tflite int8"), ("stylize", "opencv")} <= seen
    assert any(r["batch"] > 1 for r in report["rows"] if r["runtime"] == "torch fp32")
    assert all(r["seconds"] > 0 for r in report["rows"])
    assert (tmp_path / "stages.md").read_text().count("\n") == len(report["rows"]) + 2


def test_end_to_end_benchmark_report_is_complete(tmp_path):
    _run(["bench/e2e.py", "--images", "2", "--sequential", "1", "--modes", "embedded"], tmp_path)
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["pipeline_compute_s"] > 0
    r = report["modes"]["embedded"]
    for key in ("images_per_s", "batch_latency_max_s", "single_latency_median_s", "overhead_ratio"):
        assert isinstance(r[key], float), key
    assert r["peak_rss_mb"]["worker0"] > 100


def test_capacity_check_report_is_complete(tmp_path):
    # A tiny load: the agreement within 20% needs a quiet machine and is not asserted here.
    _run(["bench/capacity.py", "check", "--images", "2", "--sequential", "1", "--workers", "1,2"], tmp_path)
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert set(report["calibration"]) == {"detect", "parse", "stylize", "finalize"}
    for stage in report["calibration"].values():
        assert stage["busy_s"] > 0 and stage["cpu_s"] > 0
    for n in ("1", "2"):
        row = report["workers"][n]
        assert row["measured_images_per_s"] > 0 and row["simulated_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["simulated_images_per_s"] / row["measured_images_per_s"],
                                             rel=0.05)  # of rounded figures
        assert isinstance(row["within_20pct"], bool)
