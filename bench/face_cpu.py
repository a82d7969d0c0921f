"""Per-face CPU work of the recipe (align, parse, refine: the parse stage), now against a git
revision, in one run. A benchmark, not a test:

    FACE2PAINT_MODEL_DIR=../shared/models python bench/face_cpu.py --baseline main [--out bench/results]

Each round runs the pipeline's `prepare` (detection done once, outside the timing) over the
photos in a child process per code version, alternating versions, so load hits both alike.
Reports, per version, the median over rounds of the mean per-face time of the `parse` and
`refine` timers (parse: the parsing model and, before, the region masks; refine: the flags, the
refinement and the paste mask) and writes bench/results/face_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces"
PHOTOS = ("sk_astronaut.png", "rf_couple.jpg", "if_friends_t1.jpg", "df_katy_makeup.jpg",
          "of_clapton_side.jpg", "dlib_family.jpg", "mpl_grace_hopper.jpg", "tk_lowlight_trio.jpg")


def child(rounds: int) -> None:
    """Run in the version's own interpreter: print one JSON line per round."""
    from face2paint.models.image_io import load_image
    from face2paint.models.pipeline import Face2Paint, Timer

    pipe = Face2Paint(detector="retinaface-mnet025", parser="bisenetv2-celebamaskhq-448-int8",
                      style="classical-cartoon")
    photos = []
    for name in PHOTOS:
        if (FACES / name).is_file():
            rgb = load_image(FACES / name).rgb
            photos.append((rgb, pipe.detect(rgb)))
    pipe.prepare(*photos[0])  # warm-up: loads the parser
    for _ in range(rounds):
        timer, n = Timer(), 0
        for rgb, faces in photos:
            n += len(pipe.prepare(rgb, faces, timer=timer))
        print(json.dumps({"faces": n, **{k: v for k, v in timer.timings.items()}}), flush=True)


def run_version(pythonpath: str, rounds: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(rounds)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="main", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two versions")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "face2paint"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        versions = {f"{args.baseline} (before)": tmp, "this tree (after)": str(ROOT)}
        samples: dict[str, list[dict]] = {k: [] for k in versions}
        for _ in range(args.rounds):
            for name, path in versions.items():
                samples[name] += run_version(path, 1)
    result = {}
    for name, rows in samples.items():
        per_face = lambda key: statistics.median(r.get(key, 0.0) / max(1, r["faces"]) for r in rows)  # noqa: E731
        result[name] = {"faces": rows[0]["faces"], "rounds": len(rows),
                        **{f"{k}_ms_per_face": round(1000 * per_face(k), 1) for k in ("align", "parse", "refine")}}
        result[name]["parse_refine_ms_per_face"] = round(result[name]["parse_ms_per_face"]
                                                         + result[name]["refine_ms_per_face"], 1)
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "face_cpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
