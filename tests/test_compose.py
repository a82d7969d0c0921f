"""docker-compose.yml is valid and has the parts of a deployment."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose client (install the compose plugin or docker-compose)")


def test_docker_compose_config_passes():
    proc = subprocess.run([*_compose(), "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "FACE2PAINT_MODEL_DIR_HOST": "/tmp/models"})
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert {"postgres", "redis", "minio", "create-bucket", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(services)
    assert services["worker-gpu"]["runtime"] == "nvidia"
    assert "stylize" in services["worker-gpu"]["command"]
    assert "detect,parse,finalize" in services["worker-cpu"]["command"]
    assert services["migrate"]["command"] == ["face2paint", "migrate"]
    for name in ("api", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert env["FACE2PAINT_DATABASE_URL"].startswith("postgresql")
        assert env["FACE2PAINT_BROKER_URL"].startswith("redis://")
        assert env["FACE2PAINT_STORAGE_URL"].startswith("s3://")
