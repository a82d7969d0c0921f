"""GPU batching: a stylize task takes the other stylize tasks waiting in its queue and runs
their generator passes together (models/batch.py), bounded by Settings.stylize_batch_max
(default 1 on CPU: off; 16 on CUDA) and a short wait, stylize_batch_wait_ms.

Why an in-process gatherer and not the `celery-batches` package: celery-batches buffers
messages in the worker's consumer, which needs an unbounded prefetch (worker_prefetch_multiplier
0) on every queue of that worker, so one GPU worker would reserve the whole backlog that its
peers could run, and its batch task receives plain requests that cannot `retry()` one by one.
Here prefetch stays 1 (a worker takes only what is already waiting, when it is free), and each
gathered message goes through the same frame as a task of its own (worker/tasks.py): its own
attempt, its own retry (a new message, as Celery's retry sends), its own failure, acknowledged
only after its stage is committed (acks_late).

The messages are taken with a plain `basic_get` on the task's broker connection, without
acknowledgement: they stay in Redis's unacknowledged set until each is done. If the process
dies mid-batch, the message the worker gave it is redelivered at once (reject_on_worker_lost)
and the gathered ones after the visibility timeout, the same bound as for a whole worker
killed mid-stage (README, "Reliability"); each resumes at the stage its item is in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger("face2paint.worker")


@dataclass
class Gathered:
    message: object  # a kombu Message, unacknowledged
    item_id: str
    kwargs: dict
    headers: dict


def _due(headers: dict) -> bool:
    eta = headers.get("eta")
    if not eta:
        return True
    try:
        when = datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when <= datetime.now(timezone.utc)


def gather(channel, queue: str, task_name: str, most: int, wait_s: float) -> list[Gathered]:
    """Up to `most` messages of `task_name` waiting in `queue`, within `wait_s`. A message
    that is not one of them (another task, a retry whose countdown has not passed) goes back
    to the queue and ends the gathering."""
    out: list[Gathered] = []
    deadline = time.monotonic() + wait_s
    while len(out) < most:
        message = channel.basic_get(queue, no_ack=False)
        if message is None:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
            continue
        headers = dict(message.headers or {})
        try:
            args, kwargs, _ = message.decode()
            item_id = args[0]
        except Exception:  # noqa: BLE001 - not a stage message of ours
            args, kwargs, item_id = None, None, None
        if headers.get("task") != task_name or not isinstance(item_id, str) or not _due(headers):
            message.reject(requeue=True)
            break
        out.append(Gathered(message, item_id, dict(kwargs or {}), headers))
    return out
