"""Job and item state machines, as data, with the states as enum types.

Items move forward through the stages one at a time; a stage may run again (a retry, or the
sweeper re-enqueueing an item whose worker died), and any pending item may fail or be canceled.
Terminal states never change. The job's status is derived from its items' counts
(`job_status_from_counts`), never set by hand, so it cannot disagree with them.

The enums are `StrEnum`s: each member is its string value, so it compares equal to it, goes
into JSON and the database as it, and comes back from the database as the member (db.py).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    CANCELED = "canceled"


class ItemState(StrEnum):
    QUEUED = "queued"
    DETECTING = "detecting"
    PARSING = "parsing"
    STYLIZING = "stylizing"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Stage(StrEnum):
    """The stages in order; each is also the name of the Celery queue it runs on."""

    DETECT = "detect"
    PARSE = "parse"
    STYLIZE = "stylize"
    FINALIZE = "finalize"


class Outcome(StrEnum):
    """How one stage attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"
    CANCELED = "canceled"
    # Interrupted by a database, storage or broker outage: given back (does not count against
    # max_attempts), since the input is not at fault.
    OUTAGE = "outage"
    # A second delivery of the same stage ran at the same time; see stages.finish_stage().
    DUPLICATE = "duplicate"


TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.PARTIALLY_SUCCEEDED, JobState.CANCELED}
)
TERMINAL_ITEM_STATES = frozenset({ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELED})
PENDING_ITEM_STATES = frozenset(s for s in ItemState if s not in TERMINAL_ITEM_STATES)

STAGES = tuple(Stage)
# The item state each stage sets while it runs.
STAGE_STATE = {
    Stage.DETECT: ItemState.DETECTING,
    Stage.PARSE: ItemState.PARSING,
    Stage.STYLIZE: ItemState.STYLIZING,
    Stage.FINALIZE: ItemState.FINALIZING,
}
STATE_STAGE = {state: stage for stage, state in STAGE_STATE.items()}

_ENDINGS = {ItemState.FAILED, ItemState.CANCELED}

ITEM_TRANSITIONS: dict[ItemState, frozenset[ItemState]] = {
    # A stage state may repeat itself: the same stage attempted again.
    ItemState.QUEUED: frozenset({ItemState.DETECTING} | _ENDINGS),
    ItemState.DETECTING: frozenset({ItemState.DETECTING, ItemState.PARSING} | _ENDINGS),
    ItemState.PARSING: frozenset({ItemState.PARSING, ItemState.STYLIZING} | _ENDINGS),
    ItemState.STYLIZING: frozenset({ItemState.STYLIZING, ItemState.FINALIZING} | _ENDINGS),
    ItemState.FINALIZING: frozenset({ItemState.FINALIZING, ItemState.SUCCEEDED} | _ENDINGS),
    ItemState.SUCCEEDED: frozenset(),
    ItemState.FAILED: frozenset(),
    ItemState.CANCELED: frozenset(),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING} | TERMINAL_JOB_STATES),
    JobState.RUNNING: frozenset(TERMINAL_JOB_STATES),
    **{s: frozenset() for s in TERMINAL_JOB_STATES},
}


class InvalidTransition(ValueError):
    """A state change the state machine does not allow (a bug in the caller, or a stale task)."""

    def __init__(self, kind: str, old: str, new: str):
        table = ITEM_TRANSITIONS if kind == "item" else JOB_TRANSITIONS
        allowed = sorted(table.get(old, ()))  # type: ignore[call-overload]
        hint = f"allowed from {old!r}: {', '.join(allowed)}" if allowed else f"{old!r} is final"
        super().__init__(f"{kind} cannot go from {old!r} to {new!r} ({hint})")
        self.kind, self.old, self.new = kind, old, new


def _member(enum: type[StrEnum], value: str, kind: str):
    try:
        return enum(value)
    except ValueError:
        raise ValueError(
            f"unknown {kind} {value!r}; expected one of {', '.join(enum)}"
        ) from None


def check_item_transition(old: str, new: str) -> None:
    old_state = _member(ItemState, old, "item state")
    if new not in ITEM_TRANSITIONS[old_state]:
        raise InvalidTransition("item", str(old), str(new))


def check_job_transition(old: str, new: str) -> None:
    if old == new:
        return
    old_state = _member(JobState, old, "job state")
    if new not in JOB_TRANSITIONS[old_state]:
        raise InvalidTransition("job", str(old), str(new))


def as_stage(stage: str) -> Stage:
    """The Stage named `stage`; an unknown name is a programming error and raises ValueError."""
    return _member(Stage, stage, "stage")


def stage_index(stage: str) -> int:
    return STAGES.index(as_stage(stage))


def next_stage(stage: str) -> Stage | None:
    i = stage_index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def job_status_from_counts(
    total: int, succeeded: int, failed: int, canceled: int, *, started: bool = True
) -> JobState:
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
        return JobState.RUNNING if started else JobState.QUEUED
    if canceled:
        return JobState.CANCELED
    if failed == 0:
        return JobState.SUCCEEDED
    if succeeded == 0:
        return JobState.FAILED
    return JobState.PARTIALLY_SUCCEEDED
