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

if __name__ == "__main__":
    app()
