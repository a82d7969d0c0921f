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
    assert "detect,parse,finalize,webhooks" in services["worker-cpu"]["command"]
    assert services["migrate"]["command"] == ["face2paint", "migrate"]
    for name in ("api", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert env["FACE2PAINT_DATABASE_URL"].startswith("postgresql")
        assert env["FACE2PAINT_BROKER_URL"].startswith("redis://")
        assert env["FACE2PAINT_STORAGE_URL"].startswith("s3://")


def _config(*profiles: str) -> dict:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = subprocess.run([*_compose(), "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "FACE2PAINT_MODEL_DIR_HOST": "/tmp/models"})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    import re

    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", str(duration)))


def test_compose_workers_expose_metrics_and_liveness_and_stop_gracefully():
    services = _config()["services"]
    for name in ("worker-cpu", "worker-gpu"):
        s = services[name]
        port = s["environment"]["FACE2PAINT_WORKER_METRICS_PORT"]
        assert str(port) in [str(p) for p in s["expose"]], name
        assert s["healthcheck"]["test"] == ["CMD", "python", "-m", "face2paint.worker.liveness"]
        # Longer than the longest stage (FACE2PAINT_STAGE_TIMEOUT_S, default 600 s).
        assert _seconds(s["stop_grace_period"]) > 600, name
    assert services["api"]["ports"]  # the API's /metrics is on its published port


def test_compose_monitoring_and_flower_are_optional_profiles():
    services = _config("monitoring", "flower")["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert services["flower"]["profiles"] == ["flower"]
    for name in ("postgres", "redis", "api", "worker-cpu", "worker-gpu"):
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    # Prometheus scrapes the API and every worker replica on the workers' metrics port.
    prom = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["face2paint-api"]["static_configs"][0]["targets"] == ["api:8000"]
    (sd,) = jobs["face2paint-worker"]["dns_sd_configs"]
    assert set(sd["names"]) == {"worker-cpu", "worker-gpu"}
    assert str(sd["port"]) == str(services["worker-cpu"]["environment"]["FACE2PAINT_WORKER_METRICS_PORT"])
    mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "infra/grafana/dashboards" in mounts and "infra/grafana/provisioning" in mounts
