"""Does face2paint keep faces intact? Stylize each photo with and without the face recipe and
measure how far the faces moved.

For every face the detector finds confidently on the input (the faces the recipe processes),
the five landmarks are detected again on each stylized output and compared with the input's:

- normalised landmark error (NLE): mean over the 5 points of |p_out - p_in| / inter-ocular
  distance of the input face;
- distorted: NLE > 0.1, or the face is no longer found on the output ("lost");
- structure: SSIM of luminance on the input face box (Gaussian windows, OpenCV/numpy only);
- identity, skin tone and a second landmark model, when the eval extra is installed
  (face_metrics.py): dlib face descriptor distance between input and output (the same person
  below 0.6), CIEDE2000 of the mean skin colour under the parser's skin mask, and the NLE of
  dlib's 68-point predictor mapped to the same five points (dlib_landmarks.py): independent of
  RetinaFace, which the recipe's features-in-place step itself uses.

Input and outputs are compared at the same (capped) resolution, so coordinates agree. The
result is a plain dict (also written as report.json), a Markdown summary and a contact sheet.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..models.align import eye_distance
from ..models.detect import box_iou
from ..models.face import FaceHelper
from ..models.image_io import ImageError, load_image, resize_to, save_image
from ..models.types import Face, Params

# The face model on the whole photo (how AnimeGANv3's own scripts run it), align + stylize +
# paste without parsing, refinement or keep (AnimeGANv3_Portrait_Inference's way), the recipe.
MODES = ("without", "plain", "with")
MODE_NAMES = {"without": "face model on the whole photo", "plain": "align + stylize + paste",
              "with": "face2paint recipe"}
# Face sizes by the input's eye distance in the (capped) eval image, in pixels.
SIZES = (("small (eyes < 32 px)", 0, 32), ("medium (32-80 px)", 32, 80), ("large (>= 80 px)", 80, 1e9))
DISTORTION_THRESHOLD = 0.1  # NLE above this (in inter-ocular distances) counts as distorted
MATCH_IOU = 0.3
# Eye-midpoint fallback when boxes do not overlap enough: closer than half an inter-ocular
# distance. Neighbouring faces in a crowd sit 2+ distances apart, so this cannot pick them.
MATCH_EYE_SHIFT = 0.5
NO_CASE = "(not in manifest)"

ProgressFn = Callable[[int, int, str], None]


# --- metrics ----------------------------------------------------------------------------------


def inter_ocular(landmarks: np.ndarray) -> float:
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    return float(np.linalg.norm(lm[1] - lm[0]))


def normalized_landmark_error(ref: np.ndarray, out: np.ndarray, iod: float | None = None) -> float:
    """Mean distance of the five points, in units of the reference's inter-ocular distance."""
    ref = np.asarray(ref, np.float64).reshape(5, 2)
    out = np.asarray(out, np.float64).reshape(5, 2)
    iod = inter_ocular(ref) if iod is None else float(iod)
    if iod <= 0:
        raise ValueError("reference inter-ocular distance must be positive")
    return float(np.linalg.norm(out - ref, axis=1).mean() / iod)


def is_distorted(nle: float | None, threshold: float = DISTORTION_THRESHOLD) -> bool:
    """None means the face was lost, which counts as distorted."""
    return nle is None or nle > threshold


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma as float64 on the 0..255 scale (grayscale input passes through)."""
    a = np.asarray(rgb, np.float64)
    if a.ndim == 2:
        return a
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM of two single-channel images (Wang et al. 2004: 11x11 Gaussian window,
    sigma 1.5, K1 = 0.01, K2 = 0.03)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {a.shape} and {b.shape}")
    k = 2 * int(math.ceil(3.5 * sigma)) + 1  # 11 for sigma 1.5, as in the paper

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM of two images (RGB images are compared on luminance)."""
    return float(ssim_map(luminance(a), luminance(b), sigma).mean())


def face_ssim(y_in: np.ndarray, y_out: np.ndarray, box, sigma: float = 1.5) -> float | None:
    """SSIM of two luminance images averaged over a face box. The windows are computed on the
    box plus a margin of one window radius, so the box's edge pixels see real neighbours
    rather than reflected ones."""
    h, w = y_in.shape[:2]
    x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    r = int(math.ceil(3.5 * sigma))
    px1, py1, px2, py2 = max(0, x1 - r), max(0, y1 - r), min(w, x2 + r), min(h, y2 + r)
    m = ssim_map(y_in[py1:py2, px1:px2], y_out[py1:py2, px1:px2], sigma)
    return float(m[y1 - py1:y2 - py1, x1 - px1:x2 - px1].mean())


def match_faces(
    refs: list[Face], found: list[Face], iou_min: float = MATCH_IOU,
    max_eye_shift: float = MATCH_EYE_SHIFT,
) -> list[tuple[int | None, str | None]]:
    """One-to-one matching of reference faces to detections on an output.

    Box IoU >= iou_min first (best overlaps first), then, for what is left, the nearest eye
    midpoint within max_eye_shift inter-ocular distances. Returns, per reference, (index into
    found, "iou" | "eyes") or (None, None) when the face is lost.
    """
    pairs = []
    for i, r in enumerate(refs):
        iod = max(inter_ocular(r.landmarks), 1e-6)
        mid_r = r.landmarks[:2].mean(axis=0)
        for j, d in enumerate(found):
            iou = box_iou(r.box, d.box)
            if iou >= iou_min:
                pairs.append((0, -iou, i, j, "iou"))
            else:
                shift = float(np.linalg.norm(d.landmarks[:2].mean(axis=0) - mid_r)) / iod
                if shift <= max_eye_shift:
                    pairs.append((1, shift, i, j, "eyes"))
    out: list[tuple[int | None, str | None]] = [(None, None)] * len(refs)
    used_r, used_f = set(), set()
    for _, _, i, j, how in sorted(pairs, key=lambda p: p[:2]):
        if i not in used_r and j not in used_f:
            out[i] = (j, how)
            used_r.add(i)
            used_f.add(j)
    return out


# --- manifest ---------------------------------------------------------------------------------


def load_manifest(path: str | Path) -> dict[str, dict]:
    """manifest.csv (columns file, n_faces_estimated, cases, ...) keyed by file name."""
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f) if row.get("file")}


def cases_of(name: str, manifest: dict[str, dict] | None) -> list[str]:
    row = (manifest or {}).get(name)
    if row is None:
        return [NO_CASE]
    cases = row.get("cases") or []
    if isinstance(cases, str):
        cases = cases.split(";")
    return [c.strip() for c in cases if c.strip()] or [NO_CASE]


# --- the evaluation ---------------------------------------------------------------------------


def evaluate(
    images: list[Path],
    pipe,
    manifest: dict[str, dict] | None,
    out_dir: str | Path,
    on_progress: ProgressFn | None = None,
    *,
    max_side: int = 1920,
    max_pixels: int = 60_000_000,
    warmup: bool = True,
    row_height: int = 256,
    params: Params | None = None,
    face_metrics=None,
) -> dict:
    """Run `pipe` on every image with and without face2paint; write report.json, summary.md,
    contact_sheet.jpg and faces_sheet.jpg to out_dir; return the report.

    `warmup` runs the generator once at the face size before the first image, and the
    background stylization once, untimed, before timing each image: TFLite interpreters are
    built per input size, and otherwise whichever mode runs first would pay for building them,
    which is not what face2paint costs.
    """
    # The style preset's own defaults (sketch: skin_tone off), as a job of that style gets them.
    params = params or (pipe.params_for() if hasattr(pipe, "params_for") else Params())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    rows: list[tuple[list[np.ndarray], list[str]]] = []  # contact-sheet panels and labels
    tiles: list[tuple[list[np.ndarray], str, list[bool]]] = []  # faces-sheet crops
    t_start = time.perf_counter()
    if warmup:
        # The face generator's first call (interpreter for the face size, lazy init) would
        # otherwise land on the first image with a face.
        size = params.face_size
        pipe.face_stylizer(np.zeros((size, size, 3), np.uint8))
    for k, path in enumerate(images):
        path = Path(path)
        if on_progress:
            on_progress(k, len(images), path.name)
        rec: dict = {"file": path.name, "cases": cases_of(path.name, manifest)}
        try:
            image = load_image(path, max_side=max_side, max_pixels=max_pixels)
        except ImageError as e:
            rec["error"] = str(e)
            records.append(rec)
            continue
        try:
            rec.update(_evaluate_image(image, pipe, params, warmup, rows, tiles, row_height, path.name,
                                       face_metrics))
        except Exception as e:  # one broken image must not lose the whole report
            rec["error"] = f"{type(e).__name__}: {e}"
        records.append(rec)
    if on_progress:
        on_progress(len(images), len(images), "")

    report = {
        "style": getattr(pipe, "style", None),
        "modes": dict(MODE_NAMES),
        "models": dict(pipe.models),
        "settings": {
            "reference_faces": "input detections with score >= "
            f"{params.alignment_threshold} and eye distance >= "
            f"{params.min_face_eye_distance} px (the faces face2paint processes)",
            "distortion_threshold_nle": DISTORTION_THRESHOLD,
            "match": f"box IoU >= {MATCH_IOU}, else eye midpoint within {MATCH_EYE_SHIFT} "
            "inter-ocular distances; any detection the detector returns on the output",
            "ssim": "luminance, Gaussian window sigma 1.5 (11x11), on the input face box",
            "identity": "dlib ResNet descriptor distance, same person below 0.6"
            if face_metrics else "not measured (needs the eval extra)",
            "skin_tone": "CIEDE2000 of the mean skin CIELAB under the parser's skin mask"
            if face_metrics else "not measured (needs the eval extra)",
            "dlib_landmarks": "dlib 68-point shape predictor in the input face box, mapped to "
            "eye centres, nose tip and mouth corners; distorted when NLE > "
            f"{DISTORTION_THRESHOLD}" if face_metrics else "not measured (needs the eval extra)",
            "max_side": max_side,
            "warmup": warmup,
        },
        "total_s": round(time.perf_counter() - t_start, 2),
        "summary": summarize(records),
        "images": records,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "summary.md").write_text(summary_markdown(report))
    save_image(contact_sheet(rows, row_height), out_dir / "contact_sheet.jpg", quality=90)
    if tiles:
        save_image(faces_sheet(tiles), out_dir / "faces_sheet.jpg", quality=90)
    return report


def _evaluate_image(image, pipe, params, warmup, rows, tiles, row_height, name,
                    face_metrics=None) -> dict:
    rgb = image.rgb
    h, w = rgb.shape[:2]
    detections = pipe.detect(rgb)
    refs = FaceHelper(params).select(detections)
    y_in = luminance(rgb)
    rec: dict = {
        "size": list(image.original_size),
        "eval_size": [w, h],
        "n_detected": len(detections),
        "n_reference": len(refs),
        "time_s": {},
        "faces": [
            {"box": [round(v, 1) for v in f.box], "score": round(f.score, 4),
             "iod": round(eye_distance(f), 2),
             "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in f.landmarks]}
            for f in refs
        ],
    }
    if warmup:
        pipe.stylize_background(rgb, params)
    outputs = {}
    for mode in MODES:
        t0 = time.perf_counter()
        if mode == "without":
            output = whole_photo(pipe, rgb, params)
        elif mode == "plain":
            output = plain_paste(pipe, rgb, params)
        else:
            result = pipe.run(image, params)
            output = result.output
            rec["processed"] = len(result.aligned)
            rec["stage_s"] = {k: round(v, 4) for k, v in result.timings.items()}
        rec["time_s"][mode] = round(time.perf_counter() - t0, 4)
        # Back to the capped size the input was detected at, so coordinates are comparable.
        out = resize_to(output, (w, h))
        outputs[mode] = out
        found = pipe.detect(out)
        y_out = luminance(out)
        for i, (j, how) in enumerate(match_faces(refs, found)):
            face, entry = refs[i], rec["faces"][i]
            nle = None if j is None else normalized_landmark_error(face.landmarks, found[j].landmarks)
            s = face_ssim(y_in, y_out, face.box)
            entry[mode] = {
                "found": j is not None,
                "match": how,
                "nle": None if nle is None else round(nle, 4),
                "distorted": is_distorted(nle),
                "ssim": None if s is None else round(s, 4),
                **({"out_score": round(found[j].score, 4)} if j is not None else {}),
                **(face_metrics.measure(rgb, out, face) if face_metrics else {}),
            }
    _collect_panels(rec, rgb, outputs, refs, rows, tiles, row_height, name)
    return rec


def whole_photo(pipe, rgb: np.ndarray, params: Params) -> np.ndarray:
    """The baseline of AnimeGANv3's own scripts: the face model on the whole photo (its long
    side capped like the background's), at the photo's size."""
    h, w = rgb.shape[:2]
    cap = params.background_max_side
    if max(h, w) > cap:
        s = cap / max(h, w)
        small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        return resize_to(pipe.face_stylizer(small), (w, h))
    return pipe.face_stylizer(rgb)


def plain_mask(size: int) -> np.ndarray:
    """A feathered ellipse around the aligned face (no parsing): the plain paste's mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.5) / 0.42) ** 2
    return np.clip((1.0 - r) / 0.35, 0.0, 1.0).astype(np.float32)


def plain_paste(pipe, rgb: np.ndarray, params: Params) -> np.ndarray:
    """The baseline of TachibanaYoshino/AnimeGANv3_Portrait_Inference: align each face, stylize
    the crop as it is, paste it back through a feathered ellipse onto the stylized background;
    no parsing, no refinement, no keep, no seam matching."""
    from ..models.face import paste_face

    helper = FaceHelper(params, pipe.face_framing())
    out = pipe.stylize_background(rgb, params)
    mask = plain_mask(params.face_size)
    min_size = pipe._face_option("face_work_size")
    for face in helper.select(pipe.detect(rgb)):
        a = helper.align(rgb, face)
        size = helper.work_size(a.inverse, min_size)
        crop = a.crop if size == a.crop.shape[0] else cv2.resize(a.crop, (size, size), interpolation=cv2.INTER_AREA)
        styl = pipe.face_stylizer(crop)
        if styl.shape[0] != a.crop.shape[0]:
            styl = cv2.resize(styl, a.crop.shape[:2][::-1], interpolation=cv2.INTER_CUBIC)
        out = paste_face(out, styl, a.inverse, mask)
    return out


# --- aggregation ------------------------------------------------------------------------------


def _mean(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _median(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _group_stats(recs: list[dict]) -> dict:
    ok = [r for r in recs if "error" not in r]
    faces = [f for r in ok for f in r["faces"]]
    stats: dict = {"images": len(ok), "faces": len(faces)}
    for mode in MODES:
        ms = [f[mode] for f in faces if mode in f]
        distorted = sum(m["distorted"] for m in ms)
        stats[mode] = {
            "distorted": distorted,
            "lost": sum(not m["found"] for m in ms),
            "distortion_rate": distorted / len(ms) if ms else None,
            "mean_nle": _mean(m["nle"] for m in ms),
            "median_nle": _median(m["nle"] for m in ms),
            "mean_ssim": _mean(m["ssim"] for m in ms),
            "time_per_image_s": _mean(r["time_s"].get(mode) for r in ok),
            **_person_stats(ms),
        }
    p = stats["plain"]["distortion_rate"]
    a, b = stats["without"]["distortion_rate"], stats["with"]["distortion_rate"]
    stats["plain_ratio"] = b / p if p else None
    # with / without: below 1 means face2paint distorts fewer faces. Undefined when the
    # baseline distorts none.
    stats["distortion_ratio"] = b / a if a else None
    # The same two ratios by dlib's landmarks (the independent check).
    p, a, b = (stats[m]["dlib_distortion_rate"] for m in ("plain", "without", "with"))
    stats["dlib_plain_ratio"] = b / p if p and b is not None else None
    stats["dlib_distortion_ratio"] = b / a if a and b is not None else None
    ta, tb = stats["without"]["time_per_image_s"], stats["with"]["time_per_image_s"]
    stats["overhead_pct"] = (tb / ta - 1) * 100 if ta and tb is not None else None
    return _rounded(stats)


def _person_stats(ms: list[dict]) -> dict:
    """Identity and skin tone over the faces that were measured (eval extra installed)."""
    ids = [m["identity"] for m in ms if m.get("identity") is not None]
    des = [m["skin_de"] for m in ms if m.get("skin_de") is not None]
    dl = [m for m in ms if "dlib_distorted" in m]
    dl_distorted = sum(m["dlib_distorted"] for m in dl)
    return {
        "dlib_distorted": dl_distorted if dl else None,
        "dlib_distortion_rate": dl_distorted / len(dl) if dl else None,
        "dlib_mean_nle": _mean(m.get("dlib_nle") for m in dl),
        "mean_identity": _mean(ids),
        "same_person_rate": (sum(m["same_person"] for m in ms if "same_person" in m) / len(ids)
                             if ids else None),
        "median_skin_de": _median(des),
        "max_skin_de": max(des) if des else None,
    }


def _rounded(d):
    if isinstance(d, dict):
        return {k: _rounded(v) for k, v in d.items()}
    if isinstance(d, float):
        return round(d, 4)
    return d


def _size_records(records: list[dict], lo: float, hi: float) -> list[dict]:
    """The records with only their faces of eye distance in [lo, hi)."""
    out = []
    for r in records:
        if "error" in r:
            continue
        faces = [f for f in r["faces"] if lo <= f["iod"] < hi]
        if faces:
            out.append({**r, "faces": faces})
    return out


def summarize(records: list[dict]) -> dict:
    cases = sorted({c for r in records for c in r["cases"]})
    return {
        "overall": _group_stats(records),
        "per_case": {c: _group_stats([r for r in records if c in r["cases"]]) for c in cases},
        "per_size": {name: _group_stats(_size_records(records, lo, hi)) for name, lo, hi in SIZES},
        "failed": [{"file": r["file"], "error": r["error"]} for r in records if "error" in r],
    }


# --- Markdown ---------------------------------------------------------------------------------


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _secs(x) -> str:
    return "–" if x is None else f"{x:.2f} s"


def _rate(m: dict, n: int) -> str:
    return f"{_pct(m['distortion_rate'])} ({m['distorted']}/{n})"


def _dlib_rate(m: dict, n: int) -> str:
    if m.get("dlib_distorted") is None:
        return "–"
    return f"{_pct(m['dlib_distortion_rate'])} ({m['dlib_distorted']}/{n})"


def _row(name: str, c: dict, metric) -> str:
    return f"| {name} | {c['faces']} | " + " | ".join(metric(c[m]) for m in MODES) + " |"


def _table(title: str, groups: dict) -> list[str]:
    """One table per metric family: distortion, identity, skin tone, by group."""
    head = "| " + title + " | faces | " + " | ".join(MODE_NAMES[m] for m in MODES) + " |"
    sep = "|---|---|" + "---|" * len(MODES)
    lines = []
    for label, metric in (
        ("distortion rate (lost)", lambda m: f"{_pct(m['distortion_rate'])} ({m['lost']})"),
        ("distortion rate by dlib's 68-point landmarks", lambda m: _pct(m["dlib_distortion_rate"])),
        ("same person (dlib distance < 0.6)", lambda m: _pct(m["same_person_rate"])),
        ("skin CIEDE2000 median / max", lambda m: f"{_num(m['median_skin_de'], 1)} / {_num(m['max_skin_de'], 1)}"),
    ):
        lines += [f"{label}:", "", head, sep]
        lines += [_row(name, c, metric) for name, c in groups.items() if c["faces"]]
        lines.append("")
    return lines


def summary_markdown(report: dict) -> str:
    s = report["summary"]
    o = s["overall"]
    models = ", ".join(f"{k}: {v}" for k, v in report["models"].items())
    lines = [
        "# face2paint evaluation", "",
        f"Style: {report.get('style') or '(models by id)'}. Models: {models}. {o['images']} images, "
        f"{o['faces']} reference faces.", "",
        f"Reference faces: {report['settings']['reference_faces']}. A face is distorted when "
        f"its normalised landmark error (NLE: mean landmark displacement / inter-ocular "
        f"distance) exceeds {DISTORTION_THRESHOLD} or it is no longer found on the output. "
        "SSIM: luminance on the input face box. Modes: "
        + "; ".join(f"{m}: {MODE_NAMES[m]}" for m in MODES) + ".", "",
        "## Overall", "",
        "| metric | " + " | ".join(MODE_NAMES[m] for m in MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]

    def cells(fn) -> str:
        return " | ".join(fn(o[m]) for m in MODES)

    n = o["faces"]
    lines += [
        f"| distortion rate | {cells(lambda m: _rate(m, n))} |",
        f"| lost faces | {cells(lambda m: str(m['lost']))} |",
        f"| mean NLE (found faces) | {cells(lambda m: _num(m['mean_nle']))} |",
        f"| median NLE (found faces) | {cells(lambda m: _num(m['median_nle']))} |",
        f"| distortion rate, dlib 68-point landmarks | {cells(lambda m: _dlib_rate(m, n))} |",
        f"| mean NLE, dlib landmarks | {cells(lambda m: _num(m['dlib_mean_nle']))} |",
        f"| face SSIM | {cells(lambda m: _num(m['mean_ssim']))} |",
        f"| same person (descriptor distance < 0.6) | {cells(lambda m: _pct(m['same_person_rate']))} |",
        f"| mean descriptor distance | {cells(lambda m: _num(m['mean_identity']))} |",
        f"| skin tone CIEDE2000, median / max | {cells(lambda m: _num(m['median_skin_de'], 1) + ' / ' + _num(m['max_skin_de'], 1))} |",
        f"| time per image | {cells(lambda m: _secs(m['time_per_image_s']))} |",
        "",
        f"Ratio of distortion rates, recipe / face model on the whole photo: "
        f"{_num(o['distortion_ratio'], 2)}; recipe / plain paste: {_num(o['plain_ratio'], 2)}. "
        f"By dlib's landmarks: {_num(o['dlib_distortion_ratio'], 2)} and "
        f"{_num(o['dlib_plain_ratio'], 2)}.", "",
        "## Per case", "",
    ]
    lines += _table("case", s["per_case"])
    lines += ["## Per face size", ""]
    lines += _table("face size", s["per_size"])
    lines += [
        "## Per image", "",
        "| image | faces | " + " | ".join(f"distorted, {m}" for m in MODES)
        + " | " + " | ".join(f"time, {m}" for m in MODES) + " |",
        "|---|---|" + "---|" * (2 * len(MODES)),
    ]
    for r in report["images"]:
        if "error" in r:
            lines.append(f"| {r['file']} | error: {r['error']} |" + " |" * (2 * len(MODES)))
            continue
        n = r["n_reference"]
        dist = [f"{sum(fc[m]['distorted'] for fc in r['faces'])}/{n}" for m in MODES]
        times = [_secs(r["time_s"].get(m)) for m in MODES]
        lines.append(f"| {r['file']} | {n} | " + " | ".join(dist + times) + " |")
    if s["failed"]:
        lines += ["", f"{len(s['failed'])} image(s) failed; see report.json."]
    return "\n".join(lines) + "\n"


# --- pictures ---------------------------------------------------------------------------------

GAP = 4
_BG = (40, 40, 40)
_OK, _BAD = (60, 220, 60), (235, 50, 50)


def _to_height(img: np.ndarray, height: int) -> np.ndarray:
    s = height / img.shape[0]
    w = max(1, round(img.shape[1] * s))
    return cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _label(img: np.ndarray, text: str, scale: float = 0.45) -> None:
    """White text on a dark band at the top left, drawn in place."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (min(img.shape[1], tw + 6), th + base + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def _collect_panels(rec, rgb, outputs, refs, rows, tiles, row_height, name) -> None:
    """Keep only small copies: one contact-sheet row per image, one tile per face."""
    n = len(refs)
    panels, labels = [], [f"{name} ({n} face{'s' * (n != 1)})"]
    for img in (rgb, *(outputs[m] for m in MODES)):
        panels.append(np.ascontiguousarray(_to_height(img, row_height)))
    for mode, p in zip(MODES, panels[1:]):
        s = row_height / rgb.shape[0]
        bad = 0
        for fc in rec["faces"]:
            m = fc[mode]
            bad += m["distorted"]
            x1, y1, x2, y2 = (round(v * s) for v in fc["box"])
            # Box of each reference face: green kept, red distorted or lost.
            cv2.rectangle(p, (x1, y1), (x2, y2), _BAD if m["distorted"] else _OK, 1)
        labels.append(f"{mode}: {bad}/{n} distorted" if n else f"{mode} face2paint")
    rows.append((panels, labels))
    for i, (face, fc) in enumerate(zip(refs, rec["faces"])):
        # A square crop of 1.6 face boxes around the face, from each of the three images.
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        half = 0.8 * max(face.width, face.height)
        m = np.float32([[64 / half, 0, 64 - cx * 64 / half], [0, 64 / half, 64 - cy * 64 / half]])
        crops = [cv2.warpAffine(img, m, (128, 128), flags=cv2.INTER_AREA, borderValue=_BG)
                 for img in (rgb, *(outputs[mode] for mode in MODES))]
        nles = [fc[mode]["nle"] for mode in MODES]
        text = f"{Path(name).stem[:14]}#{i} " + " ".join(
            "lost" if v is None else f"{v:.2f}" for v in nles)
        tiles.append((crops, text, [fc[mode]["distorted"] for mode in MODES]))


def contact_sheet(rows: list[tuple[list[np.ndarray], list[str]]], row_height: int = 256) -> np.ndarray:
    """Rows of input | each mode, each row row_height tall, GAP pixels around everything.
    Height is len(rows) * row_height + (len(rows) + 1) * GAP."""
    if not rows:
        return np.full((row_height + 2 * GAP, row_height + 2 * GAP, 3), _BG, np.uint8)
    widths = [sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1) for panels, _ in rows]
    sheet = np.empty((len(rows) * row_height + (len(rows) + 1) * GAP, max(widths) + 2 * GAP, 3),
                     np.uint8)
    sheet[:] = _BG
    y = GAP
    for panels, labels in rows:
        x = GAP
        for p, text in zip(panels, labels):
            p = p.copy()
            _label(p, text)
            sheet[y:y + row_height, x:x + p.shape[1]] = p
            x += p.shape[1] + GAP
        y += row_height + GAP
    return sheet


def faces_sheet(tiles: list[tuple[list[np.ndarray], str, list[bool]]], per_row: int = 4,
                max_tiles: int = 240) -> np.ndarray:
    """Close-ups of each reference face (input | each mode, 128 px), with a red frame on
    the crops where the face counts as distorted, and the NLEs in the label."""
    tiles = tiles[:max_tiles]
    k = len(tiles[0][0]) if tiles else 1 + len(MODES)
    tw, th = k * 128 + (k - 1) * 2, 128 + 18
    n_rows = math.ceil(len(tiles) / per_row)
    sheet = np.empty((n_rows * (th + GAP) + GAP, per_row * (tw + GAP) + GAP, 3), np.uint8)
    sheet[:] = _BG
    for k, (crops, text, distorted) in enumerate(tiles):
        y0 = GAP + (k // per_row) * (th + GAP)
        x0 = GAP + (k % per_row) * (tw + GAP)
        cv2.putText(sheet, text, (x0 + 2, y0 + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (255, 255, 255), 1, cv2.LINE_AA)
        for c, crop in enumerate(crops):
            crop = crop.copy()
            if c > 0:
                cv2.rectangle(crop, (0, 0), (127, 127), _BAD if distorted[c - 1] else _OK, 2)
            sheet[y0 + 18:y0 + 18 + 128, x0 + c * 130:x0 + c * 130 + 128] = crop
    return sheet
