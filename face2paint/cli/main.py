"""The `face2paint` command. Subcommands import their heavy dependencies lazily, so the API and
job-system commands work where torch, onnxruntime or OpenCV are not installed."""

from __future__ import annotations

import typer

from . import eval_cmd, models_cmd, pipeline_cmd, service_cmd, styles_cmd

app = typer.Typer(
    help="face2paint: photos in, anime-style portraits out, faces kept intact.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("run")(service_cmd.run)
app.command("stylize")(pipeline_cmd.stylize)
app.command("detect")(pipeline_cmd.detect)
app.command("eval")(eval_cmd.evaluate)
app.add_typer(models_cmd.app, name="models", help="List, verify, download and convert model weights.")
app.add_typer(styles_cmd.app, name="styles", help="List the style presets and whether they can run here.")
app.command("up")(service_cmd.up)
app.command("api")(service_cmd.api)
app.command("worker")(service_cmd.worker)
app.command("migrate")(service_cmd.migrate)
app.add_typer(service_cmd.keys_app, name="keys", help="Manage API keys.")

def main() -> None:
    """The console script: the commands, with a failure of a service they need (a database,
    broker or storage that is down, a connection refused) said in one line with what to do,
    instead of a traceback. Bugs still show theirs."""
    import sys

    try:
        app()
    except Exception as e:  # noqa: BLE001 - sorted out below
        message = service_failure(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def service_failure(e: BaseException) -> str | None:
    """One line for an exception that says a service is unreachable, or None."""
    from .service_cmd import one_line

    kind = type(e).__module__ + "." + type(e).__name__
    if kind.startswith("sqlalchemy.") and "OperationalError" in kind:
        return (f"the database is unreachable ({one_line(getattr(e, 'orig', None) or e)}); start it "
                "or fix FACE2PAINT_DATABASE_URL")
    if "StorageUnavailable" in kind:
        return one_line(e)
    if kind.startswith(("kombu.", "redis.")) or isinstance(e, ConnectionRefusedError):
        return (f"the broker is unreachable ({one_line(e)}); start Redis or fix "
                "FACE2PAINT_BROKER_URL (unset: `face2paint up` runs an embedded one)")
    if kind.startswith("httpx.") and ("Connect" in kind or "Timeout" in kind):
        return f"cannot reach the API ({one_line(e)}); check the URL and that the service is up"
    return None


if __name__ == "__main__":
    main()
