"""Turning command-line paths into a list of images and unique output names."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"}


def collect_images(paths: list[Path]) -> list[Path]:
    """Files as given (whatever their suffix: the loader judges them), directories expanded to
    the image files directly inside them, in name order; duplicates dropped."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(files: list[Path], suffix: str = ".png") -> dict[Path, str]:
    """stem.png per input; inputs sharing a stem (a.jpg, a.png) keep their suffix in the name."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    names, used = {}, set()
    for f in files:
        base = f.stem if stems[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        name, n = base + suffix, 1
        while name in used:
            n += 1
            name = f"{base}_{n}{suffix}"
        used.add(name)
        names[f] = name
    return names


def fail(message: str, code: int = 2):
    """Print an error on stderr and exit with `code` (2: bad usage or setup, 1: work failed)."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def collect_or_fail(paths: list[Path]) -> list[Path]:
    """collect_images, exiting with a clear message when a path is missing or holds no image."""
    try:
        files = collect_images(paths)
    except FileNotFoundError as e:
        fail(str(e))
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
    return files
