"""A worker's liveness, for an exec probe: `python -m face2paint.worker.liveness`.

`celery inspect ping` goes through the broker to every worker and back; at scale that is a
broadcast per probe per pod. This check stays inside the container and reads two kinds of files
in the worker's state directory (FACE2PAINT_WORKER_STATE_DIR, default FACE2PAINT_HOME/worker):

- `heartbeat`: touched every HEARTBEAT_INTERVAL_S (or a quarter of the allowed age, when that
  is shorter) by a timer on the worker's event loop (a
  bootstep), so it goes stale when the loop that receives tasks and enforces time limits is
  stuck, not merely when the process is gone;
- `task-PID.json`: written by a pool process when it starts a stage and removed when the stage
  ends. A live process whose stage has run past the hard time limit (FACE2PAINT_STAGE_TIMEOUT_S)
  plus a margin was not killed by that limit: it is stuck (a hung driver call, a lost signal).

The check fails (exit 1, one line saying why) when the heartbeat is older than
FACE2PAINT_WORKER_HEARTBEAT_MAX_AGE_S or any stage is stuck. While a warm shutdown finishes
the stages in flight, the event loop no longer beats; a `stopping` marker written when the
shutdown begins keeps the heartbeat from failing the check then (stuck stages still fail it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("face2paint.worker")

HEARTBEAT_INTERVAL_S = 10.0
# A stage is stuck once it runs this much past its hard time limit: the pool's own time-limit
# kill takes well under a second, so a minute past it something is wrong.
STUCK_MARGIN_S = 60.0
HEARTBEAT = "heartbeat"
STOPPING = "stopping"


def state_dir() -> Path:
    from ..settings import get_settings

    return get_settings().resolved_worker_state_dir


def _task_file(directory: Path, pid: int) -> Path:
    return directory / f"task-{pid}.json"


def beat(directory: Path | None = None) -> None:
    directory = directory or state_dir()
    path = directory / HEARTBEAT
    try:
        path.touch()
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        path.touch()


def begin(stage: str, item_id: str | None, directory: Path | None = None) -> None:
    """Record, in the pool process, that a stage started now."""
    directory = directory or state_dir()
    path = _task_file(directory, os.getpid())
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"stage": stage, "item": item_id, "started": time.time()}))
        tmp.replace(path)
    except OSError as e:  # never fail a stage over its liveness record
        log.warning("could not write %s: %r", path, e)


def end(directory: Path | None = None) -> None:
    try:
        _task_file(directory or state_dir(), os.getpid()).unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove the liveness record of pid %d: %r", os.getpid(), e)


def reset(directory: Path | None = None) -> None:
    """At worker start: a fresh heartbeat, and no records left by a previous run."""
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for path in [*directory.glob("task-*.json"), directory / STOPPING]:
        path.unlink(missing_ok=True)
    beat(directory)


def stopping(directory: Path | None = None) -> None:
    (directory or state_dir()).joinpath(STOPPING).touch()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def problems(directory: Path, *, stage_timeout_s: float, max_heartbeat_age_s: float,
             now: float | None = None) -> list[str]:
    """Why the worker is not live (an empty list when it is)."""
    now = time.time() if now is None else now
    found = []
    if not (directory / STOPPING).exists():
        try:
            age = now - (directory / HEARTBEAT).stat().st_mtime
        except FileNotFoundError:
            found.append(f"no heartbeat in {directory}: the worker has not started, or "
                         "FACE2PAINT_WORKER_STATE_DIR differs between the worker and this check")
        else:
            if age > max_heartbeat_age_s:
                found.append(f"the worker's event loop last beat {age:.0f} s ago "
                             f"(limit {max_heartbeat_age_s:.0f} s): it is stuck")
    limit = stage_timeout_s + STUCK_MARGIN_S
    for path in sorted(directory.glob("task-*.json")):
        try:
            pid = int(path.stem.split("-", 1)[1])
            record = json.loads(path.read_text())
            running = now - float(record["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced right now, or not ours
        if running > limit and _alive(pid):
            found.append(f"stage {record.get('stage')} of item {record.get('item')} has run "
                         f"{running:.0f} s in pid {pid}, past its hard limit of "
                         f"{stage_timeout_s:.0f} s (FACE2PAINT_STAGE_TIMEOUT_S): it is stuck")
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..settings import get_settings

    settings = get_settings()
    ap = argparse.ArgumentParser(prog="python -m face2paint.worker.liveness",
                                 description="Exit 0 if this container's worker is live, else 1.")
    ap.add_argument("--dir", type=Path, default=settings.resolved_worker_state_dir)
    args = ap.parse_args(argv)
    found = problems(args.dir, stage_timeout_s=settings.stage_timeout_s,
                     max_heartbeat_age_s=settings.worker_heartbeat_max_age_s)
    for line in found:
        print(line, file=sys.stderr)
    if not found:
        print("live")
    return 1 if found else 0


# --- wiring into the worker -------------------------------------------------------------------


def install(app) -> None:
    """Add the heartbeat bootstep and the per-stage records to a Celery app's workers."""
    from celery import bootsteps, signals

    class Heartbeat(bootsteps.StartStopStep):
        # On the worker's timer: with the prefork pool that timer runs on the same event loop
        # that takes tasks from the broker and enforces time limits.
        requires = {"celery.worker.components:Timer"}

        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            self.tref = None

        def start(self, worker):
            from ..settings import get_settings

            reset()
            # Several beats within the allowed age, so one late timer round never fails it.
            every = min(HEARTBEAT_INTERVAL_S, get_settings().worker_heartbeat_max_age_s / 4)
            self.tref = worker.timer.call_repeatedly(every, beat, priority=10)

        def stop(self, worker):
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

    app.steps["worker"].add(Heartbeat)

    def on_prerun(task=None, args=None, **_):
        name = getattr(task, "name", "") or ""
        if name.startswith("face2paint."):
            begin(name.rpartition(".")[2], args[0] if args else None)

    def on_postrun(task=None, **_):
        if (getattr(task, "name", "") or "").startswith("face2paint."):
            end()

    def on_shutting_down(**_):
        stopping()

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)


if __name__ == "__main__":
    sys.exit(main())
