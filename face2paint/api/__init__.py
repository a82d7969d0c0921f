"""The HTTP API (v1, FastAPI): a thin adapter over jobs/ that publishes stage tasks by name.

Owns:
    app.py          create_app: the lifespan's shared handles on app.state, routers, middleware
    deps.py         SettingsDep, SessionDep (one per request), StorageDep, EnqueuerDep, OwnerDep
    routes/         one module per resource (jobs, items, health); add a file, list it there
    options.py      JobOptions / ParamsOptions: job options, unknown keys refused (422)
    uploads.py      sniffing uploads by their header (Pillow only)
    schemas.py      response models
    errors.py       every error answer (domain errors -> status, 422, 503/507) and the 4xx
                    answers each route's OpenAPI declares
    auth.py         API keys from headers, rate-limit tokens (ratelimit.py: the buckets),
                    the per-address limit on failed authentication
    authenticate.py the Authenticate middleware: the key checked before the body is read
    logs.py         escaping client text for log lines and messages (a filter on every handler)
    publishing.py   Enqueuer: publish then mark, and the `submit` fault seam under test
    sweeper.py      re-publishes what a crash left behind
    body_limit.py   413 before an oversized body is read, 400 for ambiguous body framing
    metrics.py      /metrics

May import: jobs/, settings, models.registry and models.types (numpy only), worker.app (to
publish by task name; it imports no model code) and worker.faults (enabled/hit, at the seam).
Never torch, onnxruntime, OpenCV or LiteRT: `pip install .` without extras serves the API
(tests/test_api_without_torch.py).
"""
