"""Per-stage latency of every model and runtime at 256², 512² and 1024², with batch sizes where
batching applies. A benchmark, not a test: `python bench/stages.py [--out bench/results]`.

Needs FACE2PAINT_MODEL_DIR (real weights). The torch generator runs the Hayao weights converted
from the TFLite graph (same network as the bryandlee checkpoints, so the same cost).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from face2paint.models.presets import get_preset


def timeit(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def photo(size: int) -> np.ndarray:
    from skimage import data

    import cv2

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only-presets", action="store_true",
                    help="time only the default preset's generators and keep the other rows of stages.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import torch

    from face2paint.models.cache import ModelCache
    from face2paint.models.generators.animegan import AnimeGANStylizer, Generator
    from face2paint.models.sessions import open_session
    from face2paint.tools.convert_hayao import UPSAMPLE, convert

    cache = ModelCache()
    reg = cache.registry
    rows: list[dict] = []

    def add(stage, model, runtime, size, batch, seconds):
        rows.append({"stage": stage, "model": model, "runtime": runtime, "size": size,
                     "batch": batch, "seconds": round(seconds, 4),
                     "per_image_s": round(seconds / batch, 4)})
        print(f"{stage:9} {model:34} {runtime:12} {size:5} x{batch}: {seconds:.3f}s", flush=True)

    if args.only_presets:
        old = args.out / "stages.json"
        keep = json.loads(old.read_text())["rows"] if old.exists() else []
        rows.extend(r for r in keep if r["model"] not in PRESET_GENERATORS)
        preset_generators(cache, sizes, args.repeat, add)
        write(args, rows)
        return
    # detect
    for model_id, runtime in (("retinaface-mnet025", "onnxruntime"), ("yunet-s-640", "opencv")):
        det = cache.get(model_id)
        for s in sizes:
            img = photo(s)
            add("detect", model_id, runtime, s, 1, timeit(lambda: det.detect(img), args.repeat))
        if hasattr(det, "detect_batch"):
            imgs = [photo(512)] * 4
            add("detect", model_id, runtime, 512, 4, timeit(lambda: det.detect_batch(imgs), args.repeat))
    # parse (the model's input is fixed at 448: crops are resized to it)
    parser = cache.get("bisenetv2-celebamaskhq-448-int8")
    crop = photo(512)
    lm = np.array([[196, 233], [316, 233], [256, 302], [207, 372], [307, 372]], np.float32)
    add("parse", "bisenetv2-celebamaskhq-448-int8", "tflite int8", 448, 1,
        timeit(lambda: parser.parse(crop, lm), args.repeat))
    # stylize: torch fp32 (batched), TFLite int8, white-box at its fixed 512, classical
    gen = Generator(upsample=UPSAMPLE)
    gen.load_state_dict(convert(reg.resolve("animeganv2-hayao-int8").path))
    torch_style = AnimeGANStylizer(open_session("torch", gen, cache.options),
                                   "animeganv2-hayao (torch, converted)")
    for s in sizes:
        for b in ((1, 2, 4) if s <= 512 else (1,)):
            imgs = [photo(s)] * b
            add("stylize", "animeganv2 generator", "torch fp32", s, b,
                timeit(lambda: torch_style.batch(imgs), args.repeat))
    for model_id, runtime, fixed in (("animeganv2-hayao-int8", "tflite int8", None),
                                     ("whitebox-cartoon-int8", "tflite int8", 512),
                                     ("whitebox-cartoon-dr", "tflite dr", 512),
                                     ("classical-cartoon", "opencv", None)):
        st = cache.get(model_id)
        for s in ([fixed] if fixed else sizes):
            img = photo(s)
            add("stylize", model_id, runtime, s, 1, timeit(lambda: st(img), args.repeat))
    preset_generators(cache, sizes, args.repeat, add)
    write(args, rows)


# The `anime` preset's generators (the default style when their weights are present).
PRESET_GENERATORS = get_preset("anime").models


def preset_generators(cache, sizes, repeat, add) -> None:
    for model_id in PRESET_GENERATORS:
        try:
            st = cache.get(model_id)
        except Exception as e:  # noqa: BLE001 - weights not present: the rows are left out
            print(f"skipping {model_id}: {e}")
            continue
        runtime = getattr(getattr(st, "session", None), "runtime_used", "?")
        for s in sizes:
            img = photo(s)
            add("stylize", model_id, runtime, s, 1, timeit(lambda: st(img), repeat))


def write(args, rows) -> None:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    (args.out / "stages.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| stage | model | runtime | size | batch | seconds | per image |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['model']} | {r['runtime']} | {r['size']}² | {r['batch']} | "
                     f"{r['seconds']:.3f} | {r['per_image_s']:.3f} |")
    (args.out / "stages.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'stages.json'} and stages.md")


if __name__ == "__main__":
    main()
