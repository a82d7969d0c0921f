"""Every generator on every CPU engine, side by side in one run: ONNX Runtime CPU, OpenVINO fp32,
OpenVINO bf16 (and a static-shape bf16 variant), plus LiteRT and torch where they apply; at one
size (512²), with N threads, after warm-up. A benchmark, not a test:

    FACE2PAINT_MODEL_DIR=../shared/models python bench/runtimes.py [--out bench/results]

Engines are timed in interleaved rounds (one call of each per round, the median over rounds),
so machine load hits them alike: compare the ratios, which are what the targets are about.
Quality: PSNR of each engine's output against fp32 (OpenVINO fp32; ONNX Runtime where there is
no OpenVINO) on real photo crops from ../shared/faces, the lowest over the crops. Writes
bench/results/runtimes.json and the table between the runtimes markers of docs/BENCHMARKS.md.
Target per generator: at least 2.5x ONNX Runtime CPU, PSNR >= 40 dB against fp32.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_block import arguments, publish  # noqa: E402 - after the path

FACES = ROOT.parent / "shared" / "faces"
# Real photos with a face that fills a 512² crop: (file, (x, y, side) of the crop, or None: all).
CROPS = (("sk_astronaut.png", (70, 0, 300)), ("fp_celebahq_116.png", None),
         ("df_sundar_glasses.jpg", (250, 150, 760)))
TARGET_SPEEDUP = 2.5
TARGET_PSNR = 40.0
HEADING = "Runtimes per generator (CPU)"
START, END = "<!-- runtimes:start -->", "<!-- runtimes:end -->"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else round(float(10 * np.log10(255.0 ** 2 / mse)), 1)


def crops(size: int) -> list[np.ndarray]:
    import cv2

    from face2paint.models.image_io import load_image

    out = []
    for name, box in CROPS:
        path = FACES / name
        if not path.is_file():
            continue
        img = load_image(path).rgb
        if box:
            x, y, s = box
            img = img[y:y + s, x:x + s]
        out.append(np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)))
    if not out:
        sys.exit(f"no photos in {FACES}: the PSNR check needs real crops")
    return out


def machine() -> dict:
    from face2paint.models.sessions import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    versions = {}
    for mod in ("onnxruntime", "openvino", "torch", "ai_edge_litert"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # absent or without __version__
            versions[mod] = None
    return {"cpu": name, "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "bf16_flags": sorted(f for f in flags if "bf16" in f or "amx" in f),
            "avx512": "avx512f" in flags, "python": platform.python_version(), **versions}


def engines_for(spec, resolved, threads: int):
    """(name, callable) per engine for one generator, built from the project's own wrappers."""
    from face2paint.models import loaders
    from face2paint.models.generators.tflite import OnnxGenerator
    from face2paint.models.sessions import RuntimeOptions, open_session

    kw = loaders._generator_kwargs(spec)
    out = []
    if spec.runtime == "onnxruntime":
        path = resolved.path
        for name, engine, precision in (("ort", "onnxruntime", "fp32"), ("ov_fp32", "openvino", "fp32"),
                                        ("ov_bf16", "openvino", "bf16")):
            s = open_session("onnxruntime", path, RuntimeOptions(threads=threads, engine=engine,
                                                                 precision=precision), model_id=spec.id)
            out.append((name, OnnxGenerator(s, spec.id, **kw), s.runtime_used))
    elif spec.runtime == "tflite":
        from face2paint.models.generators.tflite import TFLiteGenerator

        s = open_session("tflite", resolved.path, RuntimeOptions(threads=threads), model_id=spec.id)
        out.append(("litert", TFLiteGenerator(s, spec.id, **kw), s.runtime_used))
    return out


def v2_engines(resolved_tflite, threads: int, cache_dir: Path):
    """AnimeGANv2 (bryandlee layout, Hayao weights converted from the TFLite graph): torch fp32,
    its ONNX export on ONNX Runtime and OpenVINO, and the original int8 graph on LiteRT."""
    import torch

    from face2paint.models.generators.animegan import AnimeGANStylizer, Generator, cached_onnx
    from face2paint.models.generators.tflite import OnnxGenerator
    from face2paint.models.sessions import RuntimeOptions, open_session
    from face2paint.tools.convert_hayao import UPSAMPLE, convert

    weights = cache_dir / "animeganv2_hayao_converted.pt"
    gen = Generator(upsample=UPSAMPLE)
    gen.load_state_dict(convert(resolved_tflite.path))
    gen.eval()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), weights)
    onnx = cached_onnx(gen, weights, cache_dir)
    out = []
    for name, engine, precision in (("ort", "onnxruntime", "fp32"), ("ov_fp32", "openvino", "fp32"),
                                    ("ov_bf16", "openvino", "bf16")):
        s = open_session("onnxruntime", onnx, RuntimeOptions(threads=threads, engine=engine,
                                                             precision=precision), model_id="animeganv2")
        out.append((name, OnnxGenerator(s, "animeganv2", pad_multiple=4), s.runtime_used))
    ts = open_session("torch", gen, RuntimeOptions(threads=threads, precision="fp32"))
    out.append(("torch", AnimeGANStylizer(ts, "animeganv2"), ts.runtime_used))
    return out


def bench_model(label: str, engines, images, rounds: int, warmup: int) -> dict:
    for _ in range(warmup):
        for _, fn, _ in engines:
            fn(images[0])
    times: dict[str, list[float]] = {name: [] for name, _, _ in engines}
    for _ in range(rounds):
        for name, fn, _ in engines:
            t0 = time.perf_counter()
            fn(images[0])
            times[name].append(time.perf_counter() - t0)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    outs = {name: [fn(im) for im in images] for name, fn, _ in engines}
    ref_name = "ov_fp32" if "ov_fp32" in outs else ("ort" if "ort" in outs else next(iter(outs)))
    quality = {name: min(psnr(a, b) for a, b in zip(o, outs[ref_name])) for name, o in outs.items()}
    base = med.get("ort")
    ratio = {k: round(base / v, 2) for k, v in med.items()} if base else {}
    best = max((k for k in med if k.startswith("ov_")), key=lambda k: ratio.get(k, 0), default=None)
    row = {"model": label, "seconds": med, "ratio_to_ort": ratio, "psnr_vs_fp32": quality,
           "psnr_reference": ref_name, "runtime_used": {n: r for n, _, r in engines}, "best": best}
    if best:
        row["target_met"] = bool(ratio[best] >= TARGET_SPEEDUP and quality[best] >= TARGET_PSNR)
    print(json.dumps(row), flush=True)
    return row


def bench_detect_parse(threads: int, rounds: int, warmup: int) -> list[dict]:
    """RetinaFace (ONNX) on ONNX Runtime and OpenVINO, BiSeNet (int8 TFLite) on LiteRT and on
    OpenVINO's TFLite reader, on a real photo, interleaved like the generators; the agreement of
    their outputs (detections: same count and boxes within 2 px; labels: share of equal pixels)."""
    import cv2

    from face2paint.models.detect import RetinaFaceDetector
    from face2paint.models.image_io import load_image
    from face2paint.models.parse import BiSeNetParser
    from face2paint.models.registry import Registry
    from face2paint.models.sessions import LiteRTSession, RuntimeOptions, open_session

    reg = Registry()
    rows = []
    photo = load_image(FACES / "if_friends_t1.jpg").rgb  # 1280 x 886, 6 faces
    det_spec = reg.resolve("retinaface-mnet025")
    dets = {}
    for name, engine in (("ort", "onnxruntime"), ("ov_fp32", "openvino")):
        s = open_session("onnxruntime", det_spec.path, RuntimeOptions(threads=threads, engine=engine,
                                                                      precision="fp32"))
        dets[name] = RetinaFaceDetector(s, "retinaface-mnet025")
    engines = [(k, (lambda d=d: d.detect(photo)), d.session.runtime_used) for k, d in dets.items()]
    row = _timed("detect: retinaface-mnet025 (1280x886 photo)", engines, rounds, warmup)
    boxes = {k: np.array([f.box for f in d.detect(photo)]) for k, d in dets.items()}
    same = boxes["ort"].shape == boxes["ov_fp32"].shape and (
        boxes["ort"].size == 0 or float(np.abs(boxes["ort"] - boxes["ov_fp32"]).max()) <= 2.0)
    row["agreement"] = f"{len(boxes['ort'])} faces on both, boxes within 2 px: {same}"
    rows.append(row)

    parse_spec = reg.resolve("bisenetv2-celebamaskhq-448-int8")
    crop = np.ascontiguousarray(cv2.resize(photo[:448, :448], (448, 448)))
    lite = BiSeNetParser(LiteRTSession(parse_spec.path, RuntimeOptions(threads=threads)))
    x = ((crop.astype(np.float32) - 127.5) / 127.5)[None]
    engines = [("litert", lambda: lite.parse(crop, np.array([[150, 200], [300, 200], [225, 280],
                                                                   [170, 350], [280, 350]], np.float32)),
                "LiteRT CPU int8")]
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(parse_spec.path)), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                       "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        engines.append(("ov_fp32", lambda: req.infer({0: x}), "OpenVINO CPU (reads the .tflite)"))
    except Exception as exc:  # OpenVINO absent or its TFLite reader refuses the graph
        print(f"parse on OpenVINO: {exc}", flush=True)
    row = _timed("parse: bisenetv2-celebamaskhq-448-int8 (448² input)", engines, rounds, warmup,
                 base="litert")
    if len(engines) > 1:
        lite._interp.set_tensor(lite._in_index, x)
        lite._interp.invoke()
        a = np.asarray(lite._interp.get_tensor(lite._out_index)).reshape(448, 448)
        b = np.asarray(req.infer({0: x})[0]).reshape(448, 448)
        row["agreement"] = f"{float((a == b).mean()) * 100:.1f}% of labels equal"
    rows.append(row)
    return rows


def _timed(label, engines, rounds, warmup, base="ort") -> dict:
    for _ in range(warmup):
        for _, fn, _ in engines:
            fn()
    times = {name: [] for name, _, _ in engines}
    for _ in range(rounds):
        for name, fn, _ in engines:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    row = {"model": label, "seconds": med, "ratio_to_base": {k: round(med[base] / v, 2) for k, v in med.items()},
           "runtime_used": {n: r for n, _, r in engines}}
    print(json.dumps(row), flush=True)
    return row


def table(meta: dict, rows: list[dict], size: int, threads: int) -> str:
    def cell(r, k):
        if k not in r["seconds"]:
            return "–"
        ratio = f" ({r['ratio_to_ort'][k]:.2f}×)" if r["ratio_to_ort"] and k != "ort" else ""
        return f"{r['seconds'][k]:.3f} s{ratio}"

    lines = [
        f"Measured {meta['date']} by `bench/runtimes.py`: {meta['cpu']}, {meta['affinity']} CPUs "
        f"(bf16 flags: {', '.join(meta['bf16_flags']) or 'none'}), onnxruntime {meta['onnxruntime']}, "
        f"OpenVINO {meta['openvino']}, torch {meta['torch']}, ai-edge-litert {meta['ai_edge_litert']}. "
        f"{size}² input, {threads} threads, median of {meta['rounds']} interleaved rounds after "
        f"{meta['warmup']} warm-up calls, through the project's wrappers (pre- and post-processing "
        f"included). PSNR: the lowest over {meta['crops']} real photo crops, against "
        "OpenVINO fp32.",
        "",
        "| generator | ONNX Runtime CPU | OpenVINO fp32 | OpenVINO bf16 | LiteRT | torch fp32 | "
        "PSNR bf16 vs fp32 | target (≥2.5×, ≥40 dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = r.get("target_met")
        mark = "–" if met is None else ("**met**" if met else "not met")
        q = r["psnr_vs_fp32"].get("ov_bf16")
        lines.append(f"| {r['model']} | {cell(r, 'ort')} | {cell(r, 'ov_fp32')} | {cell(r, 'ov_bf16')} | "
                     f"{cell(r, 'litert')} | {cell(r, 'torch')} | "
                     f"{'–' if q is None else f'{q:.1f} dB'} | {mark} |")
    extra = meta.get("detect_parse") or []
    if extra:
        lines += ["", "| detection / parsing | engines (seconds, ratio to the first) | outputs |", "|---|---|---|"]
        for r in extra:
            cells = ", ".join(f"{r['runtime_used'][k]} {v:.3f} s ({r['ratio_to_base'][k]:.2f}×)"
                              for k, v in r["seconds"].items())
            lines.append(f"| {r['model']} | {cells} | {r.get('agreement', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default="", help="comma-separated ids (default: every generator present)")
    ap.add_argument("--only-detect-parse", action="store_true")
    args = ap.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        md = table(report["meta"], report["rows"], report["meta"]["size"], report["meta"]["threads"])
        publish(md, args, START, END, HEADING)
        return

    from face2paint.models.registry import MODELS, ModelUnavailable, Registry

    reg = Registry()
    images = crops(args.size)
    wanted = {m for m in args.models.split(",") if m}
    rows = []
    detect_parse = bench_detect_parse(args.threads, args.rounds + 4, args.warmup)
    for spec in [] if args.only_detect_parse else MODELS:
        if spec.stage != "stylize" or spec.runtime not in ("onnxruntime", "tflite"):
            continue
        if wanted and spec.id not in wanted:
            continue
        try:
            resolved = reg.find(spec)
        except ModelUnavailable as exc:
            print(f"skip {spec.id}: {exc}", flush=True)
            continue
        if resolved is None or resolved.path is None:
            continue
        engines = engines_for(spec, resolved, args.threads)
        if spec.id == "animeganv2-hayao-int8":
            rows.append(bench_model("animeganv2 (Hayao, bryandlee layout: torch / ONNX export)",
                                    v2_engines(resolved, args.threads, reg.cache_dir / "onnx"),
                                    images, args.rounds, args.warmup))
        rows.append(bench_model(spec.id, engines, images, args.rounds, args.warmup))

    meta = {**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": args.size,
            "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup,
            "crops": len(images), "detect_parse": detect_parse}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "runtimes_detect_parse.json" if args.only_detect_parse else "runtimes.json"
    (args.out / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = table(meta, rows, args.size, args.threads)
    publish(md, args, START, END, HEADING)


if __name__ == "__main__":
    main()
