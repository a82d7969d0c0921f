"""`face2paint run|up|api|worker|migrate|keys`: the job system from the command line."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer

from .inputs import collect_or_fail, console, output_names
from .inputs import fail as _fail
from .pipeline_cmd import BACKGROUND_STYLE_HELP, FACE_STYLE_HELP, STYLE_HELP, checked_styles

keys_app = typer.Typer(no_args_is_help=True)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (kill, timeout, a service manager) ends the block like Ctrl-C does, so whatever
    the command started is stopped in its `finally`; while that runs, further signals wait."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def restore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or directories of images.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the results.")],
    style: Annotated[Optional[str], typer.Option(help=STYLE_HELP)] = None,
    face_style: Annotated[Optional[str], typer.Option(help=FACE_STYLE_HELP)] = None,
    background_style: Annotated[Optional[str], typer.Option(help=BACKGROUND_STYLE_HELP)] = None,
    face2paint: Annotated[bool, typer.Option("--face2paint/--no-face2paint")] = True,
    api: Annotated[Optional[str], typer.Option(help="URL of a deployed service; default: start the embedded stack.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="FACE2PAINT_API_KEY", help="API key for --api.")] = None,
) -> None:
    """Submit photos as one job, show progress, and write one result per input to OUT.

    With no --api, starts the embedded stack (SQLite, a local storage directory, an embedded
    broker, the API on a free port, one worker process) and stops it afterwards. Results are
    written as they finish: interrupted (Ctrl-C, SIGTERM), the ones already written stay.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..jobs.states import ItemState, JobState
    from .client import ApiError, Client

    files = collect_or_fail(inputs)
    if api and not api_key:
        _fail("--api needs --api-key (or FACE2PAINT_API_KEY)")
    stack, tmp, client, job = None, None, None, None
    names = output_names(files)
    written: set[str] = set()
    failed = 0

    def save_finished(job_id: str) -> list[dict]:
        items = sorted(client.items(job_id), key=lambda i: i["index"])
        for item, path in zip(items, files):
            if item["status"] == ItemState.SUCCEEDED and item["id"] not in written:
                out.mkdir(parents=True, exist_ok=True)
                (out / names[path]).write_bytes(client.download(job_id, item["id"]))
                written.add(item["id"])
        return items

    try:
        with stop_on_signals():
            try:
                if not api:
                    _describe_models(style, face_style, background_style)
                    from .stack import EmbeddedStack

                    tmp = Path(tempfile.mkdtemp(prefix="face2paint-run-"))
                    stack = EmbeddedStack(tmp)
                    console.print("starting the embedded stack (SQLite, local storage, embedded broker, API, 1 worker)")
                    try:
                        stack.start()
                    except Exception as e:
                        _fail(f"could not start the embedded stack: {one_line(e)}")
                    api, api_key = stack.api_url, stack.api_key
                client = Client(api, api_key)
                options = {"style": style, "face2paint": face2paint}
                options.update({k: v for k, v in (("face_style", face_style), ("background_style", background_style)) if v})
                job = client.submit(files, options)
                console.print(f"job {job['id']}: {len(files)} images")
                with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console) as progress:
                    task = progress.add_task(JobState.QUEUED, total=len(files))
                    seen = {"done": -1}

                    def show(j):
                        p = j["progress"]
                        progress.update(task, completed=p["total"] - p["pending"],
                                        description=progress_line(j))
                        if p["done"] != seen["done"]:  # new results: save them now
                            seen["done"] = p["done"]
                            save_finished(j["id"])

                    job = client.wait(job["id"], on_poll=show)
                items = save_finished(job["id"])
                for item, path in zip(items, files):
                    if item["status"] != ItemState.SUCCEEDED:
                        failed += 1
                        console.print(f"[red]{path}[/red]: {item['status']}: {item.get('error') or 'no reason given'}")
                console.print(f"job {job['status']}: {len(written)} of {len(files)} results written to {out}")
            except KeyboardInterrupt as e:
                why = str(e) or "SIGINT"
                kept = f"{len(written)} finished result{'s' if len(written) != 1 else ''} kept in {out}"
                where = f" (job {job['id']} goes on in the service)" if job and not stack else ""
                console.print(f"[yellow]interrupted ({why})[/yellow]: {kept}; {len(files) - len(written)} not written{where}")
                raise typer.Exit(130)
            except ApiError as e:
                _fail(str(e), 1)
            except httpx.HTTPError as e:
                _fail(f"cannot reach the API at {api}: {one_line(e)}; check the URL and that the service is up", 1)
    finally:
        if client:
            client.close()
        if stack:
            stack.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        restore_signals()
    if failed:
        raise typer.Exit(1)


def progress_line(job: dict) -> str:
    """`running: 3 done, 1 failed, 2 canceled, 10 pending`: each count apart, so a canceled
    job never reads as finished."""
    p = job["progress"]
    parts = [f"{p['done']} done"] + [f"{p[k]} {k}" for k in ("failed", "canceled", "pending") if p.get(k)]
    return f"{job['status']}: " + ", ".join(parts)


def one_line(e: BaseException) -> str:
    """An exception as one line: its first line, without the traceback."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _describe_models(style: str | None, face_style: str | None = None,
                     background_style: str | None = None, settings=None) -> None:
    """Say which style and models the embedded worker will use, before it starts."""
    from ..models.cache import ModelCache
    from ..models.pipeline import Face2Paint
    from ..models.registry import ModelUnavailable, Registry

    checked_styles(style, face_style, background_style)
    try:
        pipe = Face2Paint(ModelCache(Registry(settings)), style=style, face_style=face_style,
                          background_style=background_style)
        console.print(f"[bold]style[/bold]: {pipe.style}")
        for stage, how in pipe.describe().items():
            console.print(f"[bold]{stage}[/bold]: {how}")
    except (ModelUnavailable, ValueError) as e:
        _fail(str(e))


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port, or None if it can (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"port {port} is in use (another face2paint up, or another server); pick "
                        f"another with --port, or stop what listens there (`ss -ltnp 'sport = :{port}'`)")
            return f"cannot listen on {host}:{port}: {e.strerror}; pick another port with --port"
    return None


def up(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    home: Annotated[Optional[Path], typer.Option(help="Where the embedded data lives (database, storage, model cache, key); default FACE2PAINT_HOME (~/.face2paint).")] = None,
) -> None:
    """Run the embedded stack until interrupted (Ctrl-C or SIGTERM), printing the API URL, the
    local owner's key (the same at every start, kept in HOME/api-key) and the models each stage
    uses. Keys made with `face2paint keys create` work here too: one key store per home."""
    import time

    from ..settings import Settings, get_settings
    from .stack import EmbeddedStack

    home = (home or get_settings().home).expanduser()
    problem = port_problem("127.0.0.1", port)
    if problem:
        _fail(problem)
    stack = EmbeddedStack(home, port=port)
    stack.key_file = home / "api-key"
    try:
        with stop_on_signals():
            try:
                try:
                    stack.start()
                except RuntimeError as e:  # a damaged database, a process that exited at start-up
                    _fail(f"could not start the embedded stack: {one_line(e)}")
                console.print(f"API: {stack.api_url}  (docs at {stack.api_url}/docs, web page at {stack.api_url}/)")
                console.print(f"API key for owner 'local': {stack.api_key}  (kept in {stack.key_file})")
                _describe_models(None, settings=Settings(home=home))
                console.print(f"data: {home}; logs: {stack.home / 'logs'}; Ctrl-C stops")
                while all(p.poll() is None for p in list(stack.procs.values())):
                    time.sleep(1)
                console.print("[red]a process of the stack exited[/red]; see the logs")
            except KeyboardInterrupt:
                pass
    finally:
        stack.stop()
        restore_signals()


def api(
    host: Annotated[str, typer.Option()] = "0.0.0.0",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API from the FACE2PAINT_* settings (a distributed deployment's part)."""
    import uvicorn

    uvicorn.run("face2paint.api.main:create_app", factory=True, host=host, port=port, workers=workers)


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated: detect,parse,stylize,finalize,webhooks")] = "detect,parse,stylize,finalize,webhooks",
    concurrency: Annotated[Optional[int], typer.Option(
        help="Processes in the pool (default: FACE2PAINT_WORKER_PROCESSES, else cores / model threads)."
    )] = None,
    name: Annotated[Optional[str], typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker for some queues (e.g. CPU: detect,parse,finalize,webhooks; GPU: stylize)."""
    from .stack import ALL_QUEUES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in wanted if q not in ALL_QUEUES]
    if bad or not wanted:
        _fail(f"unknown queue(s) {bad}; choose from {', '.join(ALL_QUEUES)}")
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


@contextlib.contextmanager
def _key_store():
    """A unit of work on the key store: FACE2PAINT_DATABASE_URL, or the SQLite file under
    FACE2PAINT_HOME that `face2paint up` uses too. Unreachable: one line, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from ..jobs.db import make_engine, session_factory, session_scope
    from ..jobs.migrate import upgrade
    from ..settings import get_settings

    url = get_settings().resolved_database_url
    where = url.split("@")[-1] if "@" in url else url
    try:
        upgrade(url)
        engine = make_engine(url)
    except OperationalError as e:
        _fail(f"the database at {where} is unreachable ({one_line(e.orig or e)}); start it, or fix "
              "FACE2PAINT_DATABASE_URL (unset: the SQLite file under FACE2PAINT_HOME)")
    try:
        with session_scope(session_factory(engine)) as s:
            yield s
    except OperationalError as e:
        _fail(f"the database at {where} failed ({one_line(e.orig or e)}); retry, or check FACE2PAINT_DATABASE_URL")
    finally:
        engine.dispose()


@keys_app.command("create")
def keys_create(owner: Annotated[str, typer.Option(help="Who the key belongs to.")]) -> None:
    """Create an API key and print it once, with its webhook secret; only its hash (and its
    first characters, for `keys list`) are stored."""
    from ..jobs.api_keys import create_api_key, webhook_secret

    try:
        with _key_store() as s:
            key = create_api_key(s, owner)
            secret = webhook_secret(s, key)
    except ValueError as e:
        _fail(str(e))
    # The secret on stderr, so that `KEY=$(face2paint keys create ...)` still gets the key alone.
    typer.echo(f"webhook secret (verifies this key's webhook deliveries): {secret}", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(owner: Annotated[Optional[str], typer.Option(help="Only this owner's keys.")] = None) -> None:
    """The keys of the key store: id, owner, prefix, created, revoked. Never a whole key."""
    from ..jobs.api_keys import list_api_keys

    with _key_store() as s:
        rows = [(k.id, k.owner, (k.prefix + "…") if k.prefix else "(older key)",
                 k.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                 k.revoked_at.strftime("%Y-%m-%d %H:%M:%S UTC") if k.revoked_at else "-")
                for k in list_api_keys(s, owner)]
    if not rows:
        console.print("no API keys yet; create one with `face2paint keys create --owner NAME`")
        return
    header = ("id", "owner", "prefix", "created", "revoked")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key itself, its id, or its prefix (from `keys list`).")]) -> None:
    """Revoke a key: it stops working at once (401). Revoking it again changes nothing."""
    from ..jobs.api_keys import KeyNotFound, revoke_matching

    try:
        with _key_store() as s:
            row = revoke_matching(s, key)
            shown = (row.id, row.owner, row.prefix or "")
    except KeyNotFound as e:
        _fail(str(e))
    typer.echo(f"revoked key {shown[0]} ({shown[2]}…) of owner {shown[1]!r}")
