"""`face2paint run|up|api|worker|migrate|keys`: the job system from the command line."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from .inputs import collect_or_fail, console, output_names
from .inputs import fail as _fail

keys_app = typer.Typer(no_args_is_help=True)


def run(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or directories of images.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the results.")],
    style: Annotated[Optional[str], typer.Option(help="Stylizer model id; default: the best available.")] = None,
    face2paint: Annotated[bool, typer.Option("--face2paint/--no-face2paint")] = True,
    api: Annotated[Optional[str], typer.Option(help="URL of a deployed service; default: start the embedded stack.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="FACE2PAINT_API_KEY", help="API key for --api.")] = None,
) -> None:
    """Submit photos as one job, show progress, and write one result per input to OUT.

    With no --api, starts the embedded stack (SQLite, a local storage directory, an embedded
    broker, the API on a free port, one worker process) and stops it afterwards.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..jobs.states import ItemState, JobState
    from .client import ApiError, Client

    files = collect_or_fail(inputs)
    if api and not api_key:
        _fail("--api needs --api-key (or FACE2PAINT_API_KEY)")
    stack, tmp = None, None
    if not api:
        _describe_models(style)
        from .stack import EmbeddedStack

        tmp = Path(tempfile.mkdtemp(prefix="face2paint-run-"))
        stack = EmbeddedStack(tmp)
        console.print("starting the embedded stack (SQLite, local storage, embedded broker, API, 1 worker)")
        try:
            stack.start()
        except Exception as e:
            _fail(f"could not start the embedded stack: {e}")
        api, api_key = stack.api_url, stack.api_key
    client = Client(api, api_key)
    failed = 0
    try:
        options = {"style": style, "face2paint": face2paint}
        job = client.submit(files, options)
        console.print(f"job {job['id']}: {len(files)} images")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(JobState.QUEUED, total=len(files))

            def show(j):
                progress.update(task, completed=j["progress"]["done"], description=j["status"])

            job = client.wait(job["id"], on_poll=show)
        out.mkdir(parents=True, exist_ok=True)
        names = output_names(files)
        items = client.items(job["id"])
        for item, path in zip(sorted(items, key=lambda i: i["index"]), files):
            if item["status"] == ItemState.SUCCEEDED:
                (out / names[path]).write_bytes(client.download(job["id"], item["id"]))
            else:
                failed += 1
                console.print(f"[red]{path}[/red]: {item['status']}: {item.get('error') or 'no reason given'}")
        console.print(f"job {job['status']}: {len(files) - failed} of {len(files)} results written to {out}")
    except ApiError as e:
        _fail(str(e), 1)
    finally:
        client.close()
        if stack:
            stack.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise typer.Exit(1)


def _describe_models(style: str | None) -> None:
    """Say which models the embedded worker will use, before it starts."""
    try:
        from ..models.registry import ModelUnavailable, Registry

        reg = Registry()
        for stage, wanted in (("detect", None), ("parse", None), ("stylize", style)):
            if wanted:
                reg.resolve(wanted)
                console.print(f"[bold]{stage}[/bold]: {wanted} (requested)")
            else:
                console.print(f"[bold]{stage}[/bold]: {reg.default(stage).id} (best available)")
    except ModelUnavailable as e:
        _fail(str(e))


def up(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    home: Annotated[Optional[Path], typer.Option(help="Where the embedded data lives; default FACE2PAINT_HOME.")] = None,
) -> None:
    """Run the embedded stack until interrupted, printing the API URL and a key."""
    import time

    from ..settings import get_settings
    from .stack import EmbeddedStack

    stack = EmbeddedStack(home or get_settings().home / "embedded", port=port)
    try:
        try:
            stack.start()
        except RuntimeError as e:  # a damaged database, a process that exited at start-up
            _fail(f"could not start the embedded stack: {e}")
        console.print(f"API: {stack.api_url}  (docs at {stack.api_url}/docs)")
        console.print(f"API key for owner 'local': {stack.api_key}")
        console.print(f"logs: {stack.home / 'logs'}; Ctrl-C stops")
        while all(p.poll() is None for p in list(stack.procs.values())):
            time.sleep(1)
        console.print("[red]a process of the stack exited[/red]; see the logs")
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def api(
    host: Annotated[str, typer.Option()] = "0.0.0.0",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API from the FACE2PAINT_* settings (a distributed deployment's part)."""
    import uvicorn

    uvicorn.run("face2paint.api.main:create_app", factory=True, host=host, port=port, workers=workers)


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated: detect,parse,stylize,finalize")] = "detect,parse,stylize,finalize",
    concurrency: Annotated[Optional[int], typer.Option(
        help="Processes in the pool (default: FACE2PAINT_WORKER_PROCESSES, else cores / model threads)."
    )] = None,
    name: Annotated[Optional[str], typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker for some stage queues (e.g. CPU: detect,parse,finalize; GPU: stylize)."""
    from ..jobs.states import STAGES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in wanted if q not in STAGES]
    if bad or not wanted:
        _fail(f"unknown queue(s) {bad}; choose from {', '.join(STAGES)}")
    from ..settings import get_settings

    settings = get_settings()
    concurrency = concurrency or settings.resolved_worker_processes
    console.print(f"worker: {concurrency} process(es) x {settings.resolved_model_threads} model "
                  f"thread(s), device {settings.model_device}, runtime {settings.model_runtime}")
    argv = [sys.executable, "-m", "celery", "-A", "face2paint.worker.main", "worker",
            "-Q", ",".join(wanted), "-c", str(concurrency), "--loglevel", "INFO"]
    if name:
        argv += ["-n", name]
    os.execv(sys.executable, argv)


def migrate() -> None:
    """Create or upgrade the database schema (FACE2PAINT_DATABASE_URL)."""
    from ..jobs.migrate import upgrade
    from ..settings import get_settings

    upgrade(get_settings().resolved_database_url)
    console.print("database schema is up to date")


@keys_app.command("create")
def keys_create(owner: Annotated[str, typer.Option(help="Who the key belongs to.")]) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from ..jobs.api_keys import create_api_key
    from ..jobs.db import make_engine, session_factory, session_scope
    from ..jobs.migrate import upgrade
    from ..settings import get_settings

    url = get_settings().resolved_database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            key = create_api_key(s, owner)
    finally:
        engine.dispose()
    typer.echo(key)
