"""`face2paint models list|verify|pull|convert-hayao`."""

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
    table = Table("id", "stage", "runtime", "file", "where", "licence")
    for row in reg.status():
        table.add_row(row["id"], row["stage"], row["runtime"], row["file"], row["where"], row["licence"])
    console.print(table)
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
            if spec.stage in ("detect", "parse", "stylize"):
                loaders.build(found)
            what = "sha256 ok, loads" if spec.sha256 else "loads"
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
