"""`face2paint models list|verify|pull|convert-hayao|convert-coreml`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_models() -> None:
    """Every registered model, where its file was found, and each stage's default."""
    from ..models.registry import PREFERENCE, Registry

    reg = Registry()
    table = Table("id", "stage", "runtime", "file", "where", "use", "licence")
    for row in reg.status():
        use = row["licence_class"]
        table.add_row(row["id"], row["stage"], row["runtime"], row["file"], row["where"],
                      f"[red]{use}[/red]" if row["commercial_use"] is False else use, row["licence"])
    console.print(table)
    console.print("[red]non-commercial[/red]: the weights' licence forbids commercial use; "
                  "check each licence before you deploy.")
    for stage in PREFERENCE:
        console.print(f"default {stage}: [bold]{reg.default(stage).id}[/bold]")


@app.command()
def verify() -> None:
    """Check every model file present: sha256 where recorded, and that each one loads."""
    from ..models import loaders
    from ..models.registry import MODELS, ModelUnavailable, Registry

    reg = Registry()
    bad = 0
    for spec in MODELS:
        try:
            found = reg.find(spec)
            if found is None:
                console.print(f"[dim]{spec.id}: not present[/dim]")
                continue
            what = ("sha256 ok" if spec.sha256 else "git blob ok" if spec.git_blob
                    else "converted from a verified source" if spec.converted_from else "")
            if spec.stage in ("detect", "parse", "stylize"):
                from ..models.sessions import runtime_used

                model = loaders.build(found)
                built = getattr(model, "model_id", spec.id)
                if built != spec.id:
                    # The stage's loader put another model in its place: say so, never "loads".
                    console.print(f"[yellow]{spec.id}[/yellow]: {what or 'present'}, but the "
                                  f"{spec.stage} stage cannot run {spec.runtime} models yet "
                                  f"(it built {built}) ({found.path or found.source})")
                    continue
                what = f"{what}, loads" if what else "loads"
                if runtime_used(model):
                    what = f"{what} on {runtime_used(model)}"
            console.print(f"[green]{spec.id}[/green]: {what} ({found.path or found.source})")
        except (ModelUnavailable, ValueError, RuntimeError, OSError) as e:
            bad += 1
            console.print(f"[red]{spec.id}[/red]: {e}")
    if bad:
        raise typer.Exit(1)


@app.command()
def pull(ids: Annotated[list[str], typer.Argument(help="Model ids to download.")]) -> None:
    """Download models from their source URLs into the cache, verified by sha256."""
    from ..models.registry import ModelUnavailable, Registry

    reg = Registry()
    failed = 0
    for model_id in ids:
        try:
            path = reg.pull(model_id)
            console.print(f"[green]{model_id}[/green] -> {path}")
        except ModelUnavailable as e:
            failed += 1
            console.print(f"[red]{model_id}[/red]: {e}")
    if failed:
        raise typer.Exit(1)


@app.command("convert-hayao")
def convert_hayao(
    tflite: Annotated[Path, typer.Argument(help="animeganv2_hayao_int8.tflite")],
    out: Annotated[Path, typer.Argument(help="Where to write the PyTorch state_dict (.pt).")],
) -> None:
    """Convert the AnimeGANv2 Hayao int8 TFLite graph to a bryandlee-format state_dict."""
    from ..tools.convert_hayao import main

    main(tflite, out)
    console.print(f"wrote {out}")


@app.command("convert-coreml")
def convert_coreml(
    mlmodel: Annotated[Path, typer.Argument(help="An AnimeGANv3 tiny .mlmodel (CoreML NeuralNetwork).")],
    out: Annotated[Path, typer.Argument(help="Where to write the ONNX model (.onnx).")],
) -> None:
    """Rewrite an AnimeGANv3 tiny CoreML model as ONNX: weights unchanged, fp32, NHWC RGB
    x / 127.5 - 1 in, tanh out, any H and W that are multiples of 16."""
    from ..models.coreml_to_onnx import CoreMLConversionError, convert
    from .inputs import fail

    if not mlmodel.is_file():
        fail(f"{mlmodel} does not exist; pass the path of a .mlmodel file")
    try:
        done = convert(mlmodel, out)
    except (CoreMLConversionError, OSError) as e:
        fail(f"cannot convert {mlmodel}: {e}")
    console.print(f"wrote {out}: {done.layers} CoreML layers, {done.parameters} parameters, "
                  f"sha256 {done.sha256} (source sha256 {done.source_sha256})")
