"""Loaded models, once per process: keyed by model id and runtime options, never by pipeline
parameters (parameters change no weights).

`ModelCache.get(model_id)` builds a model the first time it is asked for (with the runtime
options of `sessions.RuntimeOptions`, from Settings unless given) and returns the same object
afterwards. `choose(stage, model_id)` says which model a stage would use (the one asked for,
never substituted, or the best available) without loading it, so a process loads only the
models of the stages it runs. Every load is logged ("model loaded: ...") and kept in `loaded`,
which is how tests and benchmarks see what a worker process holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import loaders
from .registry import ModelUnavailable, Registry
from .sessions import RuntimeOptions, runtime_used

log = logging.getLogger("face2paint.models")

LOAD_LOG_PREFIX = "model loaded:"


class WrongStage(ModelUnavailable):
    """A model asked for by id belongs to another stage."""


@dataclass(frozen=True)
class Choice:
    model_id: str
    how: str  # "requested" or "best available"

    def __str__(self) -> str:
        return f"{self.model_id} ({self.how})"


@dataclass(frozen=True)
class LoadRecord:
    model_id: str
    options: RuntimeOptions
    seconds: float
    pid: int


class ModelCache:
    def __init__(self, registry: Registry | None = None, options: RuntimeOptions | None = None):
        self.registry = registry or Registry()
        self.options = options or RuntimeOptions.from_settings(self.registry.settings)
        self._models: dict[tuple[str, RuntimeOptions], object] = {}
        self._lock = threading.Lock()
        self.loaded: list[LoadRecord] = []
        # Called with each LoadRecord (the worker exports load times; models/ knows no metrics).
        self.on_load: Callable[[LoadRecord], None] | None = None

    def choose(self, stage: str, model_id: str | None = None) -> Choice:
        """The model `stage` uses: `model_id` (checked, never substituted) or the best available."""
        if not model_id:
            return Choice(self.registry.default(stage).id, "best available")
        spec = self.registry.resolve(model_id).spec
        if spec.stage != stage:
            raise WrongStage(f"{model_id} is a {spec.stage} model, not a {stage} model")
        return Choice(spec.id, "requested")

    def get(self, model_id: str, options: RuntimeOptions | None = None):
        """The loaded model, built on first use; raises ModelUnavailable (naming the model) when
        its file is missing or no session runs it."""
        key = (model_id, options or self.options)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:  # one load per key, even when threads ask at once
            model = self._models.get(key)
            if model is None:
                t0 = time.perf_counter()
                model = loaders.build(self.registry.resolve(model_id), key[1])
                record = LoadRecord(model_id, key[1], round(time.perf_counter() - t0, 3), os.getpid())
                self._models[key] = model
                self.loaded.append(record)
                # The runtime actually used (OpenVINO bf16, or the fallback and why): workers print
                # it at startup when they load their models.
                log.info("%s %s (%s, threads %d, %s) in %.2fs, pid %d%s", LOAD_LOG_PREFIX, model_id,
                         key[1].device, key[1].threads, key[1].precision, record.seconds, record.pid,
                         f", on {runtime_used(model)}" if runtime_used(model) else "")
                if self.on_load is not None:
                    self.on_load(record)
        return model

    def loaded_ids(self) -> list[str]:
        return [r.model_id for r in self.loaded]
