"""Capacity model of the job system: a discrete-event simulation of the real stage chain.

    python bench/capacity.py simulate --photos-per-hour 10000 --cpu-workers 4 --gpu-workers 12
    python bench/capacity.py size --photos-per-hour 10000 --target-p95-s 60
    python bench/capacity.py check --images 12 --workers 1,2 --out bench/results

What is simulated (docs/SCALING.md has the assumptions and their sources):

- each photo runs detect -> parse -> stylize -> finalize, each stage on its own queue (a FIFO
  list); a stage's task is published when the stage before ends, unless the worker that ran it
  also consumes the next stage's queue: then it runs that stage in the same task (merged
  stages, as worker/tasks.py does), never into stylize when stylize batches;
- a worker process runs one task at a time (prefetch multiplier 1 with late acks: the task it
  runs is its one unacknowledged message; `--prefetch N` lets it reserve N more, which then
  wait behind it), and takes from its queues like kombu's Redis transport: the first non-empty
  queue in its rotating order, and the queue it took from moves to the back;
- a task holds its worker for a hand-off (ack, dispatch to the pool process, the attempt's
  database bookkeeping and storage round trips) and then for its compute, which uses up to
  `threads` cores; tasks on one host share its cores (processor sharing), so two workers on
  two cores do not run twice as fast;
- CPU workers take detect, parse and finalize; GPU workers take stylize.

Service times come from the measured figures: `simulate` and `size` build them from
bench/results/stages.json (per-model latency by image size; a CUDA stylize row when one
exists, else `--gpu-speedup` or the CPU figure) and bench/results/e2e.json (the job system's
overhead per item); `check` measures them on the real stack (PostgreSQL, Redis, S3, worker
processes, as bench/e2e.py runs them), from the worker's metrics endpoint, then compares the
simulated and measured throughput of a batch with 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from face2paint.models.presets import get_preset
from face2paint.models.types import Params
from face2paint.settings import Settings

STAGES = ("detect", "parse", "stylize", "finalize")
CPU_QUEUES = ("detect", "parse", "finalize")
GPU_QUEUES = ("stylize",)
RESULTS = Path(__file__).resolve().parent / "results"
MAX_SIDE = Settings.model_fields["max_side"].default  # photos are capped before any model runs
BACKGROUND_MAX_SIDE = Params().background_max_side
DEFAULT_PRESET = get_preset("anime")  # the default style where its weights are present
# Parsing, refinement and keep per processed face with the anime preset (JP_face framing at
# 512 px): the parse stage's run time in the capacity check's calibration (capacity.json).
PARSE_PER_FACE_S = 0.44
# Paste-back, post-processing and the result PNG: per face (the check's calibration: 0.14 s
# for a 512² photo with one face) and per megapixel of output (docs/BENCHMARKS.md: PNG
# encoding alone is 25-35 ms per 512² image).
FINALIZE_PER_FACE_S = 0.10
FINALIZE_PER_MPIX_S = 0.15


# --- the service-time model ------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    width: int
    height: int
    faces: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Cost:
    """What one stage task costs its worker: first `hold_s` (hand-off, database, storage),
    during which other processes on the host (the servers, the API) use `hold_cpu_s`
    core-seconds, then `cpu_s` core-seconds of the stage's own compute on up to `threads`
    cores. Alone on its host, the task takes alone_s."""

    hold_s: float
    cpu_s: float
    threads: int
    hold_cpu_s: float = 0.0

    @property
    def alone_s(self) -> float:
        return self.hold_s + self.cpu_s / self.threads

    def phases(self) -> list[tuple[float, float]]:
        """(seconds alone, cores used) of each phase."""
        hold_cores = self.hold_cpu_s / self.hold_s if self.hold_s > 0 else 0.0
        return [(self.hold_s, hold_cores), (self.cpu_s / self.threads, float(self.threads))]


def _interp(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear in x through (x, y) points; linear beyond the ends."""
    points = sorted(points)
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    i = min(max(bisect.bisect_left([p[0] for p in points], x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class BenchmarkModel:
    """Stage costs from bench/results/stages.json and e2e.json, for photos of any size."""

    def __init__(self, stages: dict, e2e: dict, *, stylizer: str = DEFAULT_PRESET.background_model,
                 face_stylizer: str | None = DEFAULT_PRESET.face_model,
                 detector: str = "retinaface-mnet025", face_px: int = 512, cores: int = 2,
                 gpu_speedup: float | None = None):
        rows = stages["rows"]
        self.cores = cores
        self.face_px = face_px

        def curve(stage, model, cuda=False):
            pts = [(r["size"] ** 2, r["per_image_s"]) for r in rows
                   if r["stage"] == stage and r["model"] == model and r["batch"] == 1
                   and ("cuda" in r["runtime"]) == cuda]
            return pts

        self.detect_pts = curve("detect", detector)
        face_stylizer = face_stylizer or stylizer
        self.style_pts = curve("stylize", stylizer)
        self.face_pts = curve("stylize", face_stylizer)
        if not self.detect_pts or not self.style_pts or not self.face_pts:
            raise SystemExit(f"no batch-1 rows for {detector} / {stylizer} / {face_stylizer} in stages.json"
                             " (bench/stages.py --only-presets adds the default preset's)")
        self.gpu_pts = curve("stylize", stylizer, cuda=True)
        self.gpu_face_pts = curve("stylize", face_stylizer, cuda=True)
        self.gpu_speedup = gpu_speedup
        if self.gpu_pts:
            self.gpu_source = f"measured CUDA rows of {stylizer}"
        elif gpu_speedup:
            self.gpu_source = f"CPU figures of {stylizer} / {gpu_speedup:g} (assumed, not measured)"
        else:
            self.gpu_source = f"CPU figures of {stylizer} (no GPU figure exists)"
        mode = e2e["modes"].get("services-1") or next(iter(e2e["modes"].values()))
        # The job system's cost per item beyond the pipeline's own compute, spread over the
        # four hand-offs; it waits on the database and storage, so it uses no cores.
        self.handoff_s = max(0.0, mode["single_latency_median_s"] - e2e["pipeline_compute_s"]) / len(STAGES)
        self.source = (f"stages.json ({stages.get('meta', {}).get('machine', '?')}), "
                       f"e2e.json overhead {self.handoff_s:.3f} s per stage")

    def _capped(self, p: Photo, side: int) -> int:
        s = min(1.0, side / max(p.width, p.height))
        return int(p.width * s) * int(p.height * s)

    def costs(self, p: Photo, gpu: bool = True) -> dict[str, Cost]:
        c = self.cores
        px = self._capped(p, MAX_SIDE)
        cuda = gpu and bool(self.gpu_pts) and bool(self.gpu_face_pts)
        style, face = (self.gpu_pts, self.gpu_face_pts) if cuda else (self.style_pts, self.face_pts)
        speed = self.gpu_speedup if (gpu and not cuda and self.gpu_speedup) else 1.0
        stylize = (_interp(style, self._capped(p, BACKGROUND_MAX_SIDE))
                   + p.faces * _interp(face, self.face_px ** 2)) / speed
        walls = {
            "detect": _interp(self.detect_pts, px),
            "parse": p.faces * PARSE_PER_FACE_S,
            "stylize": stylize,
            "finalize": p.faces * FINALIZE_PER_FACE_S + FINALIZE_PER_MPIX_S * px / 1e6,
        }
        # The measured figures are wall times on `cores` threads of an otherwise idle host.
        return {s: Cost(self.handoff_s, w * c, c) for s, w in walls.items()}


class MeasuredModel:
    """Stage costs measured on the real stack for one kind of photo (see `check`)."""

    def __init__(self, per_stage: dict[str, dict], cores: int):
        self.per_stage = per_stage
        self.cores = cores
        self.gpu_source = "measured on this machine's CPU"
        self.source = "measured: worker metrics and the database of a 1-worker run"

    def costs(self, p: Photo, gpu: bool = True) -> dict[str, Cost]:
        out = {}
        for s in STAGES:
            m = self.per_stage[s]
            # A stage that used more than one core's worth of its time ran multi-threaded
            # (torch, ONNX Runtime and TFLite use every core by default).
            threads = int(min(self.cores, max(1, math.ceil(m["cpu_s"] / max(m["busy_s"], 1e-9) - 0.05))))
            cpu = min(m["cpu_s"], m["busy_s"] * threads)
            hold = m["handoff_s"] + m["busy_s"] - cpu / threads
            out[s] = Cost(hold, cpu, threads, hold_cpu_s=min(m.get("other_cpu_s", 0.0), hold * self.cores))
        return out


# --- the simulation ----------------------------------------------------------------------------


@dataclass
class Pool:
    name: str
    queues: tuple[str, ...]
    count: int
    gpu: bool = False


@dataclass
class _Task:
    item: int
    stage: str
    cost: Cost
    queued_at: float
    started_at: float = 0.0
    phase: int = 0
    remaining: float = 0.0  # seconds-alone left in the current phase
    cores: float = 0.0      # cores the current phase uses


@dataclass
class _Worker:
    pool: Pool
    host: "_Host"
    order: list[str]
    task: _Task | None = None
    reserved: deque = field(default_factory=deque)
    busy_s: float = 0.0


class _Host:
    """Processor sharing: the phases running on a host progress at full speed while they
    need no more cores than the host has, else all CPU-using phases slow down alike."""

    def __init__(self, cores: int):
        self.cores = cores
        self.running: list[_Task] = []
        self.updated = 0.0
        self.version = 0

    def speed(self, t: _Task) -> float:
        if t.cores <= 0:
            return 1.0
        demand = sum(x.cores for x in self.running)
        return min(1.0, self.cores / demand)

    def advance(self, now: float) -> None:
        dt = now - self.updated
        if dt > 0:
            for t in self.running:
                t.remaining -= self.speed(t) * dt
        self.updated = now

    def next_done(self) -> tuple[float, _Task] | None:
        if not self.running:
            return None
        t = min(self.running, key=lambda x: x.remaining / self.speed(x))
        return self.updated + max(0.0, t.remaining) / self.speed(t), t


@dataclass
class Result:
    completed: int
    arrived: int
    makespan_s: float
    latencies: list[float]
    waits: dict[str, float]     # mean queue wait per stage
    utilisation: dict[str, float]
    window_s: float

    def throughput_per_hour(self) -> float:
        return 3600.0 * self.completed / self.window_s if self.window_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    @property
    def stable(self) -> bool:
        return self.completed >= 0.98 * self.arrived


def simulate(model, photos: list[tuple[float, Photo]], pools: list[Pool], *, cores: int,
             shared_host: bool = False, prefetch: int = 0, jitter: float = 0.0,
             merge: bool = True, batching: bool = False,
             seed: int = 0, measure_from: float = 0.0, measure_until: float | None = None) -> Result:
    """Run `photos` (arrival time, photo) through the chain on `pools` of workers.

    shared_host: every worker on one host of `cores` cores (this machine); otherwise each
    worker has a host of its own. jitter: coefficient of variation of compute times.
    merge: a worker that consumes the next stage's queue runs that stage in the same task
    (FACE2PAINT_MERGE_STAGES, on by default); batching: stylize batches (GPU workers), so no
    task merges into it.
    Latencies are those of photos arriving in [measure_from, measure_until)."""
    rng = random.Random(seed)
    hosts = [_Host(cores)] if shared_host else []
    workers: list[_Worker] = []
    for pool in pools:
        for _ in range(pool.count):
            if not shared_host:
                hosts.append(_Host(cores))
            workers.append(_Worker(pool, hosts[-1] if not shared_host else hosts[0], list(pool.queues)))
    by_queue = {s: [w for w in workers if s in w.pool.queues] for s in STAGES}
    for s in STAGES:
        if not by_queue[s]:
            raise ValueError(f"no worker takes the {s} queue")
    queues = {s: deque() for s in STAGES}
    events: list = []  # (time, seq, kind, payload)
    seq = itertools.count()
    arrive = {}
    done_at = {}
    waits = {s: [] for s in STAGES}
    item_photo = {}

    def push(t, kind, payload):
        heapq.heappush(events, (t, next(seq), kind, payload))

    def cost_of(item, stage):
        c = item_photo[item][stage]
        if jitter and c.cpu_s:
            c = replace(c, cpu_s=c.cpu_s * rng.lognormvariate(-jitter ** 2 / 2, jitter))
        return c

    def take(w: _Worker, now: float) -> _Task | None:
        for i, q in enumerate(w.order):
            if queues[q]:
                w.order.append(w.order.pop(i))  # kombu rotates the queue it consumed from
                return queues[q].popleft()
        return None

    def start(w: _Worker, now: float) -> None:
        while w.task is None:
            t = w.reserved.popleft() if w.reserved else take(w, now)
            if t is None:
                return
            t.cost = cost_of(t.item, t.stage)
            t.started_at = now
            waits[t.stage].append(now - t.queued_at)
            w.task = t
            owner[id(t)] = w
            begin_phase(w.host, t, 0, now)
        while len(w.reserved) < prefetch:
            t = take(w, now)
            if t is None:
                break
            w.reserved.append(t)

    def begin_phase(h: _Host, t: _Task, phase: int, now: float) -> None:
        h.advance(now)
        t.phase = phase
        t.remaining, t.cores = t.cost.phases()[phase]
        h.running.append(t)
        reschedule(h)

    def dispatch(now: float, stage: str) -> None:
        for w in by_queue[stage]:
            if not queues[stage]:
                return
            if w.task is None:
                start(w, now)
            elif len(w.reserved) < prefetch:
                start(w, now)  # tops up its reservation

    def reschedule(h: _Host) -> None:
        h.version += 1
        nxt = h.next_done()
        if nxt:
            push(nxt[0], "done", (h, h.version, nxt[1]))

    def publish(item: int, stage: str, now: float) -> None:
        queues[stage].append(_Task(item, stage, Cost(0, 0, 1), now))
        dispatch(now, stage)

    for i, (t, photo) in enumerate(photos):
        push(t, "arrive", (i, photo))
    owner: dict[int, _Worker] = {}
    last = 0.0
    while events:
        now, _, kind, payload = heapq.heappop(events)
        last = now
        if kind == "arrive":
            i, photo = payload
            arrive[i] = now
            costs_cpu = model.costs(photo, gpu=False)
            costs_gpu = model.costs(photo, gpu=True)
            item_photo[i] = {s: (costs_gpu[s] if s in GPU_QUEUES and any(p.gpu for p in pools)
                                 else costs_cpu[s]) for s in STAGES}
            publish(i, STAGES[0], now)
        elif kind == "done":
            h, version, t = payload
            if version != h.version:
                continue
            h.advance(now)
            h.running.remove(t)
            if t.phase + 1 < len(t.cost.phases()):
                begin_phase(h, t, t.phase + 1, now)
                continue
            reschedule(h)
            w = owner.pop(id(t))
            w.busy_s += now - t.started_at
            w.task = None
            nxt = STAGES.index(t.stage) + 1
            if nxt >= len(STAGES):
                done_at[t.item] = now
            elif merge and STAGES[nxt] in w.pool.queues and not (STAGES[nxt] == "stylize" and batching):
                # Merged stages (worker/tasks.py): the task goes on with the next stage itself,
                # without a trip through the queue.
                t2 = _Task(t.item, STAGES[nxt], cost_of(t.item, STAGES[nxt]), now, started_at=now)
                waits[t2.stage].append(0.0)
                w.task = t2
                owner[id(t2)] = w
                begin_phase(w.host, t2, 0, now)
                continue
            else:
                publish(t.item, STAGES[nxt], now)
            start(w, now)
    until = measure_until if measure_until is not None else float("inf")
    window = [i for i, t in arrive.items() if measure_from <= t < until]
    lat = [done_at[i] - arrive[i] for i in window if i in done_at]
    span = (min(until, last) - measure_from) if measure_until is not None else last
    util = {}
    for pool in pools:
        ws = [w for w in workers if w.pool is pool]
        util[pool.name] = sum(w.busy_s for w in ws) / (len(ws) * last) if ws and last else 0.0
    return Result(completed=len(lat), arrived=len(window), makespan_s=last, latencies=lat,
                  waits={s: statistics.fmean(v) if v else 0.0 for s, v in waits.items()},
                  utilisation=util, window_s=max(span, 1e-9))


# --- workloads ---------------------------------------------------------------------------------


def parse_sizes(spec: str) -> list[tuple[int, int, float]]:
    """'1920x1080:0.7,4032x3024:0.3' -> [(w, h, weight)]."""
    out = []
    for part in spec.split(","):
        dims, _, weight = part.partition(":")
        w, h = (int(v) for v in dims.lower().split("x"))
        out.append((w, h, float(weight or 1)))
    return out


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def workload(photos_per_hour: float, hours: float, faces: float, sizes, seed: int = 0):
    """Poisson arrivals; faces per photo Poisson around the mean; sizes drawn by weight."""
    rng = random.Random(seed)
    rate = photos_per_hour / 3600.0
    weights = [s[2] for s in sizes]
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= hours * 3600:
            return out
        w, h, _ = rng.choices(sizes, weights)[0]
        out.append((t, Photo(w, h, poisson(rng, faces))))


def _pools(cpu: int, gpu: int) -> list[Pool]:
    return [Pool("cpu", CPU_QUEUES, cpu), Pool("gpu", GPU_QUEUES, gpu, gpu=True)]


def run_workload(model, args, cpu: int, gpu: int) -> Result:
    photos = workload(args.photos_per_hour, args.hours, args.faces, parse_sizes(args.sizes), args.seed)
    warm = 0.1 * args.hours * 3600  # the system starts empty: leave its first tenth out
    return simulate(model, photos, _pools(cpu, gpu), cores=args.cores, prefetch=args.prefetch,
                    jitter=args.jitter, seed=args.seed, measure_from=warm,
                    measure_until=args.hours * 3600)


def mean_costs(model, args) -> dict[str, float]:
    """Mean worker-seconds per photo and stage over the workload (for utilisation bounds)."""
    sample = workload(max(args.photos_per_hour, 3600), min(args.hours, 1.0), args.faces,
                      parse_sizes(args.sizes), args.seed)[:2000]
    out = {}
    for s in STAGES:
        out[s] = statistics.fmean(model.costs(p, gpu=s in GPU_QUEUES)[s].alone_s for _, p in sample)
    return out


def size(model, args) -> tuple[int, int, Result]:
    """Fewest (CPU, GPU) workers that keep each pool busy at most `max_utilisation` of the
    time on average (headroom for bursts and a lost node; at 100% the backlog drifts without
    bound) and meet the p95 latency target: from that bound, add a worker to the pool whose
    queues make photos wait longest until the target is met."""
    rate = args.photos_per_hour / 3600.0
    c = mean_costs(model, args)
    cpu = max(1, math.ceil(rate * sum(c[s] for s in CPU_QUEUES) / args.max_utilisation))
    gpu = max(1, math.ceil(rate * sum(c[s] for s in GPU_QUEUES) / args.max_utilisation))
    for _ in range(200):
        r = run_workload(model, args, cpu, gpu)
        if r.stable and r.percentile(95) <= args.target_p95_s:
            return cpu, gpu, r
        cpu_wait = sum(r.waits[s] for s in CPU_QUEUES)
        gpu_wait = sum(r.waits[s] for s in GPU_QUEUES)
        if gpu_wait >= cpu_wait:
            gpu += max(1, gpu // 20)
        else:
            cpu += max(1, cpu // 20)
    raise SystemExit("no sizing found within 200 steps; is the target below one photo's own time?")


def capacity_per_hour(model, args, pools: dict[str, int]) -> float:
    """The most photos per hour the pools can take (the busier pool at 100%)."""
    c = mean_costs(model, args)
    per_photo = {"cpu": sum(c[s] for s in CPU_QUEUES), "gpu": sum(c[s] for s in GPU_QUEUES)}
    return min(3600.0 * pools[k] / per_photo[k] for k in pools)


def report(title: str, r: Result, pools: dict[str, int], source: str, gpu_source: str,
           capacity: float | None = None) -> dict:
    out = {
        "workers": pools,
        "throughput_per_hour": round(r.throughput_per_hour(), 1),
        "latency_s": {f"p{q}": round(r.percentile(q), 2) for q in (50, 90, 95, 99)},
        "mean_wait_s": {s: round(v, 2) for s, v in r.waits.items()},
        "utilisation": {k: round(v, 3) for k, v in r.utilisation.items()},
        "stable": r.stable,
        "service_times": source,
        "stylize_on_gpu_workers": gpu_source,
    }
    print(f"== {title}")
    print(f"   workers: {', '.join(f'{k} {v}' for k, v in pools.items())}; service times: {source}")
    print(f"   stylize on GPU workers: {gpu_source}")
    if capacity is not None:
        out["capacity_per_hour"] = round(capacity, 1)
    print(f"   throughput {out['throughput_per_hour']:.0f} photos/h"
          f"{'' if r.stable else '  (UNSTABLE: the backlog grows)'}"
          + (f"; capacity {capacity:.0f} photos/h" if capacity is not None else ""))
    print("   latency " + ", ".join(f"{k} {v:.1f} s" for k, v in out["latency_s"].items()))
    print("   utilisation " + ", ".join(f"{k} {v:.0%}" for k, v in r.utilisation.items())
          + "; mean wait " + ", ".join(f"{s} {v:.1f} s" for s, v in r.waits.items()))
    return out


def benchmark_model(args, cores: int | None = None) -> BenchmarkModel:
    stages = json.loads(Path(args.stages).read_text())
    e2e = json.loads(Path(args.e2e).read_text())
    return BenchmarkModel(stages, e2e, stylizer=args.stylizer, face_stylizer=args.face_stylizer,
                          face_px=args.face_px,
                          cores=cores or args.cores, gpu_speedup=args.gpu_speedup)


# --- the check against a real run ------------------------------------------------------------


def _scrape(url: str) -> dict[tuple, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _delta(before: dict, after: dict, name: str, **labels) -> float:
    want = set(labels.items())

    def tot(d):
        return sum(v for (n, ls), v in d.items() if n == name and want <= set(ls))

    return tot(after) - tot(before)


def busy_cpu_s() -> float:
    """Core-seconds the whole machine has spent busy so far."""
    import psutil

    t = psutil.cpu_times()
    return sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def calibrate(before: dict, after: dict, single_latency_s: float, cores: int,
              other_cpu_s: float = 0.0) -> MeasuredModel:
    """Per-stage costs of one photo from the worker's metrics over single-photo jobs.
    other_cpu_s: CPU the rest of the machine (servers, API, Celery's own work) spent per photo;
    it runs during the stages' hand-offs and database and storage calls."""
    per_stage = {}
    for s in STAGES:
        n = _delta(before, after, "face2paint_stage_seconds_count", stage=s)
        if n <= 0:
            raise SystemExit(f"the worker's metrics show no {s} stage in the calibration jobs")
        runs = _delta(before, after, "face2paint_stage_runs_total", stage=s)
        per_stage[s] = {
            "busy_s": _delta(before, after, "face2paint_stage_seconds_sum", stage=s) / n,
            "cpu_s": _delta(before, after, "face2paint_stage_cpu_seconds_total", stage=s) / max(runs, 1),
        }
    # The rest of one photo's latency is hand-offs between the stages (and the publish after
    # the upload): worker time that runs no stage code.
    handoff = max(0.0, single_latency_s - sum(v["busy_s"] for v in per_stage.values())) / len(STAGES)
    for v in per_stage.values():
        v["handoff_s"] = handoff
        v["other_cpu_s"] = max(0.0, other_cpu_s) / len(STAGES)
    return MeasuredModel(per_stage, cores)


def check(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    from e2e import item_rows, services_stack
    from PIL import Image
    from skimage import data

    from face2paint.cli.client import Client
    from face2paint.cli.stack import free_port

    if not os.environ.get("FACE2PAINT_MODEL_DIR"):
        raise SystemExit("set FACE2PAINT_MODEL_DIR to a directory of weights (e.g. ../shared/models)")
    tmp = Path(tempfile.mkdtemp(prefix="f2p-capacity-"))
    image = tmp / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image)
    counts = [int(w) for w in args.workers.split(",")]
    cores = args.cores or os.cpu_count() or 1
    measured, model, submit_s = {}, None, {}
    for n in counts:
        port = free_port()
        # Metrics only for the calibration run (workers of one stack would share the port).
        env = ({"FACE2PAINT_WORKER_METRICS_PORT": str(port), "FACE2PAINT_WORKER_METRICS_ADDR": "127.0.0.1"}
               if model is None else {})
        with services_stack(n, tmp / f"workers-{n}", env=env) as stack:
            client = Client(stack.api_url, stack.api_key)
            for _ in range(n):  # warm-up: every worker loads its models once
                client.wait(client.submit([image], {})["id"], interval_s=0.1)
            if model is None:
                url = f"http://127.0.0.1:{port}/metrics"
                before, cpu0 = _scrape(url), busy_cpu_s()
                jobs = []
                for _ in range(args.sequential):
                    job = client.submit([image], {})
                    client.wait(job["id"], interval_s=0.05)
                    jobs.append(job["id"])
                after, cpu1 = _scrape(url), busy_cpu_s()
                rows = item_rows(stack.base_env["FACE2PAINT_DATABASE_URL"], jobs)
                latency = statistics.median(r["latency_s"] for r in rows)
                in_stages = _delta(before, after, "face2paint_stage_cpu_seconds_total")
                model = calibrate(before, after, latency, cores,
                                  other_cpu_s=(cpu1 - cpu0 - in_stages) / args.sequential)
                print("calibration (per stage): " + json.dumps(model.per_stage), flush=True)
            t0 = time.perf_counter()
            job = client.submit([image] * args.images, {})
            submit_s[n] = time.perf_counter() - t0
            client.wait(job["id"], interval_s=0.1)
            wall = time.perf_counter() - t0
            rows = item_rows(stack.base_env["FACE2PAINT_DATABASE_URL"], [job["id"]])
            client.close()
        if not all(r["status"] == "succeeded" for r in rows):
            raise SystemExit("some items of the measured batch failed; see the logs")
        measured[n] = args.images / wall
        print(f"measured, {n} worker(s): {measured[n]:.3f} images/s", flush=True)
    bench = benchmark_model(args, cores) if Path(args.stages).exists() and Path(args.e2e).exists() else None
    photo = Photo(512, 512, 1)
    rows_out = {}
    ok = True
    for n in counts:
        pools = [Pool("all", STAGES, n)]
        batch = [(submit_s[n], photo)] * args.images
        sim = simulate(model, batch, pools, cores=cores, shared_host=True, prefetch=args.prefetch)
        simulated = args.images / (sim.makespan_s + 0.05)  # + half the client's poll interval
        ratio = simulated / measured[n]
        ok &= abs(ratio - 1) <= 0.2
        row = {"measured_images_per_s": round(measured[n], 3),
               "simulated_images_per_s": round(simulated, 3), "ratio": round(ratio, 3),
               "within_20pct": abs(ratio - 1) <= 0.2}
        if bench is not None:
            b = simulate(bench, batch, pools, cores=cores, shared_host=True, prefetch=args.prefetch)
            row["from_stages_json_images_per_s"] = round(args.images / (b.makespan_s + 0.05), 3)
        rows_out[str(n)] = row
        print(f"{n} worker(s): measured {row['measured_images_per_s']:.3f}, simulated "
              f"{row['simulated_images_per_s']:.3f} images/s ({ratio:.0%}): "
              f"{'within' if row['within_20pct'] else 'OUTSIDE'} 20%", flush=True)
    out = {"machine": f"{os.cpu_count()} CPUs", "cores_simulated": cores, "images": args.images,
           "photo": "512² astronaut, default models", "calibration": model.per_stage,
           "workers": rows_out, "agree_within_20pct": ok}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'capacity.json'}")
    return 0 if ok or not args.strict else 1


# --- command line ------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--stages", default=str(RESULTS / "stages.json"))
        p.add_argument("--e2e", default=str(RESULTS / "e2e.json"))
        # The `anime` preset (the default style): JP_face on 512² faces, v3 Hayao behind them.
        p.add_argument("--stylizer", default=DEFAULT_PRESET.background_model,
                       help="the background model")
        p.add_argument("--face-stylizer", default=DEFAULT_PRESET.face_model,
                       help="the face model (default: the anime preset's; '' = --stylizer)")
        p.add_argument("--cores", type=int, default=2, help="cores per worker host (the figures' machine: 2)")
        p.add_argument("--gpu-speedup", type=float, default=None,
                       help="GPU stylize = CPU figure / this, when stages.json has no CUDA rows")
        p.add_argument("--prefetch", type=int, default=0, help="messages a busy worker reserves (0: acks_late, multiplier 1)")
        p.add_argument("--seed", type=int, default=0)

    def load(p):
        p.add_argument("--photos-per-hour", type=float, required=True)
        p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
        p.add_argument("--faces", type=float, default=1.5, help="mean processed faces per photo (Poisson)")
        p.add_argument("--sizes", default="1920x1080", help="WxH[:weight],... before the 1920 cap")
        p.add_argument("--face-px", type=int, default=512, choices=(256, 512),
                       help="faces' stylize size (JP_face, the anime preset's face model, frames faces at 512)")
        p.add_argument("--hours", type=float, default=1.0, help="simulated time (the first tenth is warm-up)")
        p.add_argument("--jitter", type=float, default=0.2, help="coefficient of variation of compute times")

    p = sub.add_parser("simulate", help="throughput and latency for given worker counts")
    common(p), load(p)
    p.add_argument("--cpu-workers", type=int, required=True)
    p.add_argument("--gpu-workers", type=int, required=True)
    p = sub.add_parser("size", help="workers needed for a p95 latency target")
    common(p), load(p)
    p.add_argument("--target-p95-s", type=float, required=True)
    p.add_argument("--max-utilisation", type=float, default=0.8,
                   help="busiest a pool may be on average (headroom)")
    p = sub.add_parser("check", help="simulated against measured throughput on this machine")
    common(p)
    p.set_defaults(cores=None, face_px=512)  # the check's photo: a 512² astronaut, one face
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--sequential", type=int, default=5, help="single-image jobs to calibrate on")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--strict", action="store_true", help="exit 1 when outside 20%%")
    args = ap.parse_args(argv)

    if args.cmd == "check":
        return check(args)
    model = benchmark_model(args)
    if args.cmd == "simulate":
        pools = {"cpu": args.cpu_workers, "gpu": args.gpu_workers}
        r = run_workload(model, args, args.cpu_workers, args.gpu_workers)
        out = report(f"{args.photos_per_hour:g} photos/h", r, pools, model.source, model.gpu_source,
                     capacity_per_hour(model, args, pools))
    else:
        cpu, gpu, r = size(model, args)
        pools = {"cpu": cpu, "gpu": gpu}
        out = report(f"{args.photos_per_hour:g} photos/h, p95 <= {args.target_p95_s:g} s: needs", r,
                     pools, model.source, model.gpu_source, capacity_per_hour(model, args, pools))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
