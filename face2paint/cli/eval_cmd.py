"""`face2paint eval`: how well faces survive stylization, with and without the face recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .inputs import collect_images, console
from .inputs import fail as _fail


def evaluate(
    image_dir: Annotated[Path, typer.Argument(help="Directory of photos (or one image file).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for report.json, summary.md and the contact sheets.")],
    manifest: Annotated[Optional[Path], typer.Option(help="CSV with columns file and cases (semicolon-separated); default IMAGE_DIR/manifest.csv when present.")] = None,
    style: Annotated[Optional[str], typer.Option(help="Style preset (see `face2paint styles list`); default: anime where its weights are present.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N images, in name order.")] = None,
) -> None:
    """Stylize each photo three ways (the style's face model on the whole photo; align +
    stylize + paste without parsing; the face2paint recipe), re-detect the faces' landmarks on
    each output and report distortion, identity, skin tone and time, per case and face size."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..tools import evaluate as ev
    from ..models.pipeline import Face2Paint
    from ..models.registry import ModelUnavailable
    from ..settings import get_settings

    if not image_dir.exists():
        _fail(f"{image_dir} does not exist")
    files = collect_images([image_dir])
    if not files:
        _fail(f"no images found in {image_dir}")
    files = files[:limit] if limit else files
    if manifest is None and image_dir.is_dir() and (image_dir / "manifest.csv").is_file():
        manifest = image_dir / "manifest.csv"
    cases = None
    if manifest is not None:
        try:
            cases = ev.load_manifest(manifest)
        except (OSError, KeyError, ValueError) as e:
            _fail(f"cannot read manifest {manifest}: {e}")
    from .pipeline_cmd import checked_styles

    checked_styles(style, None, None)
    try:
        pipe = Face2Paint(style=style)
        chosen = pipe.load()
    except (ModelUnavailable, ValueError) as e:
        _fail(str(e))
    for stage, how in chosen.items():
        console.print(f"[bold]{stage}[/bold]: {how}")
    console.print(f"manifest: {manifest or 'none (no per-case breakdown)'}")
    from ..tools.face_metrics import load_face_metrics

    face_metrics, why_not = load_face_metrics(pipe.parser)
    if face_metrics is None:
        console.print(f"[yellow]identity and skin tone not measured[/yellow]: {why_not}")

    settings = get_settings()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("evaluating", total=len(files))

        def on_progress(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, description=f"evaluating {name}".rstrip())

        report = ev.evaluate(files, pipe, cases, out, on_progress, max_side=settings.max_side,
                             max_pixels=settings.max_image_pixels, face_metrics=face_metrics)

    o = report["summary"]["overall"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x, nd=3):
        return "n/a" if x is None else f"{x:.{nd}f}"

    console.print(f"style {report.get('style')}: {o['images']} images, {o['faces']} reference faces, "
                  f"{report['total_s']:.0f} s")
    for mode in ev.MODES:
        m = o[mode]
        line = (f"{ev.MODE_NAMES[mode]}: distortion {pct(m['distortion_rate'])} ({m['distorted']}, "
                f"lost {m['lost']}), NLE {num(m['mean_nle'])}, SSIM {num(m['mean_ssim'])}")
        if face_metrics is not None:
            line += (f", dlib landmarks: distortion {pct(m['dlib_distortion_rate'])} NLE "
                     f"{num(m['dlib_mean_nle'])}")
            line += (f", same person {pct(m['same_person_rate'])}, skin CIEDE2000 median "
                     f"{num(m['median_skin_de'], 1)} max {num(m['max_skin_de'], 1)}")
        console.print(line + f", {num(m['time_per_image_s'], 2)} s per image", soft_wrap=True)
    console.print(f"distortion ratio, recipe / whole photo: {num(o['distortion_ratio'], 2)}; "
                  f"recipe / plain paste: {num(o['plain_ratio'], 2)}"
                  + (f"; by dlib landmarks {num(o['dlib_distortion_ratio'], 2)} and "
                     f"{num(o['dlib_plain_ratio'], 2)}" if face_metrics is not None else ""))
    console.print(f"report: {out / 'report.json'}, {out / 'summary.md'}, {out / 'contact_sheet.jpg'}")
    failed = report["summary"]["failed"]
    for item in failed:
        console.print(f"[red]{item['file']}[/red]: {item['error']}")
    if failed:
        raise typer.Exit(1)
