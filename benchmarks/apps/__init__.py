"""The applications the benchmarks compare, built in-process or served by uvicorn.

Every app answers ``GET /items`` with the same small JSON body, so the only difference
between two apps is how (and whether) they authenticate. Under uvicorn an app is built by a
``create_*`` factory reading its settings from the environment (``--factory``); in-process
the same ``build_*`` function is called directly, so both parts measure the same code.

Environment (set by ``benchmarks/run.py`` for each uvicorn subprocess):

``BENCH_ISSUER``     the DevIssuer's URL, the trusted ``iss``
``BENCH_JWKS_URI``   where its JWK Set is served
``BENCH_AUDIENCE``   the audience tokens are minted for
``BENCH_AUDIT``      ``off`` (accepted events sampled at 0.0) or ``all`` (every decision)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import structlog

__all__ = ["AUDIT_CONFIG", "PATH", "SCOPE", "Settings", "configure_audit_logging"]

PATH = "/items"
SCOPE = "items:read"

AUDIT_CONFIG = (
    "structlog: merge_contextvars, add_log_level, TimeStamper(fmt='iso', utc=True), "
    "JSONRenderer() (stdlib json); WriteLogger on /dev/null (one write and flush per event); "
    "filtering bound logger at INFO; cache_logger_on_first_use=True"
)
"""What ``configure_audit_logging`` sets up, stated in every report."""

_configured = False


def configure_audit_logging() -> None:
    """Configure structlog as an application would: JSON lines, cheap, to a null sink.

    The library never configures structlog; this is the application's side of the contract.
    Unconfigured, structlog would render coloured console output to stdout, which measures
    the terminal rather than bearerguard.
    """
    global _configured  # noqa: PLW0603 - one configuration per process
    if _configured:
        return
    sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )
    _configured = True


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the issuer is, and how much the guard audits."""

    issuer: str
    jwks_uri: str
    audience: str
    audit: Literal["off", "all"] = "off"

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings a benchmark run passes to a uvicorn subprocess."""
        audit = os.environ.get("BENCH_AUDIT", "off")
        if audit not in ("off", "all"):
            raise ValueError(f"BENCH_AUDIT must be 'off' or 'all', not {audit!r}")
        return cls(
            issuer=os.environ["BENCH_ISSUER"],
            jwks_uri=os.environ["BENCH_JWKS_URI"],
            audience=os.environ["BENCH_AUDIENCE"],
            audit="all" if audit == "all" else "off",
        )

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
        return 1.0 if self.audit == "all" else 0.0
