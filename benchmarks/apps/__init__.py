"""The applications the benchmarks compare, built in-process or served by uvicorn.

Every app answers ``GET /items`` with the same small JSON body, so the only difference
between two apps is how (and whether) they authenticate. Under uvicorn an app is built by a
``create_*`` factory reading its settings from the environment (``--factory``); in-process
the same ``build_*`` function is called directly, so both parts measure the same code.

Environment (set by ``benchmarks/run.py`` for each uvicorn subprocess):

``BENCH_ISSUER``     the DevIssuer's URL, the trusted ``iss``
``BENCH_JWKS_URI``   where its JWK Set is served
``BENCH_AUDIENCE``   the audience tokens are minted for
``BENCH_AUDIT``      ``off`` (accepted events sampled at 0.0), ``all`` (every decision) or
                     ``dropped`` (every decision, each event dropped by the application's
                     first structlog processor: what the library and structlog's dispatch
                     cost before the application's rendering)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TextIO

import orjson
import structlog

__all__ = [
    "AUDIT_CONFIG",
    "AUDIT_DROPPED",
    "AUDIT_STDLIB",
    "PATH",
    "SCOPE",
    "Audit",
    "Settings",
    "audit_processors",
    "configure_audit_logging",
    "dropping_audit_logger",
    "stdlib_audit_logger",
]

PATH = "/items"
SCOPE = "items:read"

AUDIT_CONFIG = (
    "structlog's own fastest production configuration (its docs, Performance): "
    "merge_contextvars, add_log_level, format_exc_info, TimeStamper(fmt='iso', utc=True), "
    "JSONRenderer(serializer=orjson.dumps); BytesLogger on /dev/null (one write and flush per "
    "event); filtering bound logger at INFO; cache_logger_on_first_use=True"
)
"""What ``configure_audit_logging`` sets up, stated in every report."""

AUDIT_STDLIB = "stdlib JSONRenderer() and WriteLogger, the benchmarks' earlier pipeline"
"""How the comparison row with the standard library's JSON encoder labels itself."""

AUDIT_DROPPED = "events dropped by the app's first processor"
"""How the ``dropped`` cases label themselves."""

Audit = Literal["off", "all", "dropped"]
_AUDITS: tuple[Audit, ...] = ("off", "all", "dropped")

_configured = False


def audit_processors() -> list[Any]:
    """The processors of structlog's fastest production configuration, as its docs give it.

    JSON lines rendered by orjson, to a ``BytesLogger`` (orjson returns bytes).
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(serializer=orjson.dumps),
    ]


def configure_audit_logging() -> None:
    """Configure structlog as a performance-minded application would, to a null sink.

    The library never configures structlog; this is the application's side of the contract.
    Unconfigured, structlog would render coloured console output to stdout, which measures
    the terminal rather than bearerguard.
    """
    global _configured  # noqa: PLW0603 - one configuration per process
    if _configured:
        return
    sink = open(os.devnull, "wb")  # noqa: SIM115 - open for the process's life
    structlog.configure(
        processors=audit_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.BytesLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )
    _configured = True


def stdlib_audit_logger(file: TextIO | None = None) -> Any:
    """A logger rendering with the standard library's JSON encoder, for comparison.

    The same processors but for ``format_exc_info``, with ``JSONRenderer()``'s default
    ``json.dumps`` and a ``WriteLogger`` on ``file`` (by default /dev/null): what the
    benchmarks configured until structlog's fastest configuration replaced it.
    """
    sink = file if file is not None else open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ]
    return _bound(structlog.WriteLogger(sink), processors)


def _drop(logger: Any, method: str, event: Any) -> NoReturn:
    raise structlog.DropEvent


def dropping_audit_logger() -> Any:
    """A logger whose first processor drops every event, given to the guard as ``audit_logger``.

    The guard builds each event and hands it to structlog exactly as with the configured
    logger; only the rendering and the write are gone. Timed against the configured
    pipeline, it splits an audited request's cost into the library's share and the
    application's.
    """
    return _bound(structlog.WriteLogger(), [_drop])


def _bound(logger: Any, processors: list[Any]) -> Any:
    """The class ``structlog.configure`` would install, bound directly: no lazy proxy."""
    bound_logger: Any = structlog.make_filtering_bound_logger(logging.INFO)
    return bound_logger(logger, processors, {})


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the issuer is, and how much the guard audits."""

    issuer: str
    jwks_uri: str
    audience: str
    audit: Audit = "off"

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings a benchmark run passes to a uvicorn subprocess."""
        audit = os.environ.get("BENCH_AUDIT", "off")
        for known in _AUDITS:
            if audit == known:
                return cls(
                    issuer=os.environ["BENCH_ISSUER"],
                    jwks_uri=os.environ["BENCH_JWKS_URI"],
                    audience=os.environ["BENCH_AUDIENCE"],
                    audit=known,
                )
        raise ValueError(f"BENCH_AUDIT must be 'off', 'all' or 'dropped', not {audit!r}")

    def env(self) -> dict[str, str]:
        """The environment variables ``from_env`` reads."""
        return {
            "BENCH_ISSUER": self.issuer,
            "BENCH_JWKS_URI": self.jwks_uri,
            "BENCH_AUDIENCE": self.audience,
            "BENCH_AUDIT": self.audit,
        }

    @property
    def sample_accepted(self) -> float:
        """``audit_sample_accepted`` for the guard."""
        return 0.0 if self.audit == "off" else 1.0
