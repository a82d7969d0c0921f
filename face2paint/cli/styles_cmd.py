"""`face2paint styles list`: the style presets, their models, whether they can run here, and
under which licence."""

from __future__ import annotations

import typer
from rich.table import Table

from .inputs import console

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_styles() -> None:
    """Every style preset: its face and background models, whether their files are present
    (`face2paint models pull ID` fetches a missing one) and whether commercial use is allowed."""
    from ..models.presets import NAMED, PRESETS, default_preset, preset_status
    from ..models.registry import Registry

    reg = Registry()
    default = default_preset(reg).id
    table = Table("style", "face model", "background model", "present", "use")
    for preset in PRESETS:
        st = preset_status(preset, reg)
        present = "[green]yes[/green]" if st.available else "[red]missing[/red] " + ", ".join(st.missing)
        use = "commercial ok" if preset.commercial_use else "[red]non-commercial[/red]"
        name = f"[bold]{preset.id}[/bold]" if preset in NAMED else preset.id
        table.add_row(name + (" (default)" if preset.id == default else ""), preset.face_model,
                      preset.background_model, present, use)
    console.print(table)
    console.print(f"default style: [bold]{default}[/bold]. Licences: `face2paint models list`; "
                  "[red]non-commercial[/red] weights may not be used commercially.")
