"""`face2paint eval`: the metric functions on synthetic data, and a smoke run of the command
over three real photos (needs FACE2PAINT_MODEL_DIR and the shared photos; skips otherwise)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from face2paint.tools import evaluate as ev
from face2paint.models.types import Face
from tests.helpers import faces_dir, model_dir

LANDMARKS = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], np.float32)


def _face(landmarks=LANDMARKS, box=(80, 70, 160, 165)) -> Face:
    return Face(box=box, landmarks=landmarks, score=0.99)


def _texture(seed=0, size=96) -> np.ndarray:
    """A natural-ish image: smoothed noise at a couple of scales, uint8 RGB."""
    rng = np.random.default_rng(seed)
    img = sum(cv2.resize(rng.random((s, s, 3)).astype(np.float32), (size, size))
              for s in (6, 24, size))
    return np.clip(img / 3 * 255, 0, 255).astype(np.uint8)


# --- metrics ----------------------------------------------------------------------------------


def test_identical_landmarks_are_not_distorted():
    nle = ev.normalized_landmark_error(LANDMARKS, LANDMARKS)
    assert nle == 0.0
    assert not ev.is_distorted(nle)


def test_shift_of_a_fifth_of_the_eye_distance_is_distorted():
    iod = ev.inter_ocular(LANDMARKS)
    assert iod == pytest.approx(40.0)
    moved = LANDMARKS + np.array([0.2 * iod, 0.0], np.float32)
    nle = ev.normalized_landmark_error(LANDMARKS, moved)
    assert nle == pytest.approx(0.2)
    assert ev.is_distorted(nle)
    # Half the threshold is kept; a lost face (None) is distorted.
    assert not ev.is_distorted(ev.normalized_landmark_error(LANDMARKS, LANDMARKS + 2.0))
    assert ev.is_distorted(None)


def test_ssim_is_one_for_identical_images_and_lower_when_blurred():
    img = _texture()
    assert ev.ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    blurred = cv2.GaussianBlur(img, (0, 0), 2.0)
    s_blur = ev.ssim(img, blurred)
    assert s_blur < 0.95
    assert ev.ssim(img, cv2.GaussianBlur(img, (0, 0), 4.0)) < s_blur
    y = ev.luminance(img)
    assert ev.face_ssim(y, y, (10, 10, 50, 60)) == pytest.approx(1.0, abs=1e-9)
    assert ev.face_ssim(y, ev.luminance(blurred), (-5, 10, 50, 200)) < 0.95  # box clipped


def test_match_faces_by_overlap_then_eye_midpoint():
    ref = _face()
    near = _face(LANDMARKS + 3, (83, 73, 163, 168))
    far = _face(LANDMARKS + 300, (380, 370, 460, 465))
    assert ev.match_faces([ref], [far, near]) == [(1, "iou")]
    assert ev.match_faces([ref], [far]) == [(None, None)]
    # A detection whose box barely overlaps (a very different box) but whose eyes are close.
    odd_box = _face(LANDMARKS + 5, (110, 95, 300, 400))
    assert ev.match_faces([ref], [odd_box]) == [(0, "eyes")]
    # One detection cannot serve two reference faces.
    assert ev.match_faces([ref, _face()], [near]).count((None, None)) == 1


def test_contact_sheet_height():
    rows = [([np.zeros((256, w, 3), np.uint8) for w in (100, 120, 120)], ["a", "b", "c"])] * 3
    sheet = ev.contact_sheet(rows, 256)
    assert sheet.shape[0] == 3 * 256 + 4 * ev.GAP
    assert sheet.shape[1] == 340 + 2 * ev.GAP + 2 * ev.GAP


# --- the command on real photos ---------------------------------------------------------------

SMOKE = ("sk_astronaut.png", "dlib_family.jpg", "sk_coffee.png")


def test_eval_command_smoke(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from face2paint.cli.main import app

    model_dir()
    src = faces_dir()
    images = tmp_path / "images"
    images.mkdir()
    for name in SMOKE:  # links, not copies: the photos never enter the repository
        (images / name).symlink_to(src / name)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["eval", str(images), "--manifest", str(src / "manifest.csv"), "--out", str(out),
              "--style", "cartoon"]
    )
    assert result.exit_code == 0, result.output

    report = json.loads((out / "report.json").read_text())
    by_file = {r["file"]: r for r in report["images"]}
    assert set(by_file) == set(SMOKE)
    for r in by_file.values():
        assert "error" not in r
        assert r["time_s"]["without"] > 0 and r["time_s"]["with"] > 0
        assert len(r["faces"]) == r["n_reference"]
        for face in r["faces"]:
            for mode in ev.MODES:
                m = face[mode]
                # Every reference face has an NLE, or is marked lost (and so distorted).
                assert (m["nle"] is not None and m["found"]) or (not m["found"] and m["distorted"])
                # Identity and skin tone of every face (the eval extra is part of dev).
                assert 0 <= m["identity"] < 2 and isinstance(m["same_person"], bool)
                assert m["skin_de"] is None or m["skin_de"] >= 0
    assert by_file["sk_astronaut.png"]["n_reference"] == 1
    assert by_file["sk_coffee.png"]["n_reference"] == 0
    overall = report["summary"]["overall"]
    # Three modes per face: the face model on the whole photo, the plain paste, the recipe.
    assert report["style"] == "cartoon" and set(report["modes"]) == set(ev.MODES) == {"without", "plain", "with"}
    assert all(m in r["time_s"] for r in by_file.values() for m in ev.MODES)
    sizes = report["summary"]["per_size"]
    assert list(sizes) == [name for name, _, _ in ev.SIZES]
    assert sum(g["faces"] for g in sizes.values()) == overall["faces"]
    assert {"distortion_ratio", "plain_ratio"} <= set(overall)
    assert overall["images"] == 3
    assert overall["faces"] == sum(r["n_reference"] for r in by_file.values())
    assert {"single_frontal", "glasses", "multiple_faces", "no_face"} <= set(report["summary"]["per_case"])

    assert overall["with"]["mean_identity"] is not None and overall["with"]["median_skin_de"] is not None
    astro = by_file["sk_astronaut.png"]["faces"][0]
    # The cartoon preset keeps the astronaut recognisable with the recipe.
    assert astro["with"]["same_person"]

    summary = (out / "summary.md").read_text()
    assert "## Per case" in summary and "skin tone CIEDE2000" in summary and "## Per face size" in summary
    assert "align + stylize + paste" in summary
    assert "| glasses |" in summary

    with Image.open(out / "contact_sheet.jpg") as sheet:
        assert sheet.height == 3 * 256 + 4 * ev.GAP
