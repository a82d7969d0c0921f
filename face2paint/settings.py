"""All configuration in one place: environment variables prefixed FACE2PAINT_.

With nothing set, everything runs embedded (SQLite, a local storage directory, an embedded
Redis broker). Every layer reads its settings from here; models/ only reads the model fields.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".face2paint"


def cores_available() -> int:
    """The CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Threads of one model session when FACE2PAINT_MODEL_THREADS is unset (see resolved_model_threads).
MAX_DEFAULT_THREADS = 4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACE2PAINT_", extra="ignore")

    # Where everything embedded lives when no service URL is given.
    home: Path = Field(default_factory=_default_home)

    # Models
    model_dir: Path | None = None
    model_cache_dir: Path | None = None  # where `models pull` saves; default home/models
    max_side: int = 1920

    # Job system (empty = embedded defaults under `home`)
    database_url: str | None = None
    broker_url: str | None = None
    storage_url: str | None = None  # s3://bucket/prefix or a local directory
    s3_endpoint_url: str | None = None
    # The address clients reach the S3 server at, for presigned URLs (in docker it differs from
    # the service-internal endpoint); defaults to s3_endpoint_url.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    presign_expires_s: int = 900

    # Limits
    max_upload_bytes: int = 25 * 1024 * 1024
    max_files_per_job: int = 100
    max_image_pixels: int = 60_000_000
    max_attempts: int = 3
    stage_timeout_s: int = 600
    rate_limit_per_minute: int = 120
    # Failed authentications per client address per minute (429 beyond); <= 0: no limit.
    auth_failures_per_minute: int = 30

    # The API's sweeper: how often it looks for items a crash left behind, and how long a
    # committed item may stay unpublished before it is sent.
    sweep_interval_s: PositiveFloat = 10.0
    sweep_unpublished_after_s: PositiveFloat = 30.0
    # Privacy: the sweeper deletes a finished job's photos, artifacts and results this many
    # days after it finished (its results then answer 410); 0 deletes them at the next sweep.
    retention_days: float = Field(default=7.0, ge=0)

    # Webhooks (jobs' webhook_url). A URL whose host resolves to a private, loopback,
    # link-local, multicast or unspecified address is refused (at submit and again at each
    # delivery) unless allow_private; tests and single-machine setups turn it on. Deliveries
    # are retried with exponential backoff and full jitter (base, doubling, capped) until
    # give_up_after_s after their first attempt; each attempt waits timeout_s at most.
    webhook_allow_private: bool = False
    webhook_timeout_s: PositiveFloat = 10.0
    webhook_backoff_base_s: PositiveFloat = 10.0
    webhook_backoff_cap_s: PositiveFloat = 3600.0
    webhook_give_up_after_s: PositiveFloat = 24 * 3600.0
    # The sweeper publishes again a delivery due this long ago that no worker took (its
    # message lost with a broker restart, or never published after a crash).
    webhook_lost_after_s: PositiveFloat = 120.0

    # Worker observability. The parent of a worker's prefork pool serves the Prometheus metrics
    # of all its pool processes on this port (unset: no endpoint; docker compose and the
    # Kubernetes manifests set 9808). The state directory holds the heartbeat and the
    # running-task records that `python -m face2paint.worker.liveness` checks; one per worker
    # (default: home/worker).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_addr: str = "0.0.0.0"
    worker_state_dir: Path | None = None
    # The liveness check fails when the worker's event loop has not beaten for this long.
    worker_heartbeat_max_age_s: PositiveFloat = 120.0

    # How models run (read by models/sessions.py when it creates a runtime session; the model
    # cache keys loaded models by these, never by pipeline parameters). Threads: one intra-op
    # pool per session; unset = the CPUs this process may run on. Device: cpu, or cuda / cuda:N
    # for the runtimes that have a GPU session. Precision: the float type of the arithmetic; auto
    # = bf16 on CPUs with bf16 units (AVX512_BF16 / AMX, OpenVINO), fp16 on GPUs, fp32 otherwise.
    # Runtime: the engine preference (sessions.ENGINES); auto = OpenVINO on CPU, TensorRT then
    # CUDA on GPUs, ONNX Runtime CPU as the fallback; "torch" keeps AnimeGANv2 on torch.
    model_threads: PositiveInt | None = None
    model_device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    model_precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    model_runtime: Literal["auto", "openvino", "onnxruntime", "cuda", "tensorrt", "torch"] = "auto"
    # Worker processes per host (the pool of `face2paint worker`); unset = the cores this process
    # may use divided by the threads of one process (one process per GPU: see docs/SCALING.md).
    worker_processes: PositiveInt | None = None

    # The job system's own cost per photo (worker/tasks.py). A worker that consumes the next
    # stage's queue too runs it in the same task (one hand-off and one read of the artifacts
    # less); off: every stage goes through the broker. Small stage outputs (the detected faces)
    # travel in the next stage's message up to this many bytes of JSON, else the next stage
    # reads them from the database.
    merge_stages: bool = True
    message_artifact_max_bytes: int = Field(default=64 * 1024, ge=0)
    # GPU batching (worker/batching.py): a stylize task also takes up to batch_max - 1 more
    # stylize tasks waiting in its queue, gathered for at most batch_wait_ms, and runs their
    # generator passes together. Unset: 1 (no batching) on CPU, 16 on CUDA.
    stylize_batch_max: PositiveInt | None = None
    stylize_batch_wait_ms: float = Field(default=20.0, ge=0)

    # Derived settings: what each unset service URL means in embedded mode. Every layer reads
    # these instead of working the defaults out itself.

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or (self.home / "models")

    @property
    def resolved_worker_state_dir(self) -> Path:
        return self.worker_state_dir or (self.home / "worker")

    @property
    def resolved_database_url(self) -> str:
        """FACE2PAINT_DATABASE_URL, or an SQLite file under FACE2PAINT_HOME."""
        return self.database_url or f"sqlite:///{self.home.expanduser() / 'face2paint.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """FACE2PAINT_STORAGE_URL (s3://bucket/prefix, file://..., a directory), or the
        directory `storage` under FACE2PAINT_HOME."""
        url = (self.storage_url or "").strip()
        return url or str(self.home.expanduser() / "storage")

    @property
    def resolved_model_threads(self) -> int:
        """Threads of one model session. Unset: the cores here, at most 4: the generators scale
        to about 4 threads at 512²; past that, more processes give more photos per second."""
        return self.model_threads or min(cores_available(), MAX_DEFAULT_THREADS)

    @property
    def resolved_worker_processes(self) -> int:
        """Pool processes of one worker: set, or the cores divided among processes of
        resolved_model_threads threads each (one on a GPU device: one process per GPU)."""
        if self.worker_processes:
            return self.worker_processes
        if self.model_device.startswith("cuda"):
            return 1
        return max(1, cores_available() // self.resolved_model_threads)

    @property
    def resolved_stylize_batch_max(self) -> int:
        if self.stylize_batch_max is not None:
            return self.stylize_batch_max
        return 16 if self.model_device.startswith("cuda") else 1


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
