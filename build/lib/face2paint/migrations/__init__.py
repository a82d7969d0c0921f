"""Alembic migrations for the jobs/ schema (face2paint/jobs/db.py).

They run from code (face2paint.jobs.migrate.upgrade), with no alembic.ini. To add a revision
after changing the models, autogenerate it against a scratch database at the current head and
review the result (SQLite needs batch operations, which env.py turns on):

    python -c "from alembic import command; from face2paint.jobs import migrate; \
url = 'sqlite:////tmp/f2p-scratch.db'; migrate.upgrade(url); \
command.revision(migrate.alembic_config(url), message='what changed', autogenerate=True, \
rev_id='0002')"

tests/test_jobs_db.py checks that the migrated schema matches the models on SQLite and
PostgreSQL.
"""
