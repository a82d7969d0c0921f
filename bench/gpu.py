"""GPU throughput: images per second at 512² for the default preset and for each generator, at
batch 1, 8 and 32, in fp16 (and bf16 where the engine has it), with the GPU memory each took.
A benchmark, not a test; it needs a CUDA GPU (an H100/H200: about 990/790 dense bf16 TFLOP/s
is the physical anchor to compare with) and refuses in one line without one:

    FACE2PAINT_MODEL_DIR=../shared/models python bench/gpu.py [--out bench/results] [--budget-s 270]

Engines: the ONNX generators on ONNX Runtime's CUDA provider in the file's own float type
(AnimeGANv3 fp16 files in fp16; fp32 files in fp32/TF32, and in fp16 through TensorRT with
--tensorrt, whose engine builds take minutes); AnimeGANv2 on torch CUDA in fp16 and bf16. ONNX
files exported with batch 1 are given a symbolic batch dimension in a temporary copy; a graph
that still refuses batches is reported so and timed as a loop. The default preset runs the
whole recipe per photo (detect, parse, refine, stylize faces and background, paste) on a 512²
photo: images per second at batch 1 (the pipeline stylizes one photo at a time today).

The whole run is bounded by --budget-s (default 270 s, under the 5 minutes the issue allows):
each measurement stops after --per-case-s seconds or 20 calls, whichever comes first, and
remaining cases are skipped, and listed, once the budget is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES = (1, 8, 32)
SIZE = 512
# --dry-run-cpu: every code path on the CPU at small sizes, to check the script without a GPU.
DEVICE = "cuda"


def gpu_problem() -> str | None:
    """Why there is no usable CUDA GPU here, in one line; None when there is one."""
    reasons = []
    try:
        import torch

        if torch.cuda.is_available():
            return None
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    except ImportError:
        reasons.append("torch is not installed")
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return None
        reasons.append("onnxruntime has no CUDAExecutionProvider")
    except ImportError:
        reasons.append("onnxruntime is not installed")
    return "; ".join(reasons)


def gpu_memory_mib() -> float | None:
    """Memory in use on GPU 0 by every process (nvidia-smi), or None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown GPU"


class Budget:
    def __init__(self, total_s: float, per_case_s: float):
        self.end = time.monotonic() + total_s
        self.per_case_s = per_case_s
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def measure(self, label: str, fn, images: int, sync=lambda: None) -> float | None:
        """Images per second of fn (which processes `images` images), after one warm-up call."""
        if self.left() < 2 * self.per_case_s:
            self.skipped.append(label)
            return None
        fn()
        sync()
        calls, t0 = 0, time.perf_counter()
        while calls < 20 and time.perf_counter() - t0 < self.per_case_s:
            fn()
            calls += 1
        sync()
        return round(calls * images / (time.perf_counter() - t0), 2)


def with_dynamic_batch(path: Path, out_dir: Path) -> Path:
    """A copy of an ONNX file whose first input and output dimension is symbolic."""
    import onnx

    model = onnx.load(str(path))
    for value in list(model.graph.input[:1]) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    dest = out_dir / f"{path.stem}.batch.onnx"
    onnx.save(model, str(dest))
    return dest


def bench_onnx(spec, path: Path, budget: Budget, tmp: Path, tensorrt: bool) -> list[dict]:
    import numpy as np
    import onnxruntime as ort

    rows = []
    batched = with_dynamic_batch(path, tmp)
    engines = [("CUDA", [("CUDAExecutionProvider", {"device_id": 0})])]
    if DEVICE == "cpu":
        engines = [("CPU (dry run)", ["CPUExecutionProvider"])]
    if tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
        engines.append(("TensorRT fp16", [("TensorrtExecutionProvider", {
            "device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tmp / "trt")}), ("CUDAExecutionProvider", {"device_id": 0})]))
    for engine, providers in engines:
        before = gpu_memory_mib()
        so = ort.SessionOptions()
        so.log_severity_level = 3  # a refused batch is reported in its row, not logged
        session = ort.InferenceSession(str(batched), sess_options=so, providers=providers)
        inp = session.get_inputs()[0]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        nchw = inp.shape[1] == 3
        precision = "fp16" if dtype == np.float16 or engine.startswith("TensorRT") else "fp32"
        for b in BATCHES:
            shape = (b, 3, SIZE, SIZE) if nchw else (b, SIZE, SIZE, 3)
            x = np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)
            note = ""
            try:
                session.run(None, {inp.name: x})
                fn = lambda x=x: session.run(None, {inp.name: x})  # noqa: E731
            except Exception as exc:  # a graph with a baked batch of 1: loop over the batch
                note = f"batch refused ({str(exc).splitlines()[0][:80]}): looped"
                one = x[:1]
                fn = lambda one=one, b=b: [session.run(None, {inp.name: one}) for _ in range(b)]  # noqa: E731
            ips = budget.measure(f"{spec.id} {engine} b{b}", fn, b)
            rows.append({"model": spec.id, "engine": f"ONNX Runtime {engine}", "precision": precision,
                         "batch": b, "images_per_s": ips, "gpu_memory_mib": _delta(before), "note": note})
            print(json.dumps(rows[-1]), flush=True)
        del session
    return rows


def _delta(before: float | None) -> float | None:
    after = gpu_memory_mib()
    return None if before is None or after is None else round(after - before, 1)


def bench_torch_v2(budget: Budget, weights: Path | None) -> list[dict]:
    """The AnimeGANv2 generator on torch CUDA (its own weights if present, else the network
    with random weights: the cost is the same)."""
    import torch

    from face2paint.models.generators.animegan import Generator, load_generator

    gen = load_generator(weights) if weights else Generator().eval()
    rows = []
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and (DEVICE == "cpu" or not torch.cuda.is_bf16_supported()):
            continue
        if DEVICE == "cpu":
            dtype = torch.float32
        model = gen.to(DEVICE, dtype).eval()
        cuda = DEVICE == "cuda"
        for b in BATCHES:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            x = torch.rand(b, 3, SIZE, SIZE, device=DEVICE, dtype=dtype) * 2 - 1

            def fn(x=x):
                with torch.inference_mode():
                    model(x)

            ips = budget.measure(f"animeganv2 torch {precision} b{b}", fn, b,
                                 torch.cuda.synchronize if cuda else (lambda: None))
            rows.append({"model": "animeganv2 (bryandlee layout)", "engine": f"torch {DEVICE}",
                         "precision": precision, "batch": b, "images_per_s": ips,
                         "gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
                         "note": "" if weights else "random weights"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_default_preset(budget: Budget) -> list[dict]:
    import cv2

    from face2paint.models.cache import ModelCache
    from face2paint.models.image_io import load_image
    from face2paint.models.pipeline import Face2Paint
    from face2paint.models.presets import NAMED
    from face2paint.models.sessions import RuntimeOptions

    photo = ROOT.parent / "shared" / "faces" / "sk_astronaut.png"
    rgb = load_image(photo).rgb if photo.is_file() else None
    if rgb is None:
        return []
    rgb = cv2.resize(rgb, (SIZE, SIZE))
    # Detection and parsing stay on the CPU (the parser is LiteRT, CPU only), as in a deployment
    # where CPU workers serve detect/parse and the GPU worker serves stylize.
    cpu = ModelCache()
    gpu = ModelCache(cpu.registry, RuntimeOptions(device=DEVICE, precision="fp16" if DEVICE == "cuda" else "auto"))
    for preset in NAMED:
        try:
            pipe = Face2Paint(cpu, style=gpu.get(preset.face_model),
                              background_style=gpu.get(preset.background_model))
            pipe.run(rgb)
            break
        except Exception as exc:  # weights absent: the next preset
            print(f"preset {preset.id}: {exc}", flush=True)
    else:
        return []
    before = gpu_memory_mib()
    ips = budget.measure(f"preset {preset.id}", lambda: pipe.run(rgb), 1)
    row = {"model": f"preset {preset.id} (whole recipe)", "engine": f"face2paint pipeline, stylize on {DEVICE}",
           "precision": "fp16 (auto)", "batch": 1, "images_per_s": ips, "gpu_memory_mib": _delta(before),
           "note": "the pipeline takes one photo at a time"}
    print(json.dumps(row), flush=True)
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--budget-s", type=float, default=270.0)
    ap.add_argument("--per-case-s", type=float, default=3.0)
    ap.add_argument("--tensorrt", action="store_true", help="also TensorRT fp16 (slow engine builds)")
    ap.add_argument("--dry-run-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    global DEVICE, BATCHES, SIZE
    problem = gpu_problem()
    if args.dry_run_cpu:
        DEVICE, BATCHES, SIZE, problem = "cpu", (1, 2), 64, None
    if problem:
        print(f"bench/gpu.py needs a CUDA GPU and found none ({problem}); run it on a GPU machine "
              "with torch CUDA or onnxruntime-gpu installed.")
        return 2

    from face2paint.models.registry import MODELS, ModelUnavailable, Registry

    budget = Budget(args.budget_s, args.per_case_s)
    reg = Registry()
    rows: list[dict] = []
    try:
        rows += bench_default_preset(budget)
    except Exception as exc:  # keep the generator figures even if the pipeline cannot run
        print(f"default preset: {exc}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in MODELS:
            if spec.stage != "stylize" or spec.runtime != "onnxruntime":
                continue
            try:
                found = reg.find(spec)
            except ModelUnavailable:
                continue
            if found is None or found.path is None:
                continue
            try:
                rows += bench_onnx(spec, found.path, budget, Path(tmp), args.tensorrt)
            except Exception as exc:  # a provider failure on one model: the others still run
                print(f"{spec.id}: {exc}", flush=True)
    try:
        import torch  # noqa: F401

        if torch.cuda.is_available() or DEVICE == "cpu":
            v2 = next((reg.find(s) for s in MODELS if s.runtime == "torch" and reg.find(s)), None)
            rows += bench_torch_v2(budget, v2.path if v2 else None)
    except ImportError:
        pass
    meta = {"gpu": gpu_name(), "size": SIZE, "batches": BATCHES, "date": time.strftime("%Y-%m-%d %H:%M UTC"),
            "skipped_for_time": budget.skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out / 'gpu.json'} ({len(rows)} rows; skipped for time: {len(budget.skipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
