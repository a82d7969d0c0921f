"""A burst of 500 small photos (five jobs of 100, submitted concurrently) through two worker
processes over real PostgreSQL, Redis and S3: nothing lost, nothing duplicated. Prints the
throughput and the latencies.
"""

from __future__ import annotations

import io
import json
import random
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageEnhance
from sqlalchemy import func, select

from face2paint.cli.stack import ProcessStack
from face2paint.jobs.db import Item, StageAttempt, make_engine, session_factory
from face2paint.jobs.states import STAGES
from tests.helpers import astronaut_path
from tests.service_stack import fresh_database, redis_db, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 5
PER_JOB = 100  # settings.max_files_per_job
TERMINAL = {"succeeded", "failed", "partially_succeeded", "canceled"}


def _variations(n: int, seed: int = 1234) -> list[bytes]:
    """n distinct small JPEGs (64 to 128 px a side) cut from the astronaut."""
    rng = random.Random(seed)
    base = Image.open(astronaut_path()).convert("RGB")
    out = []
    for i in range(n):
        side = rng.randint(256, 512)
        x, y = rng.randint(0, 512 - side), rng.randint(0, 512 - side)
        im = base.crop((x, y, x + side, y + side))
        im = im.resize((rng.randint(64, 128), rng.randint(64, 128)), Image.BILINEAR)
        if i % 3 == 1:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.randint(70, 95))
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3, tmp_path_factory):
    env = {
        "FACE2PAINT_DATABASE_URL": fresh_database(pg_url),
        "FACE2PAINT_BROKER_URL": redis_db(redis_url),
        **s3.env(prefix=f"t-{uuid.uuid4().hex[:8]}"),
    }
    with running(ProcessStack(env, tmp_path_factory.mktemp("load"), workers=2)) as st:
        yield st


def test_burst_of_500_items_loses_and_duplicates_nothing(stack, s3):
    images = _variations(JOBS * PER_JOB)
    assert len(set(images)) == len(images)
    headers = {"Authorization": f"Bearer {stack.api_key}"}

    def submit(j: int) -> dict:
        files = [("files", (f"j{j}-{i:03d}.jpg", images[j * PER_JOB + i], "image/jpeg")) for i in range(PER_JOB)]
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=300) as http:
            r = http.post("/v1/jobs", files=files, data={"options": json.dumps({"style": "classical-cartoon"})})
        assert r.status_code == 202, r.text
        return r.json()

    t0 = time.monotonic()
    with ThreadPoolExecutor(JOBS) as pool:
        jobs = list(pool.map(submit, range(JOBS)))
    submitted_s = time.monotonic() - t0
    job_ids = {j["id"] for j in jobs}
    assert len(job_ids) == JOBS

    http = httpx.Client(base_url=stack.api_url, headers=headers, timeout=60)
    pending, deadline = set(job_ids), time.monotonic() + 420
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        for j in http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]:
            if j["id"] in pending and j["status"] in TERMINAL:
                pending.discard(j["id"])
    wall_s = time.monotonic() - t0
    final = {j: http.get(f"/v1/jobs/{j}").json() for j in job_ids}
    http.close()
    assert not pending, f"not finished after {wall_s:.0f} s: {[final[j]['progress'] for j in pending]}"

    engine = make_engine(stack.base_env["FACE2PAINT_DATABASE_URL"])
    try:
        with session_factory(engine)() as s:
            items = s.execute(
                select(Item.id, Item.status, Item.created_at, Item.finished_at, Item.output_key, Item.error)
                .where(Item.job_id.in_(job_ids))
            ).all()
            attempts = s.execute(
                select(StageAttempt.item_id, StageAttempt.stage, StageAttempt.outcome, func.count())
                .join(Item, Item.id == StageAttempt.item_id)
                .where(Item.job_id.in_(job_ids))
                .group_by(StageAttempt.item_id, StageAttempt.stage, StageAttempt.outcome)
            ).all()
            workers = s.scalars(
                select(StageAttempt.worker).join(Item, Item.id == StageAttempt.item_id)
                .where(Item.job_id.in_(job_ids)).distinct()
            ).all()
    finally:
        engine.dispose()

    n = JOBS * PER_JOB
    # Nothing lost: every item exists, is terminal and succeeded.
    assert len(items) == n
    not_ok = [(i.id, i.status, i.error) for i in items if i.status != "succeeded"]
    assert not not_ok, not_ok[:5]
    assert all(f["status"] == "succeeded" and f["succeeded"] == PER_JOB for f in final.values())

    # Nothing duplicated: one succeeded attempt per stage per item, one result object per item.
    succeeded_attempts = {}
    extra_attempts = 0
    for item_id, stage, outcome, count in attempts:
        if outcome == "succeeded":
            succeeded_attempts[(item_id, stage)] = count
        else:
            extra_attempts += count
    finalize = [succeeded_attempts.get((i.id, "finalize"), 0) for i in items]
    duplicated = sum(1 for c in finalize if c > 1)
    lost = sum(1 for c in finalize if c == 0)
    assert duplicated == 0 and lost == 0, (duplicated, lost)
    for stage in STAGES:
        assert all(succeeded_attempts.get((i.id, stage), 0) == 1 for i in items), stage
    prefix = stack.base_env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3]
    results = [k for k in s3.storage(prefix).list("jobs/") if k.endswith("/result.png")]
    result_items = [k.split("/")[3] for k in results]
    assert len(results) == n and set(result_items) == {i.id for i in items}
    assert {i.output_key.split("/")[3] for i in items} == set(result_items)
    assert len(workers) == 2, workers  # both worker processes took work

    latencies = sorted((i.finished_at - i.created_at).total_seconds() for i in items)
    first_created = min(i.created_at for i in items)
    last_finished = max(i.finished_at for i in items)
    busy_s = (last_finished - first_created).total_seconds()
    print(
        f"\nload: {n} items in {JOBS} jobs over 2 worker processes; submitted in {submitted_s:.1f} s; "
        f"all done {wall_s:.1f} s after the first request\n"
        f"  throughput {n / busy_s:.2f} items/s (first item created -> last item finished: {busy_s:.1f} s)\n"
        f"  latency (finished_at - created_at): median {statistics.median(latencies):.1f} s, "
        f"p95 {latencies[int(0.95 * (n - 1))]:.1f} s, slowest {latencies[-1]:.1f} s\n"
        f"  lost 0, duplicated 0 (one succeeded finalize attempt and one result object per item); "
        f"non-succeeded stage attempts (retries): {extra_attempts}"
    )
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} exited"
        assert "Traceback" not in stack.log(name), f"{name} log has a traceback"
