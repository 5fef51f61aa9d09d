"""Real servers for the reliability runs (``scripts/faults.py``, ``scripts/load.py``).

Everything listens on 127.0.0.1 and is owned by the run that starts it:

* ``RedisProcess``: a ``redis-server`` of our own with append-only persistence (revocations
  survive a restart, as the deployment guide asks of production), which can be stopped,
  restarted on the same port, frozen (SIGSTOP) and stalled (``DEBUG SLEEP``);
* ``IssuerHost``: a ``DevIssuer`` (discovery and JWKS over HTTP) that can be taken down and
  brought back on the same port with the same keys;
* ``ApiServer``: the example API (``examples/starlette_app.py``) behind bearerguard, with a
  ``RedisRevocationStore``, served by uvicorn (uvloop, httptools) in a subprocess; its RSS and
  CPU time are read from ``/proc``.

``create_example_api`` is the uvicorn factory the subprocess runs; it reads its settings from
the ``BG_*`` variables ``ApiSettings.env()`` writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # examples/ and bearerguard/ from the work tree
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402 - after the path set-up above
import structlog  # noqa: E402

from bearerguard.testing import DevIssuer  # noqa: E402

__all__ = [
    "ROOT",
    "ApiServer",
    "ApiSettings",
    "IssuerHost",
    "RedisProcess",
    "create_example_api",
    "free_port",
    "machine_description",
    "read_rss_kb",
    "temporary_file",
]

SCOPE = "items:read"
PATH = "/items"
AUDIENCE = "https://api.example"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def temporary_file(prefix: str, suffix: str) -> Path:
    """A new empty file in the temporary directory (the caller removes it)."""
    descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(descriptor)
    return Path(name)


def read_rss_kb(pid: int) -> int | None:
    """A process's resident set size in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- Redis ------------------------------------------------------------------------------------


class RedisProcess:
    """A ``redis-server`` of our own, with persistence, that faults can be injected into."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = found
        self.directory = Path(tempfile.mkdtemp(prefix="bearerguard-faults-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start (or restart on the same port, with the data it persisted); wait for PING."""
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "yes",  # revocations survive a restart (docs/deployment.md)
            "appendfsync": "always",
            "dir": str(self.directory),
            "maxmemory-policy": "noeviction",
            "enable-debug-command": "local",  # DEBUG SLEEP, for the "slow" scenario
        }
        argv = [self.binary, *(p for name, value in options.items() for p in (f"--{name}", value))]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log_text[-2000:]}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        import redis

        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM: the append-only file is flushed)."""
        process, self.process = self.process, None
        if process is None:
            return
        if self.paused:
            process.send_signal(signal.SIGCONT)
            self.paused = False
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stall(self, seconds: float) -> None:
        """Block the server for ``seconds`` with ``DEBUG SLEEP`` (every client waits)."""
        import redis

        with redis.Redis.from_url(self.url, socket_timeout=seconds + 5) as client:
            client.execute_command("DEBUG", "SLEEP", f"{seconds:.3f}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the issuer -------------------------------------------------------------------------------


class IssuerHost:
    """A ``DevIssuer`` that can go down (connection refused) and come back on its port."""

    def __init__(self, *, algorithms: tuple[str, ...] = ("RS256",), jwks_max_age: int) -> None:
        self.jwks_max_age = jwks_max_age
        self.issuer = DevIssuer(algorithms=algorithms, jwks_max_age=jwks_max_age).start()
        self.up = True

    def down(self) -> None:
        """Stop serving: the port refuses connections."""
        if self.up:
            self.issuer.stop()
            self.up = False

    def back_up(self) -> None:
        """Serve again on the same port, with the same keys, published set and overrides."""
        if self.up:
            return
        old = self.issuer
        new = DevIssuer(keys=old.keys, port=old.port, jwks_max_age=self.jwks_max_age)
        new.published = old.published
        new.overrides = old.overrides
        new._strangers = old._strangers
        self.issuer = new.start()
        self.up = True

    def close(self) -> None:
        if self.up:
            self.issuer.stop()


# -- the API server ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How the example API's guard and store are configured for a run."""

    issuer: str
    jwks_uri: str
    redis_url: str
    namespace: str = "reliability"
    jwks_ttl: float = 300.0
    cooldown: float = 30.0
    max_stale: float = 86_400.0
    fetch_timeout: float = 5.0
    failure_timeout: float = 2.0
    redis_timeout: float = 1.0
    audit_path: str = os.devnull
    audit_sample: float = 1.0
    cache_size: int = 10_000

    def env(self) -> dict[str, str]:
        """The variables ``create_example_api`` reads."""
        return {"BG_SETTINGS": json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        return cls(**json.loads(env["BG_SETTINGS"]))


def _configure_audit(path: str) -> None:
    """JSON lines to ``path`` (the application's side of the contract: the library never
    configures structlog)."""
    sink = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )


def create_example_api() -> Any:
    """The uvicorn factory: the example API with a Redis revocation store, from ``BG_SETTINGS``."""
    from bearerguard import BearerGuard, FetchPolicy, RefreshPolicy
    from bearerguard.revocation import RedisRevocationStore
    from examples.starlette_app import create_app

    settings = ApiSettings.from_env()
    _configure_audit(settings.audit_path)
    store = RedisRevocationStore(
        settings.redis_url,
        namespace=settings.namespace,
        failure_timeout=settings.failure_timeout,
        socket_timeout=settings.redis_timeout,
        connect_timeout=settings.redis_timeout,
    )
    ttl = settings.jwks_ttl
    guard = BearerGuard(
        issuer=settings.issuer,
        audience=AUDIENCE,
        jwks_uri=settings.jwks_uri,
        revocation=store,
        refresh=RefreshPolicy(
            default_ttl=ttl,
            min_ttl=ttl,
            max_ttl=ttl,
            cooldown=settings.cooldown,
            max_stale=settings.max_stale,
        ),
        fetch=FetchPolicy(timeout=settings.fetch_timeout),
        audit_sample_accepted=settings.audit_sample,
        cache_size=settings.cache_size,
    )
    app = create_app(guard)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await store.start()  # load the mirror before serving (docs/deployment.md)
        yield
        await store.aclose()

    app.router.lifespan_context = lifespan
    return app


@dataclass
class ApiServer:
    """The example API under uvicorn in a subprocess, on a port of its own."""

    settings: ApiSettings
    pin: list[str] = field(default_factory=list)
    """A command prefix (``taskset -c N``) to pin the server to a core."""
    port: int = field(default_factory=free_port)
    log_path: Path = field(default_factory=lambda: temporary_file("bearerguard-api-", ".log"))
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, probe_token: str, timeout: float = 30.0) -> ApiServer:
        """Start uvicorn and wait until ``probe_token`` gets 200 on ``/items``."""
        argv = [
            *self.pin,
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(ROOT / "scripts"),
            "_harness:create_example_api",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        env = {**os.environ, **self.settings.env(), "PYTHONPATH": str(ROOT)}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {probe_token}"}
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited:\n{self.log_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(PATH, headers=headers).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the API did not answer 200:\n{self.log_text()[-3000:]}")
                time.sleep(0.1)

    def rss_kb(self) -> int | None:
        return None if self.process is None else read_rss_kb(self.process.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (lifespan)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def closing_all(*things: Any) -> Iterator[None]:
    """Close every object given (in reverse order) however the block ends."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.close()


# -- the machine ------------------------------------------------------------------------------


def machine_description() -> dict[str, str]:
    """CPU model, cores, platform, Python and the versions of the packages that matter."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = []
    for name in (
        "bearerguard",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pyjwt",
        "cryptography",
        "redis",
        "hypothesis",
        "atheris",
    ):
        with contextlib.suppress(PackageNotFoundError):
            packages.append(f"{name} {version(name)}")
    redis_version = "not installed"
    binary = shutil.which("redis-server")
    if binary:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        redis_version = done.stdout.split()[2].removeprefix("v=") if done.stdout else "?"
    wrk = shutil.which("wrk")
    wrk_version = "not installed"
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (done.stdout or done.stderr).strip().splitlines()[0].split(" [")[0]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": ", ".join(packages),
        "redis-server": redis_version,
        "wrk": wrk_version,
    }
