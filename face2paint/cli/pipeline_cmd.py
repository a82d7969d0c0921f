"""`face2paint stylize` and `face2paint detect`: the pipeline in-process, no services."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .inputs import collect_or_fail, console, output_names
from .inputs import fail as _fail


STYLE_HELP = "Style preset (see `face2paint styles list`); default: anime where its weights are present."
FACE_STYLE_HELP = "Preset (or stylize model id) whose face model paints the faces, overriding --style's."
BACKGROUND_STYLE_HELP = "Preset (or stylize model id) whose background model paints the rest, overriding --style's."


def checked_styles(style, face_style, background_style) -> None:
    """Refuse an unknown or unavailable style name with the available ones (exit 2)."""
    from ..models.presets import UnknownStyle, check_style
    from ..models.registry import ModelUnavailable, Registry

    reg = Registry()
    for what, name in (("style", style), ("face style", face_style), ("background style", background_style)):
        if name is not None:
            try:
                check_style(name, reg, what)
            except (UnknownStyle, ModelUnavailable) as e:
                console.print(f"[red]error:[/red] {e}", soft_wrap=True)  # the names stay whole
                raise typer.Exit(2) from None


def stylize(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or directories of images.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the results.")],
    style: Annotated[Optional[str], typer.Option(help=STYLE_HELP)] = None,
    face_style: Annotated[Optional[str], typer.Option(help=FACE_STYLE_HELP)] = None,
    background_style: Annotated[Optional[str], typer.Option(help=BACKGROUND_STYLE_HELP)] = None,
    face2paint: Annotated[bool, typer.Option("--face2paint/--no-face2paint", help="Run the face recipe, or stylize whole images only.")] = True,
    report: Annotated[Optional[Path], typer.Option(help="Write per-image faces, timings and model ids as JSON.")] = None,
    debug: Annotated[bool, typer.Option(help="Also write aligned crops, parsing masks and landmarks.")] = False,
    detector: Annotated[Optional[str], typer.Option(help="Detector model id.")] = None,
    parser: Annotated[Optional[str], typer.Option(help="Face parser model id.")] = None,
) -> None:
    """Stylize photos in this process: one output per input, same width and height."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..models.image_io import ImageError, load_image, save_image
    from ..models.pipeline import Face2Paint
    from ..models.registry import ModelUnavailable
    from ..settings import get_settings

    files = collect_or_fail(inputs)
    checked_styles(style, face_style, background_style)
    try:
        pipe = Face2Paint(style=style, face_style=face_style, background_style=background_style,
                          detector=detector, parser=parser)
        chosen = pipe.load()
        params = pipe.params_for()
    except (ModelUnavailable, ValueError) as e:
        _fail(str(e))
    console.print(f"[bold]style[/bold]: {pipe.style or 'models given by id'}")
    for stage, how in chosen.items():
        console.print(f"[bold]{stage}[/bold]: {how}")
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(files)
    settings = get_settings()
    rows, failures = [], 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("stylizing", total=len(files))
        for path in files:
            progress.update(task, description=f"stylizing {path.name}")
            row = {"input": str(path)}
            try:
                image = load_image(path, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
                result = pipe.run(image, params, face2paint=face2paint)
                target = out / names[path]
                save_image(result.output, target)
                row.update(output=str(target), width=image.original_size[0],
                           height=image.original_size[1], **result.report())
                if debug:
                    _write_debug(out / "debug" / target.stem, image.rgb, result, params)
            except ImageError as e:
                failures += 1
                row["error"] = str(e)
            rows.append(row)
            progress.advance(task)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"models": chosen, "images": rows}, indent=2))
    for row in rows:
        if "error" in row:
            console.print(f"[red]failed[/red] {row['input']}: {row['error']}", soft_wrap=True)
    console.print(f"{len(files) - failures} of {len(files)} images written to {out}", soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def _write_debug(folder: Path, rgb, result, params) -> None:
    from ..tools.debug import draw_faces, overlay_labels
    from ..models.image_io import save_image

    folder.mkdir(parents=True, exist_ok=True)
    save_image(draw_faces(rgb, result.faces, params.alignment_threshold), folder / "landmarks.png")
    for i, a in enumerate(result.aligned):
        save_image(a.crop, folder / f"face{i}_aligned.png")
        save_image(a.refined, folder / f"face{i}_refined.png")
        save_image(overlay_labels(a.crop, a.labels), folder / f"face{i}_parsing.png")
        save_image((a.paste_mask * 255).astype("uint8"), folder / f"face{i}_mask.png")
        if i < len(result.stylized_crops):
            save_image(result.stylized_crops[i], folder / f"face{i}_stylized.png")


def detect(
    images: Annotated[list[Path], typer.Argument(help="Image files or directories.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    detector: Annotated[Optional[str], typer.Option(help="Detector model id.")] = None,
) -> None:
    """Print the faces found in each image: box, five landmarks, score."""
    from rich.console import Console
    from rich.table import Table

    from ..models.cache import ModelCache
    from ..models.image_io import ImageError, load_image
    from ..models.registry import ModelUnavailable
    from ..settings import get_settings

    files = collect_or_fail(images)
    try:
        cache = ModelCache()
        choice = cache.choose("detect", detector)
        model, model_id = cache.get(choice.model_id), choice.model_id
    except (ModelUnavailable, ValueError) as e:
        _fail(str(e))
    console.print(f"[bold]detect[/bold]: {choice}")
    settings = get_settings()
    results, failures = [], 0
    for path in files:
        try:
            image = load_image(path, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
        except ImageError as e:
            failures += 1
            results.append({"image": str(path), "error": str(e)})
            continue
        # Coordinates are reported in the original image's pixels, not the capped copy's.
        scale = image.original_size[0] / image.rgb.shape[1]
        faces = []
        for f in model.detect(image.rgb):
            d = f.to_dict()
            d["box"] = [round(v * scale, 2) for v in d["box"]]
            d["landmarks"] = [[round(x * scale, 2), round(y * scale, 2)] for x, y in d["landmarks"]]
            faces.append(d)
        results.append({"image": str(path), "width": image.original_size[0],
                        "height": image.original_size[1], "model": model_id, "faces": faces})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        table = Table("image", "faces", "scores")
        for r in results:
            table.add_row(r["image"], r.get("error") or str(len(r["faces"])),
                          ", ".join(f"{f['score']:.2f}" for f in r.get("faces", [])))
        Console().print(table)
    if failures:
        raise typer.Exit(1)
