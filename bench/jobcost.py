"""The job system's own cost per photo in a worker, measured directly rather than as a
difference of two large, noisy latencies: the stage tasks run eagerly in this process (no
broker hand-offs) with the pipeline's model calls replaced by their recorded outputs (default
preset, the astronaut at 512²), so what remains is the upload's decode, the result's encode,
the artifacts, storage and database. Median wall and CPU milliseconds per photo.

`python bench/jobcost.py embedded|services N` (services: PostgreSQL and S3 from tests/servers.py)

To compare two versions on a shared machine, run it alternately with PYTHONPATH at each
checkout (docs/BENCHMARKS.md, "Job-system cost").
"""
import contextlib, io, json, os, statistics, sys, tempfile, time
from pathlib import Path
mode, n = sys.argv[1], int(sys.argv[2])
root = os.environ.get("PYTHONPATH") or str(Path(__file__).resolve().parents[1])
sys.path.insert(0, root)
home = Path(tempfile.mkdtemp())
env = dict(FACE2PAINT_HOME=str(home), FACE2PAINT_BROKER_URL="memory://", FACE2PAINT_MODEL_DIR="/work/shared/models")
stack = contextlib.ExitStack()
if mode == "services":
    from tests import servers
    pg = stack.enter_context(servers.postgres_server()); s3 = stack.enter_context(servers.s3_server())
    import psycopg
    from sqlalchemy.engine import make_url
    url = make_url(pg.url)
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS f2p_stub"); c.execute("CREATE DATABASE f2p_stub")
    env["FACE2PAINT_DATABASE_URL"] = url.set(database="f2p_stub").render_as_string(hide_password=False)
    env.update(s3.env(prefix="stub"))
if not Path(env["FACE2PAINT_MODEL_DIR"]).is_dir():
    raise SystemExit("needs the default weights in ../shared/models")
os.environ.update(env)
from PIL import Image
from skimage import data
buf = io.BytesIO(); Image.fromarray(data.astronaut()).save(buf, "PNG"); png = buf.getvalue()
from face2paint.jobs.migrate import upgrade
from face2paint.settings import get_settings
s = get_settings(); upgrade(s.resolved_database_url)
from face2paint.jobs.db import Item, make_engine, session_factory
from face2paint.jobs.create import create_job
from face2paint.jobs.storage import storage_from_settings
from face2paint.worker import tasks
from face2paint.worker.app import celery_app
from face2paint.models import pipeline
app = celery_app(); app.amqp.queues.select(["detect", "parse", "stylize", "finalize"])
sessions = session_factory(make_engine(s.resolved_database_url)); storage = storage_from_settings(s)
if hasattr(storage, "create_bucket_if_missing"):
    storage.create_bucket_if_missing()
# Record each model call's output once (default preset), then replay it.
recorded = {}
for name in ("detect", "prepare", "stylize_faces", "stylize_background", "finalize"):
    real = getattr(pipeline.Face2Paint, name)
    def wrap(self, *a, _real=real, _name=name, **k):
        if _name not in recorded:
            recorded[_name] = _real(self, *a, **k)
        return recorded[_name]
    setattr(pipeline.Face2Paint, name, wrap)
def one():
    with sessions() as ss:
        job, _ = create_job(ss, storage, "o", [("a.png", "image/png", png)], {}, settings=s)
        iid = job.items[0].id
    t, c = time.perf_counter(), time.process_time()
    for task in (tasks.detect, tasks.parse, tasks.stylize, tasks.finalize):
        task.apply(args=(iid,))
        with sessions() as ss:
            if ss.get(Item, iid).status == "succeeded":
                break
    w, c = time.perf_counter() - t, time.process_time() - c
    with sessions() as ss:
        assert ss.get(Item, iid).status == "succeeded"
    return w, c
one(); one()
rows = [one() for _ in range(n)]
med = lambda i: round(statistics.median(r[i] for r in rows) * 1000, 1)
print(json.dumps({"root": root, "mode": mode, "n": n, "job_system_wall_ms": med(0),
                  "job_system_cpu_ms": med(1), "load": round(os.getloadavg()[0], 1)}))
stack.close()
