"""One Celery task per stage, on one base class (StageTask) that holds the stage and the
process's resources and runs the frame every stage shares: attempt bookkeeping, errors, retries
and hand-off to the next stage. Each stage records its attempt, writes its own terminal state
and stops the item's run itself (Ignore) instead of relying on error callbacks.

The stage bodies only unpack the artifacts of the stages before, call one pipeline method
(models/pipeline.py) and pack what it returns. Models load lazily from the process's model
cache when a stage first needs them (detect: the detector, parse: the parser, stylize: the
stylizers, finalize: the detector for face models, to put the features back in place), inside the pool process, never in the parent of a prefork pool,
and stay loaded for the life of the process, whatever parameters the jobs ask for.

What a photo costs the job system (docs/BENCHMARKS.md, "Job-system cost"):

- merged stages: when this worker also consumes the next stage's queue (the embedded worker
  consumes all four), the task goes on with the next stage itself instead of publishing it.
  Each stage still records its own attempt; closing one attempt and beginning the next are one
  transaction; the next stage takes the artifacts from memory instead of storage. Every stage
  still writes its artifacts (and its fault point fires after the first write), so a task
  redelivered after its worker died resumes at the stage the item is in, as attempt 2 of it,
  from what the stages before wrote. The task hands off through the broker anyway when too
  little of its time limit is left for the next stage, and before stylize when stylize batches
  (worker/batching.py: batching needs the stylize messages in the queue).
- hand-off: the next stage is published by the task after its transaction commits (no Celery
  chain), with the small outputs (the detected faces) in its message.
- artifacts: one object per stage (detect: the decoded image as raw .npy; parse: the prepared
  faces; stylize: the background, the stylized crops and what finalize needs of the faces);
  a stage in a task of its own reads at most two.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import select

from ..jobs.db import FaceRow, Item, Job, StageAttempt
from ..jobs.faces import record_faces
from ..jobs.keys import artifact_key, result_key
from ..jobs.locks import lock_item
from ..jobs.progress import refresh_job
from ..jobs.retention import drop_item_artifacts
from ..jobs.stages import begin_stage, end_stage, fail_item, finish_stage
from ..jobs.states import STAGE_STATE, STAGES, ItemState, Outcome, next_stage, stage_index
from ..jobs.storage import StorageUnavailable
from ..models.registry import ModelUnavailable
from . import artifacts, faults, metrics
from .app import TASK_NAMES, celery_app
from .context import resources, session_scope

log = logging.getLogger("face2paint.worker")
app = celery_app()

OCTETS = "application/octet-stream"
# Each stage's one artifact (what the stages after it read when they run in another task).
ARTIFACTS = {"detect": "image.npy", "parse": "work.npz", "stylize": "work.npz"}


class PermanentError(Exception):
    """This input can never succeed (bad image, unknown model): fail the item, no retry."""


# How long a stage keeps retrying through a database, storage or broker outage before the item
# fails. Outage retries don't count against settings.max_attempts, which is for poison inputs.
OUTAGE_GIVE_UP_S = 15 * 60


def is_outage(e: BaseException) -> bool:
    """Errors that say a service is unreachable, not that this input is bad: retry later."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(e, (StorageUnavailable, OperationalError, InterfaceError, BrokerError)):
        return True
    return isinstance(e, DBAPIError) and bool(e.connection_invalidated)


# The pipeline role whose model each stage runs (finalize runs the detector only for the
# features-in-place step of face models: _models_used).
_MODEL_ROLE = {"detect": "detect", "parse": "parse", "stylize": "stylize"}


def worker_queues(app_=None) -> frozenset[str]:
    """The stage queues this worker consumes (its -Q); inherited by the pool processes."""
    try:
        return frozenset((app_ or app).amqp.queues.consume_from) & frozenset(STAGES)
    except Exception:  # noqa: BLE001 - not inside a worker: nothing to merge with
        return frozenset()


@dataclass
class StageContext:
    """What a stage body works with: the item, the job's options, the stage's storage handle,
    the pipeline over the process's model cache, and `memo`: what the stages before left in
    memory when they ran in the same task (else the stage reads their artifact)."""

    job_id: str
    item_id: str
    input_key: str
    filename: str
    options: dict
    storage: object
    models: object  # the process's ModelCache
    stage: str = ""
    size: tuple[int, int] | None = None  # the input's original size (after detect)
    faces: list | None = None  # detect's faces, full precision (message, memo or database)
    memo: dict = field(default_factory=dict)

    @cached_property
    def params(self):
        try:  # the style preset's defaults under the request's own params
            return self.pipe.params_for(self.options.get("params") or {})
        except TypeError as e:
            raise PermanentError(f"bad params: {e}") from e

    @cached_property
    def pipe(self):
        from ..models.pipeline import Face2Paint

        return Face2Paint(self.models, style=self.options.get("style"),
                          face_style=self.options.get("face_style"),
                          background_style=self.options.get("background_style"))

    @property
    def face2paint(self) -> bool:
        return bool(self.options.get("face2paint", True))

    def key(self, stage: str, name: str) -> str:
        return artifact_key(self.job_id, self.item_id, stage, name)

    def read(self, stage: str, name: str) -> bytes:
        return self.storage.get_bytes(self.key(stage, name))

    def write(self, name: str, data: bytes) -> None:
        # Not fsynced: an artifact only has to outlive this process (the next stage or a
        # redelivery reads it). A host crash that loses one makes its item's later stage fail
        # to read it, retry and fail with the reason; the result itself is written durably.
        self.storage.put_bytes(self.key(self.stage, name), data, OCTETS, durable=False)

    def artifact(self, stage: str):
        """The output of `stage` for this item: from memory when it ran in this task."""
        if stage not in self.memo:
            data = self.read(stage, ARTIFACTS[stage])
            self.memo[stage] = (artifacts.npy_array(data) if ARTIFACTS[stage].endswith(".npy")
                                else artifacts.npz_arrays(data))
        return self.memo[stage]


@dataclass
class Begun:
    attempt_id: int
    attempt_no: int
    stage: str
    row: dict


class StageTask(Task):
    """Base of the four stage tasks: `stage` is set per task (`@app.task(stage=...)`); the
    resources (database sessions, storage, model cache) are the pool process's own."""

    stage: str = ""
    # retry(max_retries=None) means "the task's default", after which Celery raises the error
    # and acks the message; retries are bounded by the attempt cap and OUTAGE_GIVE_UP_S instead.
    max_retries = None
    # Retry countdowns: Celery's exponential backoff with full jitter, capped (see backoff_s).
    retry_backoff = 1
    retry_jitter = True

    @property
    def resources(self):
        return resources()

    def backoff_s(self, retries: int) -> int:
        # The cap stays well under the broker's visibility timeout (3 x stage timeout): a
        # worker holds a countdown message unacked, and Redis would hand it out a second time.
        cap = max(1, min(30, self.resources.settings.stage_timeout_s // 4))
        return get_exponential_backoff_interval(self.retry_backoff, retries, cap,
                                                full_jitter=self.retry_jitter)

    def context(self, begun: Begun, memo: dict | None = None) -> StageContext:
        res = self.resources
        row = {k: v for k, v in begun.row.items() if not k.startswith("_")}
        storage = faults.at_first_write(res.storage, begun.stage, row["item_id"], (row["filename"],))
        return StageContext(**row, storage=storage, models=res.models, stage=begun.stage,
                            size=begun.row.get("_size"), faces=begun.row.get("_faces"),
                            memo=memo if memo is not None else {})

    # --- which stages this task runs ---------------------------------------------------------

    def merges_into(self, stage: str, started: float) -> bool:
        """Run `stage` in this task instead of publishing it? When this worker consumes its
        queue, and enough of the task's time limit is left: twice the stage's last duration in
        this process, within the first half of the soft limit. Never into stylize when stylize
        batches (it must wait in its queue to be gathered)."""
        settings = self.resources.settings
        if not settings.merge_stages or stage not in worker_queues(self.app):
            return False
        if stage == "stylize" and settings.resolved_stylize_batch_max > 1:
            return False
        soft = self.app.conf.task_soft_time_limit or settings.stage_timeout_s
        used = time.monotonic() - started
        return used + 2 * _LAST_S.get(stage, 0.0) < soft / 2

    def resume_stage(self, session, item_id: str) -> str:
        """The stage to begin for this message. Normally the task's own; a merged task
        redelivered after its worker died finds the item in a later stage, which it began
        itself and did not finish, and runs that stage again. Any other later stage belongs to
        another message: its latest attempt was carried by another task, or it succeeded and
        handed the next stage to the broker (a crash before that publish is the sweeper's).
        Then this message is a stale copy (one a broker connection drop put back in the
        queue) and begins its own stage, which begin_stage drops."""
        stage = self.stage
        settings = self.resources.settings
        if not settings.merge_stages:
            return stage
        item = lock_item(session, item_id)
        if item is None or item.stage is None or item.status != STAGE_STATE.get(item.stage):
            return stage
        if stage_index(item.stage) <= stage_index(stage):
            return stage
        target = item.stage
        latest = session.execute(
            select(StageAttempt.outcome, StageAttempt.task_id)
            .where(StageAttempt.item_id == item_id, StageAttempt.stage == target)
            .order_by(StageAttempt.id.desc()).limit(1)).first()
        outcome, carrier = latest if latest is not None else (None, None)
        if outcome == Outcome.SUCCEEDED or (carrier is not None and carrier != self.request.id):
            return stage
        served = worker_queues(self.app)
        path = STAGES[stage_index(stage) + 1: stage_index(target) + 1]
        if all(s in served for s in path):
            return target
        return stage

    # --- the frame ------------------------------------------------------------------------

    def run_stage(self, item_id: str, outage: dict | None = None, carry: dict | None = None) -> None:
        """Common frame of every stage: attempt bookkeeping, errors, retries, hand-off.

        - a PermanentError (or a model that cannot be had) fails the item at once;
        - an outage (database, storage, broker unreachable) retries with backoff, refunding the
          attempt, for up to OUTAGE_GIVE_UP_S;
        - any other error (a library crash, the soft time limit) counts as an attempt and
          retries until settings.max_attempts, then fails the item with the last error;
        - a worker killed mid-stage leaves its attempt open; the broker redelivers the task
          (acks_late + reject_on_worker_lost) and begin_stage counts it, so an input that kills
          its worker every time stops at the cap.
        Raising Ignore stops the item's run; returning after publishing the next stage (or
        after the last stage) acknowledges the message.
        A retry re-sends this task; it begins at the stage the item is in (resume_stage).
        """
        started = time.monotonic()
        try:
            begun = self._begin(item_id, outage, carry)
        except Exception as e:
            if is_outage(e):
                # Still down: carry the interrupted attempt (if any) on to the next try.
                self._retry_after_outage(item_id, e, outage, (outage or {}).get("attempt"))
            raise
        if begun is None:
            _tidy_ended(None, item_id)
            raise Ignore()
        # A retried stylize runs alone: an input that kills its process (or a batch that died
        # for one) must not take the other photos of a batch down again and spend their attempts.
        if (begun.stage == "stylize" and begun.attempt_no == 1
                and self.resources.settings.resolved_stylize_batch_max > 1):
            return self._run_batch(begun, started, outage)
        self._run_from(begun, {}, started, outage)

    def _run_from(self, begun: Begun, memo: dict, started: float, outage, body=None) -> None:
        """Run the begun stage (with `body` instead of the stage's own, for a batch member)
        and the stages this task goes on with."""
        while begun is not None:
            begun = self._run_one(begun, memo, started, outage, body)
            body = None

    # --- batches (worker/batching.py) -------------------------------------------------------

    def _run_batch(self, begun: Begun, started: float, outage) -> None:
        """Stylize this task's item with the stylize tasks waiting behind it, in one batch of
        generator passes; then each member finishes on its own (attempt, hand-off, errors).
        The gathered members go first, each as its own request; this task's item last, so
        its Ignore or retry ends the task as usual."""
        from . import batching

        settings = self.resources.settings
        bodies: dict = {}
        try:
            with self.app.connection_for_read() as conn:
                gathered = batching.gather(conn.default_channel, "stylize", TASK_NAMES["stylize"],
                                           settings.resolved_stylize_batch_max - 1,
                                           settings.stylize_batch_wait_ms / 1000)
                members: list[tuple[batching.Gathered | None, Begun]] = [(None, begun)]
                others: list[tuple[batching.Gathered, Begun | None]] = []
                for g in gathered:
                    with self._as_request(g):
                        try:
                            b = self._begin(g.item_id, g.kwargs.get("outage"), g.kwargs.get("carry"))
                        except Exception:  # noqa: BLE001 - its own frame meets the error again
                            others.append((g, None))
                            continue
                    if b is None:
                        _ack(g)  # nothing to do for it (terminal, stale, over the cap)
                    elif b.stage != "stylize" or b.attempt_no > 1:
                        others.append((g, b))  # resumed past stylize, or a retry: on its own
                    else:
                        members.append((g, b))
                bodies = self._batch_bodies([b for _, b in members]) if len(members) > 1 else {}
                log.info("stylize batch of %d photo(s)%s", len(members),
                         "" if bodies or len(members) == 1 else " (one by one after a batch error)")
                for g, b in members[1:]:
                    self._run_gathered(g, b, started, bodies.get(b.attempt_id))
                for g, b in others:
                    self._run_gathered(g, b, started, None)
        except Exception as e:  # noqa: BLE001 - the broker: what was gathered comes back later
            # Gathered messages not acknowledged return after the visibility timeout and find
            # their items where these runs left them; this task's own item still runs now.
            log.warning("stylize batch: %r; this task's photo runs on its own", e)
        self._run_from(begun, {}, started, outage, bodies.get(begun.attempt_id))

    def _batch_bodies(self, members: list[Begun]) -> dict[int, object]:
        """Stage bodies per attempt that write the batch's outputs; {} if the batch failed
        (each member then stylizes on its own and meets its error in its own frame)."""
        from ..models.batch import Work, stylize_many

        try:
            ctxs, works = [], []
            for b in members:
                ctx = self.context(b)
                rgb, faces = stylize_inputs(ctx)
                ctxs.append((ctx, faces))
                works.append(Work(ctx.pipe, faces, rgb, ctx.params))
            t = time.perf_counter()
            results = stylize_many(works, self.resources.settings.resolved_stylize_batch_max)
            t_batch = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("stylize batch failed (%r); its photos run one by one", e)
            return {}
        bodies = {}
        for b, (_, faces), (crops, background) in zip(members, ctxs, results):
            def body(ctx, faces=faces, crops=crops, background=background):
                metrics.stylize_batch(ctx.pipe.choice("stylize").model_id, len(faces))
                return stylize_outputs(ctx, faces, crops, background, t_batch)
            bodies[b.attempt_id] = body
        return bodies

    @contextlib.contextmanager
    def _as_request(self, g):
        """Run a gathered message's frame as if Celery had delivered it: retry() re-sends
        that message's task, not this one."""
        parent = self.request
        self.push_request(
            id=g.headers.get("id"), args=[g.item_id], kwargs=g.kwargs,
            retries=int(g.headers.get("retries") or 0), hostname=parent.hostname,
            delivery_info=parent.delivery_info, called_directly=False, is_eager=False,
            gathered=True,  # its stage runs stay out of this task's stage metrics
            timelimit=g.headers.get("timelimit"), root_id=g.headers.get("root_id"),
            parent_id=g.headers.get("parent_id"))
        try:
            yield
        finally:
            self.pop_request()

    def _run_gathered(self, g, begun: Begun | None, started: float, body) -> None:
        """One gathered message through the frame, then acknowledged (its retry, if any, has
        been sent as a new message by then)."""
        from celery.exceptions import Retry

        outage = g.kwargs.get("outage")
        try:
            with self._as_request(g):
                if begun is None:
                    begun = self._begin(g.item_id, outage, g.kwargs.get("carry"))
                if begun is not None:
                    self._run_from(begun, {}, started, outage, body)
        except (Ignore, Retry):
            pass
        except Exception as e:  # noqa: BLE001 - as Celery would: logged, acknowledged
            log.error("gathered stylize task of item %s failed: %r", g.item_id, e)
        finally:
            _ack(g)

    def _run_one(self, begun: Begun, memo: dict, started: float, outage, body=None) -> Begun | None:
        """Run one begun stage; the next stage's Begun when this task goes on with it."""
        stage, attempt_id, item_id = begun.stage, begun.attempt_id, begun.row["item_id"]
        job_id = begun.row["job_id"]
        t0 = time.perf_counter()
        try:
            ctx = self.context(begun, memo)
            used = _models_used(stage, ctx)
            counted = not getattr(self.request, "gathered", False)
            if stage in _MODEL_ROLE and counted:  # the stage histogram's model label
                metrics.note_models({stage: ctx.pipe.choice(_MODEL_ROLE[stage]).model_id})
            outcome = (body or STAGE_BODIES[stage])(ctx) or {}
            timings = dict(outcome.get("timings") or {})
            timings[stage] = round(time.perf_counter() - t0, 4)
            _LAST_S[stage] = timings[stage]
            nxt = next_stage(stage)
            merge = nxt is not None and self.merges_into(nxt, started)
            following = None
            with session_scope() as s:
                if "faces" in outcome:  # detect: the faces at full precision, and the size
                    w, h = outcome["size"]
                    record_faces(s, item_id, outcome["faces"], width=w, height=h)
                goes_on = finish_stage(s, attempt_id, timings, output_key=outcome.get("output_key"),
                                       face_count=outcome.get("face_count"), models=used)
                if goes_on and merge:
                    following = begin_stage(s, item_id, nxt, self._worker_name(),
                                            task_id=self.request.id)
                    if following is None:
                        # Canceled meanwhile (or over the cap): the job's counts follow the item.
                        refresh_job(s, job_id)
            if not goes_on:
                # A duplicate delivery (the newer attempt goes on), or the item was canceled
                # meanwhile: then what this stage wrote goes.
                _tidy_ended(job_id, item_id)
                raise Ignore()
            if nxt is None:
                self._drop_artifacts(job_id, item_id)
                return None
            size = outcome.get("size") or ctx.size
            faces = outcome.get("faces") if "faces" in outcome else ctx.faces
            if not merge:
                self._publish(nxt, item_id, _carry(size, faces, self.resources.settings))
                return None
            if following is None:
                _tidy_ended(job_id, item_id)
                raise Ignore()
            if counted:
                metrics.went_on(nxt)
            row = dict(begun.row, _size=size, _faces=faces)
            return Begun(following.id, following.attempt, nxt, row)
        except Ignore:
            raise
        except (PermanentError, ModelUnavailable) as e:
            error, permanent = e, True
        except Exception as e:  # noqa: BLE001 - classified below
            if is_outage(e):
                self._retry_after_outage(item_id, e, outage, attempt_id, job_id, stage)
            error, permanent = e, False
        try:
            if permanent:
                self._finish(stage, attempt_id, "failed", str(error), t0)
                _fail(item_id, job_id, f"{stage}: {error}")
                raise Ignore()
            settings = self.resources.settings
            if isinstance(error, SoftTimeLimitExceeded):
                message = (f"timed out after {settings.stage_timeout_s} s "
                           "(FACE2PAINT_STAGE_TIMEOUT_S)")
            else:
                message = f"{type(error).__name__}: {error}"
            log.warning("stage %s of item %s failed (attempt %d): %s", stage, item_id,
                        begun.attempt_no, message)
            self._finish(stage, attempt_id, "retry", message, t0)
            if begun.attempt_no >= settings.max_attempts:
                _fail(item_id, job_id, f"{stage}: gave up after {begun.attempt_no} attempts; "
                      f"last error: {message}")
                raise Ignore()
        except Exception as e:
            if is_outage(e):
                self._retry_after_outage(item_id, e, outage, attempt_id, job_id, stage)
            raise
        raise self.retry(exc=error, countdown=self.backoff_s(begun.attempt_no),
                         kwargs={**(self.request.kwargs or {}), "outage": None})

    def _worker_name(self) -> str:
        return getattr(self.request, "hostname", None) or socket.gethostname()

    def _begin(self, item_id: str, outage: dict | None, carry: dict | None = None) -> Begun | None:
        """Start an attempt (at resume_stage); None if the task must not run."""
        if outage and outage.get("attempt"):
            # The attempt an outage interrupted could not be closed then; close it now, which
            # also gives it back (an outage is not the input's fault).
            with session_scope() as s:
                end_stage(s, outage["attempt"], "outage", error=outage.get("error"))
        with session_scope() as s:
            stage = self.resume_stage(s, item_id)
            attempt = begin_stage(s, item_id, stage, self._worker_name(), task_id=self.request.id)
            if attempt is None:
                # Terminal, canceled, stale, or over the attempt cap (begin_stage recorded why).
                item = s.get(Item, item_id)
                if item is not None:
                    refresh_job(s, item.job_id)
                return None
            item = s.get(Item, item_id)
            job = s.get(Job, item.job_id)
            row = {"job_id": job.id, "item_id": item.id, "input_key": item.input_key,
                   "filename": item.filename, "options": dict(job.options or {})}
            carry = carry or {}
            size = carry.get("size") or ((item.width, item.height) if item.width else None)
            faces = carry.get("faces")
            if faces is None and stage == "parse":
                faces = [{"box": f.box, "landmarks": f.landmarks, "score": f.score}
                         for f in s.scalars(select(FaceRow).where(FaceRow.item_id == item_id)
                                            .order_by(FaceRow.idx))]
            row.update(_size=tuple(size) if size else None, _faces=faces)
            if stage != self.stage:
                log.info("item %s: %s task resumes at %s (attempt %d)", item_id, self.stage,
                         stage, attempt.attempt)
                if not getattr(self.request, "gathered", False):
                    metrics.resumed_at(stage)
            return Begun(attempt.id, attempt.attempt, stage, row)

    def _publish(self, stage: str, item_id: str, carry: dict | None) -> None:
        """Send the next stage (after the commit, so what it reads is durable). A failed
        publish leaves the item to the sweeper, which sends it from that stage."""
        try:
            self.app.signature(TASK_NAMES[stage], args=(item_id,),
                               kwargs={"carry": carry} if carry else {}, queue=stage).apply_async()
        except Exception as e:  # noqa: BLE001 - the sweeper resends stalled items
            log.warning("item %s: could not publish %s (%r); the sweeper will send it", item_id,
                        stage, e)

    def _retry_after_outage(self, item_id, e, outage, attempt_id, job_id=None, stage=None):
        stage = stage or self.stage
        since = (outage or {}).get("since") or time.time()
        if attempt_id is not None:
            try:
                with session_scope() as s:
                    end_stage(s, attempt_id, "outage", error=repr(e))
                attempt_id = None
            except Exception:  # the database is down too: the next try closes it
                log.debug("could not close attempt %s yet", attempt_id, exc_info=True)
        waited = time.time() - since
        if waited > OUTAGE_GIVE_UP_S:
            reason = (f"{stage}: gave up after {waited / 60:.0f} min of retrying through an outage: {e}. "
                      "Check the database, storage and broker, then submit the image again")
            try:
                _fail(item_id, job_id, reason)
            except Exception:  # noqa: BLE001 - still down: the sweeper sends the item again later
                log.error("item %s: %s (could not record it)", item_id, reason)
            raise Ignore()
        log.warning("stage %s of item %s hit an outage, retrying: %r", stage, item_id, e)
        raise self.retry(
            exc=e, countdown=self.backoff_s(self.request.retries),
            kwargs={**(self.request.kwargs or {}),
                    "outage": {"since": since, "attempt": attempt_id, "error": str(e)[:1000]}},
        )

    def _finish(self, stage, attempt_id, outcome, error, t0):
        with session_scope() as s:
            end_stage(s, attempt_id, outcome, error=error,
                      timings={stage: round(time.perf_counter() - t0, 4)})

    def _drop_artifacts(self, job_id: str, item_id: str, result: bool = False) -> None:
        _drop_artifacts(job_id, item_id, result)


def _drop_artifacts(job_id: str, item_id: str, result: bool = False) -> None:
    """Once an item has ended, its stage artifacts (several MB per photo) are garbage, whether
    it succeeded, failed or was canceled (the photos of people are personal data; a failed
    item's reason is in the database). A canceled item's late result goes too. Best effort: a
    leftover costs only space, and the job's retention removes it. A late duplicate of a stage
    that finds them gone retries and then stops at the terminal item."""
    try:
        drop_item_artifacts(resources().storage, job_id, item_id, result=result)
    except Exception as e:  # noqa: BLE001 - never fail a finished item over clean-up
        log.warning("could not remove the stage artifacts of item %s: %r", item_id, e)


def _tidy_ended(job_id: str | None, item_id: str) -> None:
    """After a stage found its item ended (canceled, failed): remove what is left of it."""
    try:
        with session_scope() as s:
            item = s.get(Item, item_id)
            status, job_id = (item.status, item.job_id) if item is not None else (None, job_id)
    except Exception:  # noqa: BLE001 - clean-up only
        return
    if status in (ItemState.CANCELED, ItemState.FAILED):
        _drop_artifacts(job_id, item_id, result=status == ItemState.CANCELED)


def _models_used(stage: str, ctx: StageContext) -> dict[str, str]:
    """The models this stage runs for the item, per role (none when face2paint is off for
    the face stages)."""
    if stage == "stylize":
        return {"stylize": ctx.pipe.choice("stylize").model_id,
                "stylize_background": ctx.pipe.choice("stylize_background").model_id}
    if stage in ("detect", "parse") and ctx.face2paint:
        return {stage: ctx.pipe.choice(stage).model_id}
    if stage == "finalize" and ctx.face2paint and ctx.pipe.features_in_place_applies(ctx.params):
        return {"detect": ctx.pipe.choice("detect").model_id}
    return {}


def _ack(g) -> None:
    """Acknowledge a gathered message. If the broker connection it came on was lost, it cannot
    be: Redis hands it out again after the visibility timeout, to a stage that finds its item
    moved on (or terminal) and does nothing."""
    try:
        g.message.ack()
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("could not acknowledge the gathered task of item %s (%r); it comes back "
                    "after the visibility timeout and finds its item done", g.item_id, e)


# Seconds the last run of each stage took in this process (merges_into's estimate).
_LAST_S: dict[str, float] = {}


def _carry(size, faces, settings) -> dict | None:
    """The next stage's message payload: the input's size and detect's faces, when their JSON
    fits in settings.message_artifact_max_bytes (else the next stage reads the database)."""
    carry = {}
    if size:
        carry["size"] = list(size)
    if faces is not None:
        if len(json.dumps(faces)) <= settings.message_artifact_max_bytes:
            carry["faces"] = faces
    return carry or None


def _fail(item_id: str, job_id: str | None, reason: str) -> None:
    with session_scope() as s:
        item = fail_item(s, item_id, reason)
        if item is not None:
            refresh_job(s, job_id or item.job_id)
            job_id = item.job_id
    if job_id:
        _drop_artifacts(job_id, item_id)


# --- stages: unpack, one pipeline call, pack -------------------------------------------------


def _load_input(ctx: StageContext):
    from ..models.image_io import ImageError, load_image

    settings = resources().settings
    data = ctx.storage.get_bytes(ctx.input_key)
    try:
        return load_image(data, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
    except ImageError as e:
        raise PermanentError(str(e)) from e


def _face_dict(face) -> dict:
    """Full precision: rounded landmarks would shift the alignment and change the output."""
    return {"box": [float(v) for v in face.box], "landmarks": np.asarray(face.landmarks).tolist(),
            "score": float(face.score)}


def _detect(ctx: StageContext):
    image = _load_input(ctx)
    faces = ctx.pipe.detect(image.rgb) if ctx.face2paint else []
    ctx.write(ARTIFACTS["detect"], artifacts.npy_bytes(image.rgb))
    ctx.memo["detect"] = image.rgb
    return {"faces": [_face_dict(f) for f in faces], "size": tuple(image.original_size)}


def _parse(ctx: StageContext):
    from ..models.types import Face

    rgb = ctx.artifact("detect")
    faces = [Face.from_dict(d) for d in (ctx.faces or [])]
    aligned = ctx.pipe.prepare(rgb, faces, ctx.params) if faces else []
    work = ctx.pipe.pack(aligned, ctx.params).arrays()
    ctx.write(ARTIFACTS["parse"], artifacts.npz_bytes(**work))
    ctx.memo["parse"] = work


def stylize_inputs(ctx: StageContext):
    """(image, faces) the stylize stage works on."""
    from ..models.face import FaceBatch

    # Two objects when stylize runs in a task of its own (a GPU worker), none when it follows
    # parse in the same task: the image is not written twice (object storage charges by the
    # byte written more than by the request).
    rgb = ctx.artifact("detect")
    work = ctx.artifact("parse")
    faces = FaceBatch.from_arrays(work) if ctx.face2paint else ctx.pipe.pack([], ctx.params)
    return rgb, faces


def stylize_outputs(ctx: StageContext, faces, crops, background, t_faces: float) -> dict:
    """Write (and keep) what finalize needs; the stage's outcome."""
    styled = {"background": background,
              "crops": np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8),
              "inverse": faces.inverse, "mask": faces.mask, "landmarks": faces.landmarks}
    ctx.write(ARTIFACTS["stylize"], artifacts.npz_bytes(**styled))
    ctx.memo["stylize"] = styled
    return {"timings": {"stylize_faces": round(t_faces, 4)}}


def _stylize(ctx: StageContext):
    rgb, faces = stylize_inputs(ctx)
    metrics.stylize_batch(ctx.pipe.choice("stylize").model_id, len(faces))
    t = time.perf_counter()
    crops = ctx.pipe.stylize_faces(faces, ctx.params)
    t_faces = time.perf_counter() - t
    background = ctx.pipe.stylize_background(rgb, ctx.params)
    return stylize_outputs(ctx, faces, crops, background, t_faces)


def _finalize(ctx: StageContext):
    from ..models.face import FaceBatch

    styled = ctx.artifact("stylize")
    background = styled["background"]
    n = len(styled["inverse"])
    # finalize pastes through the inverse transforms and masks; the refined crops stay behind.
    # The input's aligned landmarks (absent from an artifact written before them: no warp).
    faces = FaceBatch(np.zeros((n, 0, 0, 3), np.uint8), styled["inverse"], styled["mask"],
                      landmarks=styled.get("landmarks"))
    crops = list(styled["crops"]) if ctx.face2paint else []
    size = ctx.size or (background.shape[1], background.shape[0])
    out = ctx.pipe.finalize(background, faces, crops, size, ctx.params, ctx.face2paint)
    data, ext, mime = artifacts.result_bytes(out, ctx.options)
    key = result_key(ctx.job_id, ctx.item_id, ext)
    # Deterministic key: a finalize that runs again (its worker died after this write)
    # overwrites the same object, so an item never has two results.
    ctx.storage.put_bytes(key, data, mime)
    # run_stage marks the item succeeded when it closes this attempt (one transaction).
    return {"output_key": key, "face_count": n}


STAGE_BODIES = {"detect": _detect, "parse": _parse, "stylize": _stylize, "finalize": _finalize}


def _task(stage: str):
    return app.task(name=TASK_NAMES[stage], base=StageTask, bind=True, stage=stage)


@_task("detect")
def detect(self, item_id: str, outage: dict | None = None, carry: dict | None = None) -> None:
    self.run_stage(item_id, outage, carry)


@_task("parse")
def parse(self, item_id: str, outage: dict | None = None, carry: dict | None = None) -> None:
    self.run_stage(item_id, outage, carry)


@_task("stylize")
def stylize(self, item_id: str, outage: dict | None = None, carry: dict | None = None) -> None:
    self.run_stage(item_id, outage, carry)


@_task("finalize")
def finalize(self, item_id: str, outage: dict | None = None, carry: dict | None = None) -> None:
    self.run_stage(item_id, outage, carry)
