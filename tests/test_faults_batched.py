"""The key faults of tests/test_faults.py with GPU batching on (worker/batching.py): stylize
workers gather the photos waiting in their queue into one batch. The same audit holds (every
item reaches exactly one terminal state, one result, nothing lost, duplicated or stuck), and a
photo retried after its batch died runs alone, so a poison input costs its batch-mates one
attempt at most. Gathered messages of a killed batch come back after the broker's visibility
timeout (3 x the stage timeout), like those of a whole worker killed.

Not repeated here: "Redis connections dropped while a stage runs". Its point is two copies of
one stage running at once; a gathered message is held on the stylize process's own broker
connection, which no consumer restores, so it gets no second copy, and the test's timing (the
paused stage owns its task's time limit) does not hold for a photo that shares a batch's limit.
The task's own message in a batch behaves as without batching, which tests/test_faults.py
checks."""

from __future__ import annotations

import contextlib
import re

import pytest

from tests import test_faults as base
from tests.test_faults import (  # noqa: F401 - fixtures and tests collected here, batched
    after_each,
    client,
    db,
    storage,
    test_pool_process_killed_mid_stage,
    test_poison_input_stops_at_the_attempt_cap,
    test_s3_unreachable_for_a_while,
    test_whole_worker_killed_mid_stage,
)

pytestmark = base.pytestmark


@pytest.fixture(scope="module")
def stack(pg_server, redis_server, s3_server, tmp_path_factory):
    yield from base.fault_stack(pg_server, redis_server, s3_server, tmp_path_factory, base.BATCHING)


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    start = len(base.SUMMARY)
    yield
    rows = base.SUMMARY[start:]
    if rows:
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print("\n".join(["", "fault-injection figures, stylize batching on (lost, duplicated "
                             "and stuck must be 0):", base.Figures.header()]
                            + [f.row() for f in rows]), flush=True)


def test_stylize_ran_in_batches(stack):
    """Last: the faults above met real batches (more than one photo per stylize batch)."""
    sizes = [int(n) for i in range(stack.n_workers)
             for n in re.findall(r"stylize batch of (\d+) photo", stack.log(f"worker{i}"))]
    assert sizes and max(sizes) >= 2, sizes
