"""Prometheus metrics of a worker: one endpoint per worker process group.

Stages run in the pool processes of Celery's prefork pool, so each process counts into
prometheus_client's multiprocess files (one directory per worker: PROMETHEUS_MULTIPROC_DIR
when set, else a fresh temporary one) and the pool's parent serves their sum on
FACE2PAINT_WORKER_METRICS_PORT. The parent never runs a stage, and a pool process that is
replaced (killed at the time limit, OOM) leaves its counts behind in its files, so counters
never go backwards. Nothing is created, and no port opened, unless that setting is set.

Recorded from Celery's task signals and a few calls from the stages (the model each stage
used, model load time, stylize batch sizes):

    face2paint_stage_seconds{stage,model}          histogram, stages that went on to the next
    face2paint_stage_cpu_seconds_total{stage}      CPU time of the pool process in stages
    face2paint_stage_runs_total{stage,outcome}     succeeded | stopped | retry | error
    face2paint_stage_in_progress{stage}            stages running now
    face2paint_stage_retries_total{stage,kind}     outage | error
    face2paint_photos_succeeded_total              items finished with a result
    face2paint_photos_failed_total{stage,reason}   reason: one of FAILURE_REASONS
    face2paint_model_load_seconds{model}           model loads (once per process and model)
    face2paint_stylize_batch_size{model}           face crops per stylize call
    face2paint_gpu_memory_bytes{device,kind,pid}   only when torch has initialised CUDA
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..jobs.states import STAGES

log = logging.getLogger("face2paint.worker")

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)

# A failed item's reason class, from its error text (what the user reads), first match wins.
# A bounded label set: raw error text never becomes a label.
FAILURE_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timed out after",)),
    ("worker_died", ("worker died",)),
    ("outage", ("through an outage",)),
    ("model_unavailable", ("unknown model id", "FACE2PAINT_MODEL_DIR", "models pull",
                           "could not download", "model is available")),
    ("error", ("gave up after",)),
    ("bad_input", ("image", "unsupported format", "empty")),
)
OTHER_REASON = "other"

_metrics: "_Metrics | None" = None
_task: dict = {}  # the stage running in this pool process


def failure_reason(error: str | None) -> str:
    text = error or ""
    for reason, needles in FAILURE_REASONS:
        if any(n in text for n in needles):
            return reason
    return OTHER_REASON


class _Metrics:
    # registry=None: nothing registers in the process-global registry; the multiprocess
    # collector reads every process's files instead.
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.stage_seconds = Histogram(
            "face2paint_stage_seconds", "Stage run time in the worker, for stages that went on",
            ["stage", "model"], buckets=STAGE_BUCKETS, registry=None)
        self.stage_cpu = Counter(
            "face2paint_stage_cpu_seconds", "CPU seconds (all threads) spent in stages", ["stage"],
            registry=None)
        self.stage_runs = Counter(
            "face2paint_stage_runs", "Stage runs by outcome", ["stage", "outcome"], registry=None)
        self.in_progress = Gauge(
            "face2paint_stage_in_progress", "Stages running now", ["stage"],
            multiprocess_mode="livesum", registry=None)
        self.retries = Counter(
            "face2paint_stage_retries", "Stage retries: outage (a service unreachable) or error",
            ["stage", "kind"], registry=None)
        self.succeeded = Counter("face2paint_photos_succeeded", "Photos finished with a result",
                                 registry=None)
        self.failed = Counter(
            "face2paint_photos_failed", "Photos failed, by stage and reason class", ["stage", "reason"],
            registry=None)
        self.model_load = Histogram(
            "face2paint_model_load_seconds", "Time to load one model into a pool process, by model id",
            ["model"], buckets=LOAD_BUCKETS, registry=None)
        self.batch = Histogram(
            "face2paint_stylize_batch_size", "Face crops stylized per stylize stage", ["model"],
            buckets=BATCH_BUCKETS, registry=None)
        self.gpu_memory = Gauge(
            "face2paint_gpu_memory_bytes", "CUDA memory held by torch in a pool process",
            ["device", "kind"], multiprocess_mode="liveall", registry=None)


def enabled() -> bool:
    return _metrics is not None


def _multiproc_dir() -> Path:
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="face2paint-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):  # counts of an earlier run of this worker
        old.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # read by the pool processes too
    return path


def start(port: int, addr: str = "0.0.0.0") -> int | None:
    """In the worker's parent, before the pool starts: create the metrics in multiprocess mode
    and serve them. Returns the port, or None when it could not be bound (logged; the worker
    runs on without an endpoint rather than not at all)."""
    global _metrics
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    path = _multiproc_dir()
    # Chosen when prometheus_client was imported, from the environment; set it here so that
    # nothing depends on import order.
    values.ValueClass = values.MultiProcessValue()
    _metrics = _Metrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        log.warning("worker metrics: cannot listen on %s:%d (%s); set FACE2PAINT_WORKER_METRICS_PORT "
                    "to a free port, one per worker on a host", addr, port, e)
        return None
    log.info("worker metrics on http://%s:%d/metrics (%s)", addr, port, path)
    return port


def stop() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and Path(path).name.startswith("face2paint-metrics-"):
        shutil.rmtree(path, ignore_errors=True)  # ours (a temporary directory)


# --- called from the stages --------------------------------------------------------------------


def note_models(models: dict[str, str]) -> None:
    """The pipeline a stage uses (stage -> model id), for the stage histogram's model label."""
    if _task:
        _task["models"] = models


def model_loaded(model_id: str, seconds: float) -> None:
    """A model the process's cache has just loaded (models.cache.ModelCache.on_load)."""
    if _metrics is not None:
        _metrics.model_load.labels(model_id).observe(seconds)


def stylize_batch(model: str, size: int) -> None:
    if _metrics is not None:
        _metrics.batch.labels(model).observe(size)


# --- signal handlers ----------------------------------------------------------------------------


def _stage_of(task) -> str | None:
    name = getattr(task, "name", "") or ""
    stage = name.rpartition(".")[2] if name.startswith("face2paint.") else None
    return stage if stage in STAGES else None  # the webhook task is no stage


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def on_prerun(task=None, args=None, **_):
    stage = _stage_of(task)
    if _metrics is None or stage is None:
        return
    _task.clear()
    _begin_stage(stage, args[0] if args else None)


def _begin_stage(stage: str, item_id: str | None) -> None:
    _task.update(stage=stage, item=item_id, t0=time.perf_counter(), cpu0=_cpu_s(),
                 wall0=time.time(), models={})
    _metrics.in_progress.labels(stage).inc()


def resumed_at(stage: str) -> None:
    """The task runs a later stage than its name says (a merged task redelivered after its
    worker died, worker/tasks.py): count the run under the stage it really runs."""
    if _metrics is None or not _task or _task.get("stage") == stage:
        return
    _metrics.in_progress.labels(_task["stage"]).dec()
    _task["stage"] = stage
    _metrics.in_progress.labels(stage).inc()


def went_on(stage: str) -> None:
    """The running stage succeeded and the same task goes on with `stage` (merged stages):
    the finished one is recorded as if its task had ended, the next one begins."""
    if _metrics is None or not _task:
        return
    item = _task.get("item")
    _end_stage(_task["stage"], "SUCCESS")
    _task.clear()
    _begin_stage(stage, item)


_OUTCOMES = {"SUCCESS": "succeeded", "IGNORED": "stopped", "RETRY": "retry", "FAILURE": "error"}


def on_postrun(task=None, state=None, **_):
    # The stage the task ran last: a merged task (worker/tasks.py) ends in a later stage than
    # its name.
    stage = _task.get("stage")
    if _metrics is None or _stage_of(task) is None or stage is None:
        return
    _end_stage(stage, state)
    _gpu_memory()
    _task.clear()


def _end_stage(stage: str, state) -> None:
    m = _metrics
    seconds = time.perf_counter() - _task["t0"]
    m.in_progress.labels(stage).dec()
    m.stage_cpu.labels(stage).inc(max(0.0, _cpu_s() - _task["cpu0"]))
    m.stage_runs.labels(stage, _OUTCOMES.get(state, str(state).lower())).inc()
    if state == "SUCCESS":
        m.stage_seconds.labels(stage, _task["models"].get(stage, "none")).observe(seconds)
        if stage == "finalize":
            m.succeeded.inc()
    elif state == "IGNORED" and _task.get("item"):
        reason = _failed_here(_task["item"], _task["wall0"])
        if reason:
            m.failed.labels(stage, reason).inc()


def _failed_here(item_id: str, since: float) -> str | None:
    """The reason class if this stage run failed the item (a stopped stage may also be a
    duplicate delivery or a canceled item): the item failed after the run began."""
    from sqlalchemy import select

    from ..jobs.db import Item
    from .context import session_scope

    try:
        with session_scope() as s:
            row = s.execute(select(Item.status, Item.error, Item.finished_at)
                            .where(Item.id == item_id)).one_or_none()
    except Exception as e:  # noqa: BLE001 - the database is down: the count is lost, not the stage
        log.debug("worker metrics: could not read item %s: %r", item_id, e)
        return None
    if row is None or row.status != "failed" or row.finished_at is None:
        return None
    if row.finished_at < datetime.fromtimestamp(since, timezone.utc):
        return None
    return failure_reason(row.error)


def on_retry(sender=None, reason=None, **_):
    stage = _task.get("stage") or _stage_of(sender)
    if _metrics is None or stage is None:
        return
    from .tasks import is_outage

    cause = getattr(reason, "exc", None) or reason
    _metrics.retries.labels(stage, "outage" if isinstance(cause, BaseException) and is_outage(cause)
                            else "error").inc()


def _gpu_memory() -> None:
    torch = sys.modules.get("torch")  # only where a stage imported it; never import it here
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for i in range(torch.cuda.device_count()):
        g = _metrics.gpu_memory
        g.labels(str(i), "allocated").set(torch.cuda.memory_allocated(i))
        g.labels(str(i), "reserved").set(torch.cuda.memory_reserved(i))
        g.labels(str(i), "max_allocated").set(torch.cuda.max_memory_allocated(i))


def on_process_shutdown(**_):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if _metrics is not None and path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), path)  # drops its live gauges


def install(app) -> None:
    """Serve metrics from workers of `app` when FACE2PAINT_WORKER_METRICS_PORT is set."""
    from celery import signals

    def on_worker_init(**_):
        from ..settings import get_settings

        settings = get_settings()
        if settings.worker_metrics_port:
            start(settings.worker_metrics_port, settings.worker_metrics_addr)

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_shutdown.connect(lambda **_: stop(), weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_retry.connect(on_retry, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
