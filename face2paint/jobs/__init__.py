"""The job system's domain, shared by the API and the workers: schema, states, object keys and
storage, and the operations on jobs, items and API keys.

Owns:
    db.py           schema, engines, sessions, unit_of_work / session_scope
    states.py       JobState, ItemState, Stage, Outcome and the state machines
    keys.py         deterministic object keys        storage.py   local directory or S3
    migrate.py      Alembic migrations run from code
    errors.py       the domain errors                locks.py     row locks and their order
    inputs.py       uploaded files: names, extensions, storing them
    idempotency.py  Idempotency-Key handling         create.py    create_job
    lookup.py       an owner's job, items, result    listing.py   list_jobs (cursor pages)
    cancel.py       cancel_job                       progress.py  refresh_job (counts, status)
    stages.py       begin_stage, end_stage, finish_stage, fail_item (worker bookkeeping)
    faces.py        record_faces                     sweep.py     stuck_items
    enqueue.py      mark_enqueued, publish_then_mark (the publisher is a parameter)
    api_keys.py     create, look up and revoke API keys (stored hashed)
    webhooks.py     the webhook outbox (rows written with the change they report), its
                    retry schedule, which URLs may be called, the keys' signing secrets
    notices.py      job-change notices on Redis after a commit (followers stop polling)
    redis_client.py redis-py clients for the broker's Redis URL
    sqlite_check.py refusing a damaged embedded database (or WAL) at start-up

May import: settings, SQLAlchemy, boto3, redis and the standard library. Never api/, worker/, cli/,
models/ or tools/, nor torch, onnxruntime or OpenCV.

Transactions, one convention everywhere:
- A domain function never commits or rolls back. It works inside the caller's transaction,
  and its changes (and row locks) last until the caller's unit of work ends.
- The caller owns the unit of work: `with unit_of_work(session):` (db.py) commits when the
  block ends and rolls back if it raises; `session_scope(sessions)` is a new session with one
  unit of work, for the worker, the command line and tools. An API request has one session
  (api/deps.py) and runs each unit of work on it in turn. unit_of_work is the only commit in
  face2paint (a test checks), and it refuses to nest.
- Two workflows put work outside the database between transactions, so they open their units
  of work themselves and need a session with none open: create_job (uploads between the
  idempotency lookup and the insert: on SQLite an open transaction holds the write lock) and
  publish_then_mark (the publish between the commit of the items and marking them enqueued).
- A stage's effects are committed before the next stage is published: the worker ends its
  unit of work around finish_stage() before its task returns and Celery sends the next one.

Other rules:
- Every operation is safe to call twice: a repeated call finds the work done and changes
  nothing (tasks are delivered at least once; the sweeper re-enqueues).
- Row locks are taken in the order item → stage attempt → job (locks.py), so concurrent
  workers and a cancel cannot deadlock.
"""
