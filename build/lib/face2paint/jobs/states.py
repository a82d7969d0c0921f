"""Job and item state machines, as data.

Items move forward through the stages one at a time; a stage may run again (a retry, or the
sweeper re-enqueueing an item whose worker died), and any pending item may fail or be canceled.
Terminal states never change. The job's status is derived from its items' counts
(`job_status_from_counts`), never set by hand, so it cannot disagree with them.
"""

from __future__ import annotations

# Job states
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_PARTIALLY_SUCCEEDED = "partially_succeeded"
JOB_CANCELED = "canceled"

JOB_STATES = (
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_PARTIALLY_SUCCEEDED,
    JOB_CANCELED,
)
TERMINAL_JOB_STATES = frozenset(
    {JOB_SUCCEEDED, JOB_FAILED, JOB_PARTIALLY_SUCCEEDED, JOB_CANCELED}
)

# Item states
QUEUED = "queued"
DETECTING = "detecting"
PARSING = "parsing"
STYLIZING = "stylizing"
FINALIZING = "finalizing"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELED = "canceled"

ITEM_STATES = (QUEUED, DETECTING, PARSING, STYLIZING, FINALIZING, SUCCEEDED, FAILED, CANCELED)
TERMINAL_ITEM_STATES = frozenset({SUCCEEDED, FAILED, CANCELED})
PENDING_ITEM_STATES = frozenset(s for s in ITEM_STATES if s not in TERMINAL_ITEM_STATES)

# Stages in order, each with the item state it sets while it runs. Each is also the name of
# the Celery queue the stage runs on.
STAGES = ("detect", "parse", "stylize", "finalize")
STAGE_STATE = {
    "detect": DETECTING,
    "parse": PARSING,
    "stylize": STYLIZING,
    "finalize": FINALIZING,
}
STATE_STAGE = {state: stage for stage, state in STAGE_STATE.items()}

_ENDINGS = {FAILED, CANCELED}

ITEM_TRANSITIONS: dict[str, frozenset[str]] = {
    # A stage state may repeat itself: the same stage attempted again.
    QUEUED: frozenset({DETECTING} | _ENDINGS),
    DETECTING: frozenset({DETECTING, PARSING} | _ENDINGS),
    PARSING: frozenset({PARSING, STYLIZING} | _ENDINGS),
    STYLIZING: frozenset({STYLIZING, FINALIZING} | _ENDINGS),
    FINALIZING: frozenset({FINALIZING, SUCCEEDED} | _ENDINGS),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
}

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    JOB_QUEUED: frozenset({JOB_RUNNING} | TERMINAL_JOB_STATES),
    JOB_RUNNING: frozenset(TERMINAL_JOB_STATES),
    JOB_SUCCEEDED: frozenset(),
    JOB_FAILED: frozenset(),
    JOB_PARTIALLY_SUCCEEDED: frozenset(),
    JOB_CANCELED: frozenset(),
}


class InvalidTransition(ValueError):
    """A state change the state machine does not allow (a bug in the caller, or a stale task)."""

    def __init__(self, kind: str, old: str, new: str):
        allowed = sorted((ITEM_TRANSITIONS if kind == "item" else JOB_TRANSITIONS).get(old, ()))
        hint = f"allowed from {old!r}: {', '.join(allowed)}" if allowed else f"{old!r} is final"
        super().__init__(f"{kind} cannot go from {old!r} to {new!r} ({hint})")
        self.kind, self.old, self.new = kind, old, new


def check_item_transition(old: str, new: str) -> None:
    if old not in ITEM_TRANSITIONS:
        raise ValueError(f"unknown item state {old!r}; expected one of {', '.join(ITEM_STATES)}")
    if new not in ITEM_TRANSITIONS[old]:
        raise InvalidTransition("item", old, new)


def check_job_transition(old: str, new: str) -> None:
    if old == new:
        return
    if old not in JOB_TRANSITIONS:
        raise ValueError(f"unknown job state {old!r}; expected one of {', '.join(JOB_STATES)}")
    if new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition("job", old, new)


def stage_index(stage: str) -> int:
    try:
        return STAGES.index(stage)
    except ValueError:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}") from None


def next_stage(stage: str) -> str | None:
    i = stage_index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def job_status_from_counts(
    total: int, succeeded: int, failed: int, canceled: int, *, started: bool = True
) -> str:
    """The job status its items' counts imply.

    While any item is pending the job is running (or still queued if no item has started).
    Once every item is terminal: any cancellation makes the job canceled (the user asked to
    stop it, even if some items had finished), otherwise all succeeded → succeeded, all failed →
    failed, a mix → partially_succeeded.
    """
    if min(total, succeeded, failed, canceled) < 0 or succeeded + failed + canceled > total:
        raise ValueError(
            f"inconsistent counts: total={total} succeeded={succeeded} failed={failed} "
            f"canceled={canceled}"
        )
    if succeeded + failed + canceled < total:
        return JOB_RUNNING if started else JOB_QUEUED
    if canceled:
        return JOB_CANCELED
    if failed == 0:
        return JOB_SUCCEEDED
    if succeeded == 0:
        return JOB_FAILED
    return JOB_PARTIALLY_SUCCEEDED
