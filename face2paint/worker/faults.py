"""Fault injection for the reliability tests: inert unless FACE2PAINT_FAULTS is set.

Production never sets these variables; tests/test_faults.py does, in the environment of the API
and worker processes it starts, to crash a process at an exact point instead of racing a kill
against a timer. The points are installed at seams, not called from the stages: when the
variable is set, the stage task base class (tasks.StageTask) hands each stage its storage
wrapped by `at_first_write`, so the stage's point fires right after it writes its first
artifact; the API installs `submit` at its publish step with `hit`.

    FACE2PAINT_FAULTS      comma-separated rules ACTION:POINT[:MATCH]
    FACE2PAINT_FAULTS_DIR  directory for the markers below (required by pause and kill)

POINT is a stage (detect, parse, stylize, finalize; hit in the middle of the stage, right after
its first artifact is written: finalize's only one is the result) or `submit` (in the API, after the job is committed and before its items
are published). MATCH, if given, is a substring of the item's file name (for `submit`: of any
uploaded file's name); without it the rule applies to every item. ACTION is one of:

    pause   the first time per item: write DIR/paused.POINT.ITEM_ID (containing the pid), then
            wait until something kills the process or DIR/release.POINT.ITEM_ID appears (or
            the stage's time limit ends it); later runs of the stage pass through
    kill    the first time per item: SIGKILL the current process; later runs pass through
    poison  SIGKILL the current process every time (an input that always crashes its worker)
    exit    os._exit(70) every time (the API dies between the commit and the publish)

"Once per item" is recorded as a marker file, because the process that passed the point is
usually dead by the time the stage runs again.
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

ENV_RULES = "FACE2PAINT_FAULTS"
ENV_DIR = "FACE2PAINT_FAULTS_DIR"
ACTIONS = ("pause", "kill", "poison", "exit")
POINTS = ("detect", "parse", "stylize", "finalize", "submit")


class Rule(NamedTuple):
    action: str
    point: str
    match: str


def parse_rules(spec: str) -> list[Rule]:
    rules = []
    for raw in filter(None, (r.strip() for r in spec.split(","))):
        parts = raw.split(":", 2)
        if len(parts) < 2 or parts[0] not in ACTIONS or parts[1] not in POINTS:
            raise ValueError(
                f"bad {ENV_RULES} rule {raw!r}: expected ACTION:POINT[:MATCH] with ACTION one of "
                f"{', '.join(ACTIONS)} and POINT one of {', '.join(POINTS)}"
            )
        rules.append(Rule(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))
    return rules


@lru_cache(maxsize=1)
def _config() -> tuple[list[Rule], Path | None]:
    rules = parse_rules(os.environ.get(ENV_RULES, ""))
    d = os.environ.get(ENV_DIR)
    if any(r.action in ("pause", "kill") for r in rules) and not d:
        raise RuntimeError(f"{ENV_RULES} has pause/kill rules: set {ENV_DIR} to a writable directory")
    return rules, Path(d) if d else None


def enabled() -> bool:
    return bool(os.environ.get(ENV_RULES))


def marker_path(directory: Path, kind: str, point: str, item_id: str) -> Path:
    return Path(directory) / f"{kind}.{point}.{item_id}"


def _first_time(directory: Path, point: str, item_id: str) -> bool:
    try:
        fd = os.open(marker_path(directory, "hit", point, item_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def hit(point: str, item_id: str = "", names: list[str] | tuple[str, ...] = ()) -> None:
    """The injection point. Does nothing (one environment lookup) unless FACE2PAINT_FAULTS is set."""
    if not enabled():
        return
    rules, directory = _config()
    for rule in rules:
        if rule.point != point or (rule.match and not any(rule.match in n for n in names)):
            continue
        if rule.action == "exit":
            os._exit(70)
        if rule.action == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        if not _first_time(directory, point, item_id):
            continue
        if rule.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if rule.action == "pause":
            tmp = marker_path(directory, ".paused", point, item_id)
            tmp.write_text(str(os.getpid()))
            tmp.rename(marker_path(directory, "paused", point, item_id))  # appears complete
            release = marker_path(directory, "release", point, item_id)
            while not release.exists():  # until the test kills or releases us
                time.sleep(0.05)


class _FirstWriteFault:
    """A storage handle whose fault point fires once, right after the first object is written
    through it; everything else goes straight to the storage it wraps."""

    def __init__(self, storage, point: str, item_id: str, names: tuple[str, ...]):
        self._storage = storage
        self._hit = (point, item_id, names)
        self._written = False

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None, **kw) -> None:
        self._storage.put_bytes(key, data, content_type, **kw)
        if not self._written:
            self._written = True
            hit(*self._hit)

    def __getattr__(self, name):
        return getattr(self._storage, name)


def at_first_write(storage, point: str, item_id: str, names: tuple[str, ...] = ()):
    """The storage a stage writes through: itself unless FACE2PAINT_FAULTS is set, else wrapped
    so that `point` is hit right after the stage's first write."""
    if not enabled():
        return storage
    return _FirstWriteFault(storage, point, item_id, tuple(names))
