"""End-to-end throughput, per-item latency, job-system overhead and worker memory.

`python bench/e2e.py [--images 12] [--modes embedded,embedded-2,services-1,services-2] [--out bench/results]
[--name e2e]`

- embedded[-N]: SQLite, local storage, embedded Redis, one worker (what `face2paint run` starts)
  or N worker processes;
- services-N: real PostgreSQL, Redis and an S3 server (from the environment or started from
  pip packages, as the tests do) with N worker processes.

The work is 512² photos (scikit-image's astronaut) with the default models. The job system's
overhead is measured on single-image jobs run one after another, so no item waits behind
another: overhead = (item latency − the pipeline's own compute time in-process) / compute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

# The test servers live in tests/ (a development tool, not part of the package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workdir import astronaut_workdir  # noqa: E402 - after the path


class PipelineReference:
    """The pipeline's own compute in this process (warm, as in a long-lived worker), timed
    before the modes and again after them: the overhead is a small difference of two large
    times, so the reference is the median of both rounds (the rounds' medians are reported)."""

    def __init__(self, image_path: Path, style: str | None = None, repeat: int = 7):
        from face2paint.models.image_io import load_image
        from face2paint.models.pipeline import Face2Paint

        self.pipe = Face2Paint(style=style)
        self.image = load_image(image_path)
        self.repeat = repeat
        self.pipe.run(self.image)  # warm: interpreters built, caches filled
        self.rounds: list[tuple[list[float], list[float]]] = []

    def measure(self) -> tuple[float, float]:
        """One round; (wall, CPU of all threads) medians of this round."""
        times, cpu = [], []
        for _ in range(self.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            self.pipe.run(self.image)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        self.rounds.append((times, cpu))
        return statistics.median(times), statistics.median(cpu)

    def median(self) -> tuple[float, float]:
        return (statistics.median(t for r in self.rounds for t in r[0]),
                statistics.median(c for r in self.rounds for c in r[1]))


def cpu_seconds(pids) -> float:
    """CPU time (user + system, all threads) of these processes and their children so far."""
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


class MemorySampler:
    """Peak RSS of each worker's process tree (the Celery parent and its pool child)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peak: dict[str, int] = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    p = psutil.Process(pid)
                    procs = [p, *p.children(recursive=True)]
                    self.peak[name] = max(self.peak[name], max(q.memory_info().rss for q in procs))
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def item_rows(db_url: str, job_ids: list[str]) -> list[dict]:
    from sqlalchemy import select

    from face2paint.jobs.db import Item, StageAttempt, make_engine, session_factory

    engine = make_engine(db_url)
    rows = []
    with session_factory(engine)() as s:
        for it in s.scalars(select(Item).where(Item.job_id.in_(job_ids))):
            attempts = s.scalars(select(StageAttempt).where(StageAttempt.item_id == it.id)).all()
            in_stages = sum((a.finished_at - a.started_at).total_seconds() for a in attempts if a.finished_at)
            rows.append({
                "status": it.status,
                "latency_s": (it.finished_at - it.created_at).total_seconds(),
                "in_stages_s": in_stages,
                "timings": it.timings or {},
            })
    engine.dispose()
    return rows


def run_mode(stack, image: Path, n_batch: int, n_sequential: int, options: dict,
             poll_s: float = 0.05, follow: bool = True) -> dict:
    from face2paint.cli.client import Client
    from face2paint.jobs.states import ItemState

    client = Client(stack.api_url, stack.api_key)
    workers = {n: p.pid for n, p in stack.procs.items() if n.startswith("worker")}
    with MemorySampler(workers) as mem:
        # Warm-up: each worker loads its models once.
        for _ in range(len(workers)):
            client.wait(client.submit([image], options)["id"], interval_s=0.1)
        seq_jobs = []
        # CPU time of the workers (their pool processes included) and of the API per
        # single-photo job: less sensitive than latency to other work on a shared machine.
        # The API's is mostly this client's polling (every poll_s), so it grows with latency.
        # Latencies come from the database's timestamps, not from the polls: a slower poll
        # changes them only by the CPU it takes from the pipeline on a small machine.
        api = [stack.procs["api"].pid]
        cpu0 = (cpu_seconds(workers.values()), cpu_seconds(api))
        seen = []  # submit to the client's wait returning: what the user sees
        for _ in range(n_sequential):
            t0 = time.perf_counter()
            job = client.submit([image], options)
            client.wait(job["id"], interval_s=poll_s, follow=follow)
            seen.append(time.perf_counter() - t0)
            seq_jobs.append(job["id"])
        n = max(1, n_sequential)
        cpu_per_job = ((cpu_seconds(workers.values()) - cpu0[0]) / n, (cpu_seconds(api) - cpu0[1]) / n)
        t0 = time.perf_counter()
        job = client.submit([image] * n_batch, options)
        client.wait(job["id"], interval_s=0.1)
        wall = time.perf_counter() - t0
    client.close()
    db_url = stack.base_env["FACE2PAINT_DATABASE_URL"]
    seq = item_rows(db_url, seq_jobs)
    batch = item_rows(db_url, [job["id"]])
    assert all(r["status"] == ItemState.SUCCEEDED for r in seq + batch), "some items failed"
    return {
        "workers": len(workers),
        "wait": "follow" if follow else "poll",
        "poll_s": poll_s,
        "batch_images": n_batch,
        "batch_wall_s": round(wall, 3),
        "images_per_s": round(n_batch / wall, 3),
        "batch_latency_p50_s": round(statistics.median(r["latency_s"] for r in batch), 3),
        "batch_latency_max_s": round(max(r["latency_s"] for r in batch), 3),
        "single_latency_median_s": round(statistics.median(r["latency_s"] for r in seq), 3),
        "single_seen_by_client_median_s": round(statistics.median(seen), 3) if seen else None,
        "single_in_stages_median_s": round(statistics.median(r["in_stages_s"] for r in seq), 3),
        "single_worker_cpu_s": round(cpu_per_job[0], 3),
        "single_api_cpu_s": round(cpu_per_job[1], 3),
        "peak_rss_mb": {k: round(v / 2**20) for k, v in mem.peak.items()},
    }


@contextlib.contextmanager
def services_stack(workers: int, home: Path, env: dict[str, str] | None = None):
    from face2paint.cli.stack import ProcessStack
    from tests import servers as services

    with services.postgres_server() as pg, services.redis_server() as redis, services.s3_server() as s3:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(pg.url)
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS f2p_bench")
            c.execute("CREATE DATABASE f2p_bench")
        env = {"FACE2PAINT_DATABASE_URL": url.set(database="f2p_bench").render_as_string(hide_password=False),
               "FACE2PAINT_BROKER_URL": redis.url, **s3.env(prefix="bench"), **(env or {})}
        with ProcessStack(env, home, workers=workers) as stack:
            yield stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=12, help="images in the throughput batch")
    ap.add_argument("--sequential", type=int, default=5, help="single-image jobs for overhead")
    ap.add_argument("--modes", default="embedded,services-1,services-2")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="e2e", help="results file name (without .json)")
    ap.add_argument("--poll-s", type=float, default=0.05,
                    help="the client's status polling interval during the single-photo jobs "
                         "(with --wait poll, or when its event stream fails)")
    ap.add_argument("--wait", choices=("follow", "poll"), default="follow",
                    help="how the client waits for the single-photo jobs: following the job's "
                         "event stream (the Python client's default), or polling its status")
    ap.add_argument("--style", default=None,
                    help="a style id instead of the default preset; the weight-free "
                         "classical-cartoon makes the job system's own cost stand out of the noise")
    args = ap.parse_args()
    tmp, image = astronaut_workdir("f2p-bench-")
    reference = PipelineReference(image, style=args.style)
    before = reference.measure()
    options = {"style": args.style} if args.style else {}
    print(f"pipeline compute in-process (512², warm): {before[0]:.3f}s, CPU {before[1]:.3f}s", flush=True)
    results = {"style": args.style or "default",
               "load_average": [round(x, 2) for x in os.getloadavg()], "modes": {}}
    for mode in args.modes.split(","):
        home = tmp / mode
        if mode.startswith("embedded"):
            from face2paint.cli.stack import EmbeddedStack

            ctx = EmbeddedStack(home, workers=int(mode.split("-")[1]) if "-" in mode else 1)
        else:
            ctx = services_stack(int(mode.split("-")[1]), home)
        with ctx as stack:
            r = run_mode(stack, image, args.images, args.sequential, options, args.poll_s,
                         follow=args.wait == "follow")
        r["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        results["modes"][mode] = r
        print(mode, json.dumps(r), flush=True)
    after = reference.measure()
    compute, compute_cpu = reference.median()
    print(f"pipeline compute in-process after the modes: {after[0]:.3f}s, CPU {after[1]:.3f}s; "
          f"reference (median of both rounds) {compute:.3f}s", flush=True)
    results.update(pipeline_compute_s=round(compute, 3), pipeline_cpu_s=round(compute_cpu, 3),
                   pipeline_compute_rounds_s=[round(before[0], 3), round(after[0], 3)])
    for mode, r in results["modes"].items():
        r["overhead_ratio"] = round((r["single_latency_median_s"] - compute) / compute, 3)
        r["overhead_s"] = round(r["single_latency_median_s"] - compute, 3)
        # As the client sees it: its submit (the upload) and its wait's last hop included.
        r["overhead_seen_by_client_s"] = round(r["single_seen_by_client_median_s"] - compute, 3)
        # The job system's CPU per photo in the workers: their CPU per single-photo job minus
        # the pipeline's own (the same work in-process).
        r["overhead_worker_cpu_s"] = round(r["single_worker_cpu_s"] - compute_cpu, 3)
        print(f"{mode}: overhead {r['overhead_s'] * 1000:.0f} ms ({r['overhead_ratio']:+.1%}), "
              f"outside the stages {(r['single_latency_median_s'] - r['single_in_stages_median_s']) * 1000:.0f} ms",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
