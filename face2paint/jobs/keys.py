"""Deterministic object keys for a job's inputs, stage artifacts and results.

Keys are built only from ids the service generated and fixed names, never from user-supplied
file names, so a stage that runs twice overwrites its own output and nothing else.
"""

from __future__ import annotations

import re

from .states import STAGES

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EXT = re.compile(r"^[a-z0-9]{1,10}$")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def _check(value: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"invalid {what} for an object key: {value!r}")
    return value


def item_prefix(job_id: str, item_id: str) -> str:
    return f"{job_prefix(job_id)}items/{_check(item_id, _ID, 'item id')}/"


def job_prefix(job_id: str) -> str:
    return f"jobs/{_check(job_id, _ID, 'job id')}/"


def input_key(job_id: str, item_id: str, ext: str) -> str:
    return f"{item_prefix(job_id, item_id)}input.{_check(ext, _EXT, 'extension')}"


def artifact_key(job_id: str, item_id: str, stage: str, name: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return f"{item_prefix(job_id, item_id)}{stage}/{_check(name, _NAME, 'artifact name')}"


def result_key(job_id: str, item_id: str, ext: str = "png") -> str:
    """The item's one result; its extension follows the job's output format."""
    return f"{item_prefix(job_id, item_id)}result.{_check(ext, _EXT, 'extension')}"
