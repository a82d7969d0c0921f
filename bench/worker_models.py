"""Worker memory and model loads with the stages split as a deployment splits them.

`python bench/worker_models.py [--out bench/results]` (needs FACE2PAINT_MODEL_DIR)

The embedded stack (SQLite, local storage, embedded Redis, the API) with two real Celery
workers, one pool process each: a CPU worker on `detect,parse,finalize` and a stylize worker
on `stylize`. Three jobs, each with its own parameter set, run one after another (the
astronaut and a group photo, if the shared photos are there). Reported per worker: the peak RSS
of its largest process (the pool process, where models live) and which models that process
loaded, how many times, read from its log ("model loaded: ID ..." lines of the model cache).
Memory and counts do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import Counter
from pathlib import Path

from e2e import MemorySampler  # bench/, this script's directory
from workdir import astronaut_workdir

ROOT = Path(__file__).resolve().parents[1]

WORKERS = {"cpu": ("detect", "parse", "finalize"), "stylize": ("stylize",)}
PARAM_SETS = [
    {},
    {"skin_smoothing_factor": 0.3, "eye_enhance_ratio": 1.2},
    {"post_sharpen_weight": 0.0, "face_min_size": 512, "background_max_side": 512},
]
LOADED = re.compile(r"model loaded: (\S+)")


def loads_in(log: str) -> dict[str, int]:
    return dict(Counter(LOADED.findall(log)))


def group_photo(tmp: Path) -> list[Path]:
    """A copy of the shared group photo in `tmp`, where the shared photos are there."""
    group = ROOT.parent / "shared" / "faces" / "if_friends_t1.jpg"
    if not group.is_file():
        return []
    shutil.copy(group, tmp / group.name)
    return [tmp / group.name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    tmp, astronaut = astronaut_workdir("f2p-bench-workers-")
    files = [astronaut, *group_photo(tmp)]
    from face2paint.cli.client import Client
    from face2paint.cli.stack import EmbeddedStack

    stack = EmbeddedStack(tmp / "home", worker_queues=list(WORKERS.values()))
    logs: dict[str, str] = {}
    try:
        stack.start()
        # The stack names its workers worker0, worker1, ... in the order of WORKERS.
        procs = {name: f"worker{i}" for i, name in enumerate(WORKERS)}
        client = Client(stack.api_url, stack.api_key)
        with MemorySampler({name: stack.procs[p].pid for name, p in procs.items()}) as mem:
            for params in PARAM_SETS:
                job = client.wait(client.submit(files, {"params": params})["id"], interval_s=0.2)
                assert job["status"] == "succeeded", job
        client.close()
        logs = {name: stack.log(p) for name, p in procs.items()}
        result = {
            "photos": [p.name for p in files],
            "param_sets": PARAM_SETS,
            "workers": {
                name: {"queues": ",".join(queues), "peak_rss_mb": round(mem.peak[name] / 2**20),
                       "models_loaded": loads_in(logs[name])}
                for name, queues in WORKERS.items()
            },
        }
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "worker_models.json").write_text(json.dumps(result, indent=2))
    for name, log in logs.items():
        (args.out / f"worker_models.{name}.log").write_text(log)
    print(f"wrote {args.out / 'worker_models.json'} and the workers' logs beside it")


if __name__ == "__main__":
    main()
