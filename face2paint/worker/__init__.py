"""The Celery worker: the app and its queues (app.py, importable without any model code, so
the API enqueues through it), one task per stage on one base class that holds the stage and
the process's resources (tasks.py), those resources (context.py: database sessions, storage,
the model cache), the artifacts stages pass through storage (artifacts.py) and fault
injection for the reliability tests, installed at the storage seam (faults.py).

May import: face2paint.jobs, face2paint.models (its heavy modules only inside the stage bodies,
so models load in pool processes, never in the parent of a prefork pool), face2paint.settings,
Celery and kombu. Never the API or the command line.
"""
