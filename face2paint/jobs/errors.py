"""The domain's errors, each with a message that says what to do next, and the one rule for how
long a stored error text may be. The API maps each to its HTTP status (api/errors.py)."""

from __future__ import annotations

MAX_ERROR_CHARS = 4000


def clip(text: str | None) -> str | None:
    """An error text as stored: at most MAX_ERROR_CHARS characters."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class JobRejected(ValueError):
    """The request cannot become a job (no files, too many files, bad idempotency key)."""


class IdempotencyConflict(ValueError):
    """The idempotency key was already used by this owner for a different request."""

    def __init__(self, key: str, job_id: str):
        super().__init__(
            f"idempotency key {key!r} was already used for a different request (job {job_id}); "
            "use a new key for a new upload, or resend exactly the same files and options"
        )
        self.key, self.job_id = key, job_id


class InvalidCursor(ValueError):
    def __init__(self) -> None:
        super().__init__(
            "invalid cursor; pass the next_cursor of a previous page, or no cursor to start "
            "from the newest job"
        )


class NotFound(LookupError):
    """No such job or item for this owner (another owner's look the same: ids reveal nothing)."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobNotFound(NotFound):
    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id} for this API key")
        self.job_id = job_id


class ItemNotFound(NotFound):
    def __init__(self, job_id: str, item_id: str):
        super().__init__(f"no item {item_id} in job {job_id}")
        self.job_id, self.item_id = job_id, item_id


class NoResultYet(Exception):
    """The item exists but has no result: it is still running, or it failed or was canceled."""

    def __init__(self, item_id: str, status: str):
        super().__init__(f"item {item_id} has no result yet (status {status})")
        self.item_id, self.status = item_id, status


class ResultGone(Exception):
    """The item ended without a result (failed or canceled): there never will be one."""

    def __init__(self, item_id: str, status: str, reason: str | None):
        why = f": {reason}" if reason else ""
        super().__init__(f"item {item_id} has no result: it {status}{why}")
        self.item_id, self.status, self.reason = item_id, status, reason


class JobExpired(Exception):
    """The job's inputs and results were deleted after the retention period."""

    def __init__(self, job_id: str, retention_days: float | None = None):
        after = f" after {retention_days:g} days" if retention_days is not None else ""
        super().__init__(f"the photos and results of job {job_id} expired{after} and were "
                         "deleted (FACE2PAINT_RETENTION_DAYS); submit the photos again")
        self.job_id, self.retention_days = job_id, retention_days
