"""Soak: a long run of many jobs from several owners against the distributed stack, to show
that the load is held: throughput, item latency, API latency while the workers are busy,
worker memory over the run (no leak), and zero lost or duplicated items.

`python bench/soak.py [--photos 2000] [--jobs 20] [--owners 4] [--workers 2] [--out bench/results]`

Starts real PostgreSQL, Redis and an S3 server (from the environment or pip packages, as the
tests do), the API and `--workers` worker processes (one pool process each, all queues). The
work is scikit-image's 512² astronaut with the weight-free `classical-cartoon` style (detection
and parsing use the real models from FACE2PAINT_MODEL_DIR). After a warm-up job per worker
(models loaded, caches filled), the `--jobs` jobs are submitted round-robin from `--owners`
owners; while they run, each owner polls its jobs' status and lists its jobs, as a client
would, and those requests' latencies are the API figures. Writes soak.json:

- throughput (images/s) from the first submit to the last item finished;
- item latency p50/p99 (upload to result, so it includes the wait behind the backlog);
- API latency p50/p99/max of the polling requests during the run;
- per worker: the RSS of its process tree after warm-up and after the soak, and the growth
  (the no-leak rule: after the soak within 10% of after warm-up);
- lost (not terminal, or succeeded without its result object), duplicated (two results, or two
  completed finalize attempts) and failed items: all must be 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workdir import astronaut_workdir  # noqa: E402 - after the path

STYLE = {"style": "classical-cartoon"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def tree_rss(pid: int) -> int:
    """RSS of a worker: its Celery parent and its pool process(es)."""
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])


class Poller:
    """Each owner's client polling its jobs (status, and the job list now and then) as long as
    the soak runs; records every request's latency."""

    def __init__(self, api_url: str, keys: list[str], interval_s: float = 0.5):
        self.api_url, self.keys, self.interval_s = api_url, keys, interval_s
        self.jobs: dict[str, list[str]] = {k: [] for k in keys}
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in keys]

    def _run(self, key: str) -> None:
        with httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as http:
            n = 0
            while not self._stop.is_set():
                paths = [f"/v1/jobs/{j}" for j in list(self.jobs[key])]
                if n % 5 == 0:
                    paths.append("/v1/jobs?limit=20")
                for path in paths:
                    t0 = time.perf_counter()
                    r = http.get(path)
                    self.latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        self.errors.append(f"{path}: {r.status_code}")
                n += 1
                self._stop.wait(self.interval_s)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()


def audit(db_url: str, storage, job_ids: list[str]) -> dict:
    from sqlalchemy import select

    from face2paint.jobs.db import Item, StageAttempt, make_engine, session_factory
    from face2paint.jobs.keys import job_prefix

    engine = make_engine(db_url)
    counts = {"items": 0, "succeeded": 0, "failed": 0, "lost": 0, "duplicated": 0}
    latencies = []
    try:
        with session_factory(engine)() as s:
            for job_id in job_ids:
                items = list(s.scalars(select(Item).where(Item.job_id == job_id)))
                finals = {}
                for a in s.scalars(select(StageAttempt).join(Item).where(
                        Item.job_id == job_id, StageAttempt.stage == "finalize",
                        StageAttempt.outcome == "succeeded")):
                    finals[a.item_id] = finals.get(a.item_id, 0) + 1
                results = [k for k in storage.list(job_prefix(job_id)) if k.endswith("/result.png")]
                per_item = {}
                for k in results:
                    per_item[k.split("/")[3]] = per_item.get(k.split("/")[3], 0) + 1
                for it in items:
                    counts["items"] += 1
                    if it.status == "succeeded":
                        counts["succeeded"] += 1
                        latencies.append((it.finished_at - it.created_at).total_seconds())
                        if per_item.get(it.id, 0) == 0:
                            counts["lost"] += 1
                    elif it.status == "failed":
                        counts["failed"] += 1
                    else:
                        counts["lost"] += 1
                    if per_item.get(it.id, 0) > 1 or finals.get(it.id, 0) > 1:
                        counts["duplicated"] += 1
            first = min(j.created_at for j in s.scalars(select(Item).where(Item.job_id.in_(job_ids))))
            last = max(i.finished_at for i in s.scalars(select(Item).where(Item.job_id.in_(job_ids)))
                       if i.finished_at)
    finally:
        engine.dispose()
    return {**counts, "wall_s": (last - first).total_seconds(), "latencies": latencies}


def soak(stack, s3_storage, image: Path, photos: int, jobs: int, owners: int) -> dict:
    from face2paint.cli.client import Client
    from face2paint.jobs.api_keys import create_api_key
    from face2paint.jobs.db import make_engine, session_factory, session_scope

    db_url = stack.base_env["FACE2PAINT_DATABASE_URL"]
    engine = make_engine(db_url)
    with session_scope(session_factory(engine)) as s:
        keys = [create_api_key(s, f"soak-owner-{i}") for i in range(owners)]
    engine.dispose()
    workers = {n: p.pid for n, p in stack.procs.items() if n.startswith("worker")}
    clients = [Client(stack.api_url, k) for k in keys]
    try:
        # Warm-up: enough items that every worker has loaded its models and run a few.
        warm = clients[0].submit([image] * (4 * len(workers)), STYLE)
        clients[0].wait(warm["id"], interval_s=0.5, timeout_s=1800)
        rss_warm = {n: tree_rss(pid) for n, pid in workers.items()}
        sizes = [photos // jobs + (1 if i < photos % jobs else 0) for i in range(jobs)]
        job_ids: list[str] = []
        t0 = time.monotonic()
        with Poller(stack.api_url, keys) as poller:
            for i, n in enumerate(sizes):
                c = clients[i % owners]
                job = c.submit([image] * n, STYLE)
                job_ids.append(job["id"])
                poller.jobs[keys[i % owners]].append(job["id"])
            for i, job_id in enumerate(job_ids):
                clients[i % owners].wait(job_id, interval_s=2, timeout_s=24 * 3600)
        elapsed = time.monotonic() - t0
        rss_after = {n: tree_rss(pid) for n, pid in workers.items()}
    finally:
        for c in clients:
            c.close()
    a = audit(db_url, s3_storage, job_ids)
    lat = a.pop("latencies")
    return {
        "photos": photos, "jobs": jobs, "owners": owners, "workers": len(workers),
        "style": STYLE["style"], "image": "512x512 astronaut",
        "run_s": round(elapsed, 1), "throughput_images_per_s": round(a["succeeded"] / a["wall_s"], 3),
        "item_latency_p50_s": round(statistics.median(lat), 2) if lat else None,
        "item_latency_p99_s": round(_pct(lat, 0.99), 2) if lat else None,
        "api_requests": len(poller.latencies),
        "api_latency_p50_ms": round(statistics.median(poller.latencies) * 1000, 1),
        "api_latency_p99_ms": round(_pct(poller.latencies, 0.99) * 1000, 1),
        "api_latency_max_ms": round(max(poller.latencies) * 1000, 1),
        "api_errors": poller.errors[:20],
        "rss_mb_after_warmup": {n: round(v / 2**20) for n, v in rss_warm.items()},
        "rss_mb_after_soak": {n: round(v / 2**20) for n, v in rss_after.items()},
        "rss_growth_pct": {n: round(100 * (rss_after[n] - rss_warm[n]) / rss_warm[n], 1) for n in workers},
        **{k: a[k] for k in ("items", "succeeded", "failed", "lost", "duplicated")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--owners", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    tmp, image = astronaut_workdir("f2p-soak-")
    from face2paint.cli.stack import ProcessStack
    from tests import servers as services
    from tests.service_stack import stack_env

    with services.postgres_server() as pg, services.redis_server() as redis, services.s3_server() as s3:
        # Limits for the bench itself: many items per job, polling clients not rate limited.
        env = stack_env(pg.url, redis.url, s3, FACE2PAINT_MAX_FILES_PER_JOB=max(100, args.photos),
                        FACE2PAINT_RATE_LIMIT_PER_MINUTE=0)
        with ProcessStack(env, tmp / "home", workers=args.workers) as stack:
            storage = s3.storage(env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3])
            r = soak(stack, storage, image, args.photos, args.jobs, args.owners)
    print(json.dumps(r, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(r, indent=2))
    print(f"wrote {args.out / 'soak.json'}")


if __name__ == "__main__":
    main()
