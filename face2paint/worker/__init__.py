"""The Celery workers: the app and its queues (app.py, which the API also uses to publish by
task name), one task per stage (tasks.py) over models/ and jobs/, the artifacts stages exchange
(artifacts.py), per-process database and storage handles (context.py), and fault injection for
the reliability tests (faults.py).

May import: jobs/, models/, settings. Never api/ or cli/. app.py imports no model code.
"""
