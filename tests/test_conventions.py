"""Rules of the code base that a reader would otherwise have to trust: one place commits, the
layers import only downwards, and the API's options model mirrors the pipeline's Params."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import face2paint
from face2paint.api.options import ParamsOptions
from face2paint.models.types import Params

PACKAGE = Path(face2paint.__file__).parent


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def test_only_the_unit_of_work_commits():
    """jobs/__init__.py: domain functions never commit or roll back; db.unit_of_work does.
    (migrate.py drives Alembic's own connection, outside any ORM session.)"""
    allowed = {("jobs/db.py", "unit_of_work"), ("jobs/migrate.py", "_run")}
    found = []
    for name, tree in _sources():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("commit", "rollback")
                        and (name, fn.name) not in allowed):
                    found.append(f"{name}:{node.lineno} {fn.name}() calls .{node.func.attr}()")
    assert found == [], "\n".join(found)


def _imported(tree: ast.Module, name: str) -> set[str]:
    """Top-level face2paint packages a module imports (relative imports resolved)."""
    here = ["face2paint", *name.removesuffix(".py").split("/")][:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1] + (node.module or "").split(".")
            else:
                base = (node.module or "").split(".")
            mods = [base] if node.module else [base + [a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name.split(".") for a in node.names]
        else:
            continue
        for m in mods:
            m = [p for p in m if p]
            if m and m[0] == "face2paint" and len(m) > 1:
                out.add(m[1])
    return out


def test_jobs_and_models_never_import_the_layers_above():
    above = {"api", "worker", "cli", "tools"}
    for name, tree in _sources():
        top = name.split("/")[0]
        if top in ("jobs", "models"):
            bad = _imported(tree, name) & (above | ({"jobs"} if top == "models" else {"models"}))
            assert not bad, f"{name} imports {sorted(bad)}"


def test_params_options_mirror_the_pipeline_params():
    fields = {f.name: f for f in dataclasses.fields(Params)}
    assert set(ParamsOptions.model_fields) == set(fields)
    for name, field in ParamsOptions.model_fields.items():
        assert field.default == fields[name].default, name
        assert field.annotation is type(fields[name].default), name
    # Every default is inside the range the API accepts.
    ParamsOptions.model_validate({f: d.default for f, d in fields.items()})
