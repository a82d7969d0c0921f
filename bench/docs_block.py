"""Write a benchmark's table into docs between its own markers, so reruns replace it."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options of every benchmark that writes a docs table: --out (its JSON report),
    --docs, --no-docs and --from-json (only rebuild the table from a report)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--from-json", type=Path, help="only rebuild the docs table from a report")
    return ap


def publish(md: str, args: argparse.Namespace, start: str, end: str, heading: str) -> None:
    """Print the table and, unless --no-docs, write it into --docs (see write_block)."""
    print(md)
    if not args.no_docs:
        write_block(args.docs, start, end, md, heading)
