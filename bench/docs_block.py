"""Write a benchmark's table into docs between its own markers, so reruns replace it."""

from __future__ import annotations

from pathlib import Path


def write_block(docs: Path, start: str, end: str, md: str, heading: str) -> None:
    """Replace the text between `start` and `end` in `docs` with `md`; where the markers are
    not there yet, append them under a new `heading`."""
    text = docs.read_text()
    block = f"{start}\n{md}{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    docs.write_text(text)
