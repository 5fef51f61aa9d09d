"""The benchmark apps' audit settings: what each measured case hands to structlog."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from starlette.testclient import TestClient

import benchmarks.apps
from bearerguard.testing import DevIssuer
from benchmarks.apps import (
    PATH,
    SCOPE,
    Settings,
    audit_processors,
    dropping_audit_logger,
    starlette_apps,
    stdlib_audit_logger,
)


@pytest.fixture(autouse=True)
def structlog_left_alone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The apps configure structlog once per process: here, as if already done.

    The other tests keep structlog's defaults, and the dropped case never uses them.
    """
    monkeypatch.setattr(benchmarks.apps, "_configured", True)
    configured = structlog.get_config()
    yield
    assert structlog.get_config() == configured


def settings_of(issuer: DevIssuer, audit: str) -> Settings:
    environment = {
        "BENCH_ISSUER": issuer.url,
        "BENCH_JWKS_URI": issuer.jwks_uri,
        "BENCH_AUDIENCE": issuer.audience,
        "BENCH_AUDIT": audit,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        return Settings.from_env()


@pytest.mark.parametrize(("audit", "sampled"), [("off", 0.0), ("all", 1.0), ("dropped", 1.0)])
def test_each_audit_setting_reaches_a_uvicorn_worker(
    session_issuer: DevIssuer, audit: str, sampled: float
) -> None:
    settings = settings_of(session_issuer, audit)
    assert settings.audit == audit
    assert settings.env()["BENCH_AUDIT"] == audit
    assert settings.sample_accepted == sampled


def test_an_unknown_audit_setting_is_refused(session_issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="BENCH_AUDIT must be"):
        settings_of(session_issuer, "some")


def test_the_dropping_logger_drops_every_event_before_it_is_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert dropping_audit_logger().info("token.accepted", sub="alice") is None
    assert capsys.readouterr().out == ""


def test_the_dropped_case_serves_its_requests_with_every_event_dropped(
    session_issuer: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    app = starlette_apps.build_bearerguard(settings_of(session_issuer, "dropped"))
    token = session_issuer.mint(scopes=[SCOPE])
    with TestClient(app) as client:
        for _ in range(3):
            answer = client.get(PATH, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200
        refused = client.get(PATH, headers={"Authorization": "Bearer not.a.token"})
        assert refused.status_code == 401
    assert capsys.readouterr().out == ""


def rendered_event(logger: Any, sink: io.BytesIO | io.StringIO) -> dict[str, Any]:
    logger.info("token.accepted", sub="alice", scopes=["items:read"])
    line = sink.getvalue()
    assert line.count("\n" if isinstance(line, str) else b"\n") == 1
    event: dict[str, Any] = json.loads(line)
    return event


def test_the_configured_pipeline_renders_one_json_line_per_event() -> None:
    sink = io.BytesIO()
    bound_logger: Any = structlog.make_filtering_bound_logger(logging.INFO)
    logger = bound_logger(structlog.BytesLogger(sink), audit_processors(), {})
    event = rendered_event(logger, sink)
    assert event["event"] == "token.accepted"
    assert event["level"] == "info"
    assert event["sub"] == "alice"
    assert event["scopes"] == ["items:read"]
    assert event["timestamp"].endswith("Z")


def test_the_stdlib_pipeline_renders_the_same_event() -> None:
    sink = io.StringIO()
    event = rendered_event(stdlib_audit_logger(sink), sink)
    assert event["event"] == "token.accepted"
    assert event["level"] == "info"
    assert event["sub"] == "alice"
    assert event["timestamp"].endswith("Z")
