"""face2paint's own cost per named preset: the recipe against the same preset run without it
(face2paint=False: the whole photo through the preset's background stylizer), per photo of
../shared/faces. A benchmark, not a test:

    FACE2PAINT_MODEL_DIR=../shared/models python bench/overhead.py [--out bench/results] [--presets anime,cute]

Per photo, the recipe runs once with its stage timers; "without" is its background stylization
plus the final resize (exactly what face2paint=False runs: the same call on the same image),
and the overhead is (with - without) / without. On the first photo of each preset a real
face2paint=False run is timed as well, and the report gives how far it is from the timer's
figure (`check_off_vs_timer`). Reports per preset the overhead of the median photo, the mean
(total over all photos), single-face photos and the crowd photos (10 or more faces estimated in
the manifest) separately. Target (issue 10, item 4): at most +35% on the median photo.
Writes bench/results/overhead.json after every preset and the table between the overhead
markers of docs/BENCHMARKS.md at the end.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.docs_block import arguments, publish  # noqa: E402 - after the path

FACES = ROOT.parent / "shared" / "faces"
CROWD_MIN_FACES = 10
TARGET = 0.35
HEADING = "face2paint's cost per preset"
START, END = "<!-- overhead:start -->", "<!-- overhead:end -->"


def manifest() -> dict[str, int]:
    with open(FACES / "manifest.csv", newline="") as f:
        return {row["file"]: int(row["n_faces_estimated"] or 0) for row in csv.DictReader(f)}


def summarise(rows: list[dict]) -> dict:
    def total(sel):
        on, off = sum(r["with_s"] for r in sel), sum(r["without_s"] for r in sel)
        return round(on / off - 1, 3) if off else None

    crowd = [r for r in rows if r["faces_estimated"] >= CROWD_MIN_FACES]
    single = [r for r in rows if r["faces_processed"] == 1]
    rest = [r for r in rows if r["faces_estimated"] < CROWD_MIN_FACES]
    return {
        "photos": len(rows),
        "median_photo": round(statistics.median(r["overhead"] for r in rows), 3),
        "mean_total": total(rows),
        "mean_per_photo": round(statistics.fmean(r["overhead"] for r in rows), 3),
        "crowds": {"photos": len(crowd), "mean_total": total(crowd),
                   "median_photo": round(statistics.median(r["overhead"] for r in crowd), 3) if crowd else None},
        "without_crowds": {"photos": len(rest), "mean_total": total(rest),
                           "median_photo": round(statistics.median(r["overhead"] for r in rest), 3) if rest else None},
        "single_face": {"photos": len(single), "mean_total": total(single)},
        "target_met": bool(statistics.median(r["overhead"] for r in rows) <= TARGET),
    }


def bench_preset(preset, cache, photos, names) -> dict:
    from face2paint.models.image_io import load_image
    from face2paint.models.pipeline import Face2Paint
    from face2paint.models.sessions import runtime_used
    from face2paint.models.types import Params

    pipe = Face2Paint(cache, style=preset.face_model, background_style=preset.background_model)
    params = Params(**dict(preset.params))
    rows, check = [], None
    for k, name in enumerate(photos):
        image = load_image(FACES / name)
        if k == 0:  # warm-up (loads the models), then the check against a real plain run
            pipe.run(image, params)
            t0 = time.perf_counter()
            pipe.run(image, params, face2paint=False)
            real_off = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = pipe.run(image, params)
        with_s = time.perf_counter() - t0
        t = result.timings
        # face2paint=False runs the background stylization, then only the resize to the
        # original size (when the image was capped): time that resize on an image of that shape.
        t1 = time.perf_counter()
        pipe.finalize(image.rgb, pipe.pack([], params), [], image.original_size, params, face2paint=False)
        without_s = t.get("stylize_background", 0.0) + time.perf_counter() - t1
        if k == 0:
            check = round(real_off / without_s - 1, 3)
        rows.append({"photo": name, "faces_estimated": names.get(name, 0),
                     "faces_processed": len(result.aligned), "with_s": round(with_s, 3),
                     "without_s": round(without_s, 3), "overhead": round(with_s / without_s - 1, 3),
                     "timings": {k_: round(v, 3) for k_, v in t.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return {"preset": preset.id, "face_model": preset.face_model,
            "background_model": preset.background_model,
            "runtimes": {role: runtime_used(pipe.model(role)) for role in ("stylize", "stylize_background")},
            "check_off_vs_timer": check, **summarise(rows), "rows": rows}


def table(meta: dict, results: list[dict]) -> str:
    pct = lambda v: "–" if v is None else f"{v * 100:+.0f}%"  # noqa: E731
    lines = [
        f"Measured {meta['date']} by `bench/overhead.py` on branch `{meta['branch']}` "
        f"({meta['photos']} photos of ../shared/faces, {meta['cpus']} CPUs, the machine shared with "
        "other work; overhead = time with the recipe / the same preset without it - 1).",
        "",
        "| preset (face / background model) | median photo | mean (total) | crowds (≥10 faces) | "
        "other photos (total) | single-face photos | target ≤ +35% on the median photo |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['preset']} ({r['face_model']} / {r['background_model']}) | "
                     f"{pct(r['median_photo'])} | {pct(r['mean_total'])} | "
                     f"{pct(r['crowds']['mean_total'])} ({r['crowds']['photos']}) | "
                     f"{pct(r['without_crowds']['mean_total'])} | {pct(r['single_face']['mean_total'])} | "
                     f"{'**met**' if r['target_met'] else 'not met'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--presets", default="", help="comma-separated (default: every named preset present)")
    args = ap.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        md = table(report["meta"], report["presets"])
        skipped = report["meta"].get("skipped_no_weights")
        if skipped:
            md += f"\nNot measured (weights absent): {', '.join(skipped)}.\n"
        publish(md, args, START, END, HEADING)
        return

    import os
    import subprocess

    from face2paint.models.cache import ModelCache
    from face2paint.models.presets import NAMED, preset_status

    cache = ModelCache()
    names = manifest()
    photos = sorted(n for n in names if (FACES / n).is_file())
    wanted = [p for p in args.presets.split(",") if p]
    branch = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--abbrev-ref", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "branch": branch,
            "photos": len(photos), "cpus": len(os.sched_getaffinity(0))}
    results, skipped = [], []
    order = sorted(NAMED, key=lambda p: wanted.index(p.id) if p.id in wanted else len(wanted))
    for preset in order:
        if wanted and preset.id not in wanted:
            continue
        if not preset_status(preset, cache.registry).available:
            skipped.append(preset.id)
            continue
        results.append(bench_preset(preset, cache, photos, names))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.json").write_text(json.dumps(
            {"meta": {**meta, "skipped_no_weights": skipped}, "presets": results}, indent=2))
    md = table(meta, results)
    if skipped:
        md += f"\nNot measured (weights absent): {', '.join(skipped)}.\n"
    publish(md, args, START, END, HEADING)


if __name__ == "__main__":
    main()
