"""The capacity model's simulation (bench/capacity.py) against cases with known answers:
sequential service, shared cores, separate pools, Celery's queue rotation, and an M/D/1 queue
against its closed-form waiting time."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("capacity", ROOT / "bench" / "capacity.py")
capacity = importlib.util.module_from_spec(_spec)
sys.modules["capacity"] = capacity
_spec.loader.exec_module(capacity)
Cost, Photo, Pool, STAGES, simulate = capacity.Cost, capacity.Photo, capacity.Pool, capacity.STAGES, capacity.simulate


class Fixed:
    """The same costs for every photo."""

    def __init__(self, **costs: Cost):
        self.c = {s: costs.get(s, Cost(0.0, 0.0, 1)) for s in STAGES}

    def costs(self, photo, gpu=True):
        return self.c


PHOTO = Photo(512, 512, 1)
ALL = (Pool("all", STAGES, 1),)


def batch(n, at=0.0):
    return [(at, PHOTO)] * n


def test_one_worker_runs_a_batch_back_to_back():
    model = Fixed(detect=Cost(0.1, 0.2, 1), parse=Cost(0.1, 0.1, 1), stylize=Cost(0.1, 2.0, 2),
                  finalize=Cost(0.1, 0.1, 1))
    per_item = sum(c.alone_s for c in model.c.values())  # 1.9 s
    r = simulate(model, batch(5), list(ALL), cores=2, shared_host=True)
    assert r.makespan_s == pytest.approx(5 * per_item)
    # kombu's rotation: after detect the worker looks at parse first, so one photo goes
    # through all its stages before the next starts.
    assert sorted(r.latencies) == pytest.approx([per_item * k for k in range(1, 6)])


def test_merged_stages_skip_the_queue_between_stages_of_one_worker():
    # One CPU worker that reserves one more message: merged (the default), it runs parse
    # right after detect in the same task; otherwise the parse message queues behind the
    # detect it had reserved.
    model = Fixed(detect=Cost(1.0, 0.0, 1), parse=Cost(1.0, 0.0, 1), stylize=Cost(0.5, 0.0, 1))
    pools = [Pool("cpu", capacity.CPU_QUEUES, 1), Pool("gpu", capacity.GPU_QUEUES, 1, gpu=True)]
    merged = simulate(model, batch(2), pools, cores=2, prefetch=1)
    assert merged.waits["parse"] == 0.0
    split = simulate(model, batch(2), pools, cores=2, prefetch=1, merge=False)
    assert split.waits["parse"] > 0.0
    # No task merges into stylize when stylize batches: it goes through its queue.
    everything = [Pool("all", STAGES, 1)]
    assert simulate(model, batch(2), everything, cores=2, prefetch=1).waits["stylize"] == 0.0
    assert simulate(model, batch(2), everything, cores=2, prefetch=1, batching=True).waits["stylize"] > 0.0


def test_workers_on_one_host_share_its_cores():
    compute = Fixed(stylize=Cost(0.0, 4.0, 2))  # 2 s on two cores
    one = simulate(compute, batch(4), [Pool("all", STAGES, 1)], cores=2, shared_host=True)
    two = simulate(compute, batch(4), [Pool("all", STAGES, 2)], cores=2, shared_host=True)
    assert two.makespan_s == pytest.approx(one.makespan_s)  # the cores were already busy
    apart = simulate(compute, batch(4), [Pool("all", STAGES, 2)], cores=2, shared_host=False)
    assert apart.makespan_s == pytest.approx(one.makespan_s / 2)
    waiting = Fixed(stylize=Cost(2.0, 0.0, 1))  # time that uses no cores overlaps fully
    w1 = simulate(waiting, batch(4), [Pool("all", STAGES, 1)], cores=2, shared_host=True)
    w2 = simulate(waiting, batch(4), [Pool("all", STAGES, 2)], cores=2, shared_host=True)
    assert w2.makespan_s == pytest.approx(w1.makespan_s / 2)


def test_cpu_and_gpu_pools_overlap_their_stages():
    model = Fixed(detect=Cost(1.0, 0.0, 1), stylize=Cost(1.0, 0.0, 1))
    pools = [Pool("cpu", capacity.CPU_QUEUES, 1), Pool("gpu", capacity.GPU_QUEUES, 1, gpu=True)]
    r = simulate(model, batch(10), pools, cores=2)
    assert r.makespan_s == pytest.approx(11.0)  # a two-stage pipeline: n + 1 steps
    with pytest.raises(ValueError, match="stylize"):
        simulate(model, batch(1), [Pool("cpu", capacity.CPU_QUEUES, 1)], cores=2)


class ByFaces:
    """Stylize takes as many seconds as the photo has faces (time that uses no cores)."""

    def costs(self, photo, gpu=True):
        return {s: Cost(float(photo.faces) if s == "stylize" else 0.0, 0.0, 1) for s in STAGES}


def test_prefetch_makes_reserved_tasks_wait_behind_the_running_one():
    pools = [Pool("gpu", capacity.GPU_QUEUES, 2, gpu=True), Pool("cpu", capacity.CPU_QUEUES, 1)]
    photos = [(0.0, Photo(512, 512, 3)), (0.0, Photo(512, 512, 1)), (0.0, Photo(512, 512, 1))]
    # Without prefetch (late acks, multiplier 1) the second worker takes both short photos
    # while the first runs the long one.
    none = simulate(ByFaces(), photos, pools, cores=1, prefetch=0)
    assert none.makespan_s == pytest.approx(3.0)
    assert sorted(none.latencies) == pytest.approx([1.0, 2.0, 3.0])
    # With one reserved message the first worker holds a short photo behind its long one.
    some = simulate(ByFaces(), photos, pools, cores=1, prefetch=1)
    assert some.makespan_s == pytest.approx(4.0)
    assert sorted(some.latencies) == pytest.approx([1.0, 3.0, 4.0])


def test_md1_queue_matches_its_closed_form_wait():
    # One server, deterministic 1 s service, Poisson arrivals at 0.5/s: the mean wait in queue
    # is rho / (2 mu (1 - rho)) = 0.5 s.
    model = Fixed(stylize=Cost(1.0, 0.0, 1))
    rng = random.Random(1)
    t, photos = 0.0, []
    while t < 40_000:
        t += rng.expovariate(0.5)
        photos.append((t, PHOTO))
    pools = [Pool("gpu", capacity.GPU_QUEUES, 1, gpu=True), Pool("cpu", capacity.CPU_QUEUES, 50)]
    r = simulate(model, photos, pools, cores=1)
    assert r.waits["stylize"] == pytest.approx(0.5, rel=0.1)
    assert r.stable and 0.45 < r.utilisation["gpu"] < 0.55


def test_benchmark_model_grows_with_pixels_and_faces():
    stages = json.loads((ROOT / "bench" / "results" / "stages.json").read_text())
    e2e = json.loads((ROOT / "bench" / "results" / "e2e.json").read_text())
    m = capacity.BenchmarkModel(stages, e2e)
    small, big = m.costs(Photo(512, 512, 1)), m.costs(Photo(1920, 1080, 1))
    crowd = m.costs(Photo(1920, 1080, 5))
    assert big["stylize"].alone_s > small["stylize"].alone_s
    assert crowd["stylize"].alone_s > big["stylize"].alone_s and crowd["parse"].alone_s > big["parse"].alone_s
    # Photos above the 1920 cap cost the same as at the cap.
    assert m.costs(Photo(4032, 3024, 1))["detect"].alone_s == pytest.approx(
        m.costs(Photo(1920, 1440, 1))["detect"].alone_s, rel=0.01)
    assert "no GPU figure" in m.gpu_source
    fast = capacity.BenchmarkModel(stages, e2e, gpu_speedup=10)
    gpu, cpu = fast.costs(Photo(1920, 1080, 1)), fast.costs(Photo(1920, 1080, 1), gpu=False)
    assert gpu["stylize"].cpu_s == pytest.approx(cpu["stylize"].cpu_s / 10)


def test_sizing_meets_the_target_with_the_fewest_gpu_workers(capsys):
    args = ["--photos-per-hour", "2000", "--target-p95-s", "30", "--hours", "0.5", "--json"]
    assert capacity.main(["size", *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["stable"] and out["latency_s"]["p95"] <= 30
    gpu = out["workers"]["gpu"]
    assert capacity.main(["simulate", "--photos-per-hour", "2000", "--hours", "0.5", "--json",
                          "--cpu-workers", str(out["workers"]["cpu"]), "--gpu-workers", str(gpu - 1)]) == 0
    fewer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # One GPU worker less breaks the target or the utilisation headroom.
    assert fewer["latency_s"]["p95"] > 30 or fewer["utilisation"]["gpu"] > 0.8 * 1.02 or not fewer["stable"]
    assert math.isclose(out["capacity_per_hour"] / gpu, fewer["capacity_per_hour"] / (gpu - 1), rel_tol=0.02)


def test_other_processes_cpu_during_hand_offs_contends_too():
    # The hand-off itself uses no worker core, but the servers it talks to use the host's.
    idle = Fixed(stylize=Cost(2.0, 0.0, 1))
    busy = Fixed(stylize=Cost(2.0, 0.0, 1, hold_cpu_s=4.0))  # 2 cores' worth while it waits
    pools = [Pool("all", STAGES, 2)]
    assert simulate(idle, batch(4), pools, cores=2, shared_host=True).makespan_s == pytest.approx(4.0)
    assert simulate(busy, batch(4), pools, cores=2, shared_host=True).makespan_s == pytest.approx(8.0)


def test_calibration_from_worker_metrics_and_latency():
    def sample(stage, seconds, count, cpu, runs):
        return {("face2paint_stage_seconds_sum", (("model", "m"), ("stage", stage))): seconds,
                ("face2paint_stage_seconds_count", (("model", "m"), ("stage", stage))): count,
                ("face2paint_stage_cpu_seconds_total", (("stage", stage),)): cpu,
                ("face2paint_stage_runs_total", (("outcome", "succeeded"), ("stage", stage))): runs}

    before, after = {}, {}
    for stage, busy, cpu in (("detect", 0.1, 0.15), ("parse", 0.2, 0.1), ("stylize", 1.0, 1.8),
                             ("finalize", 0.1, 0.05)):
        before.update(sample(stage, 5.0, 3, 1.0, 3))
        after.update(sample(stage, 5.0 + 2 * busy, 5, 1.0 + 2 * cpu, 5))
    model = capacity.calibrate(before, after, single_latency_s=1.8, cores=2, other_cpu_s=0.4)
    costs = model.costs(PHOTO)
    assert model.per_stage["stylize"]["busy_s"] == pytest.approx(1.0)
    assert costs["stylize"].threads == 2 and costs["parse"].threads == 1
    # Alone, each stage takes its measured time plus its share of the hand-offs.
    handoff = (1.8 - 1.4) / 4
    for stage, busy in (("detect", 0.1), ("parse", 0.2), ("stylize", 1.0), ("finalize", 0.1)):
        assert costs[stage].alone_s == pytest.approx(busy + handoff)
        assert costs[stage].hold_cpu_s == pytest.approx(0.1)
