"""Turning command-line paths into a list of images and unique output names."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo",
                  ".heic", ".heif", ".avif", ".pgm", ".ppm", ".pbm", ".pnm"}


def collect_images(paths: list[Path], skipped: list[Path] | None = None) -> list[Path]:
    """Files as given (whatever their suffix: the loader judges them), directories expanded to
    the image files directly inside them, in name order; duplicates dropped. The other files of
    those directories are appended to `skipped`, when given, to be listed."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            children = sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
            out.extend(c for c in children if c.suffix.lower() in IMAGE_SUFFIXES)
            if skipped is not None:
                skipped.extend(c for c in children if c.suffix.lower() not in IMAGE_SUFFIXES)
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
    """collect_images, exiting with a clear message when a path is missing or holds no image,
    and naming the files of the directories that were skipped as not images."""
    skipped: list[Path] = []
    try:
        files = collect_images(paths, skipped)
    except FileNotFoundError as e:
        fail(str(e))
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        console.print(f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} that "
                      f"{'are' if len(skipped) != 1 else 'is'} not an image by name: {shown}{more} "
                      f"(name a file itself to try it anyway; images: {', '.join(sorted(IMAGE_SUFFIXES))})",
                      soft_wrap=True)
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
    return files
