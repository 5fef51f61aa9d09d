"""Metrics through the real middlewares, the Prometheus exporter, and the readiness check."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient

from bearerguard import AccessToken
from bearerguard.asgi import BearerGuardMiddleware
from bearerguard.errors import ConfigurationError
from bearerguard.metrics import (
    CACHE,
    DECISION_SECONDS,
    DECISIONS,
    JWKS_FETCHES,
    REVOCATION_FAILURES,
    InMemoryMetrics,
    PrometheusMetrics,
)
from bearerguard.readiness import ReadinessEndpoint, readiness, readiness_wsgi
from bearerguard.testing import DevIssuer, Override
from tests.apps import build_app, build_flask_app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("stack", ["asgi", "wsgi"])
def test_every_decision_is_counted_whatever_the_sampling(stack: str, issuer: DevIssuer) -> None:
    metrics = InMemoryMetrics()
    guard = issuer.guard(metrics=metrics, audit_sample_accepted=0.0)
    token = issuer.mint(scopes=["items:read"])
    if stack == "asgi":
        client: httpx.Client = TestClient(build_app(guard))
    else:
        client = httpx.Client(
            transport=httpx.WSGITransport(app=build_flask_app(guard)), base_url="http://t"
        )
    with client:
        for _ in range(3):
            assert client.get("/items", headers=bearer(token)).status_code == 200
        assert client.get("/items").status_code == 401
        assert client.get("/items", headers=bearer(issuer.mint_expired())).status_code == 401
        assert client.post("/items", headers=bearer(token)).status_code == 403
    assert metrics.count(DECISIONS, event="token.accepted", reason="ok") == 4
    assert metrics.count(DECISIONS, event="token.rejected", reason="missing_token") == 1
    assert metrics.count(DECISIONS, event="token.rejected", reason="expired") == 1
    assert metrics.count(DECISIONS, event="scope.denied", reason="insufficient_scope") == 1
    assert metrics.count(CACHE, result="miss") == 2  # the token, then the expired one
    assert metrics.count(CACHE, result="hit") == 3
    assert metrics.count(JWKS_FETCHES, result="ok") == 1
    (latency,) = [
        h
        for h in metrics.snapshot()["histograms"]
        if h["name"] == DECISION_SECONDS and h["labels"] == {"event": "token.accepted"}
    ]
    assert latency["count"] == 4
    assert sum(latency["buckets"].values()) == 4


class BrokenStore:
    name = "broken"

    async def is_revoked(self, token: AccessToken) -> bool:
        raise ConnectionError("down")


def test_fetch_and_store_failures_are_counted(issuer: DevIssuer) -> None:
    metrics = InMemoryMetrics()
    issuer.overrides["/jwks.json"] = Override(status=500)
    guard = issuer.guard(metrics=metrics)
    with TestClient(build_app(guard)) as client:
        assert client.get("/me", headers=bearer(issuer.mint())).status_code == 503
    assert metrics.count(JWKS_FETCHES, result="error") == 1
    issuer.overrides.clear()
    failing = issuer.guard(metrics=metrics, revocation=BrokenStore())
    with TestClient(build_app(failing)) as client:
        assert client.get("/me", headers=bearer(issuer.mint())).status_code == 503
    assert metrics.count(REVOCATION_FAILURES, store="broken") == 1
    assert metrics.count(DECISIONS, event="auth.unavailable", reason="revocation_unavailable") == 1


def test_metrics_must_be_a_hook(session_issuer: DevIssuer) -> None:
    with pytest.raises(ConfigurationError):
        session_issuer.guard(metrics=object())


def test_prometheus_exporter(issuer: DevIssuer) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    guard = issuer.guard(metrics=metrics)
    metrics_with_age = PrometheusMetrics(CollectorRegistry(), guard=guard)
    assert metrics_with_age is not None
    with TestClient(build_app(guard)) as client:
        client.get("/me", headers=bearer(issuer.mint()))
        client.get("/me")
    text = generate_latest(registry).decode()
    assert 'bearerguard_decisions_total{event="token.accepted",reason="ok"} 1.0' in text
    assert 'bearerguard_decisions_total{event="token.rejected",reason="missing_token"} 1.0' in text
    assert 'bearerguard_token_cache_total{result="miss"} 1.0' in text
    assert "bearerguard_decision_seconds_bucket" in text
    assert 'bearerguard_jwks_fetches_total{result="ok"} 1.0' in text


def test_readiness_asgi(issuer: DevIssuer) -> None:
    guard = issuer.guard()
    app = Starlette(
        routes=[Mount("/ready", app=ReadinessEndpoint(guard))],
        middleware=[
            Middleware(BearerGuardMiddleware, guard=guard, public_paths=["/ready/", "/ready"])
        ],
    )
    with TestClient(app) as client:
        ready = client.get("/ready/")
        assert ready.status_code == 200
        report = ready.json()
        assert report["ready"] is True
        assert report["keys"]["kids"] == 2
        assert report["keys"]["age_seconds"] >= 0
        assert report["revocation"] == {"store": "memory", "healthy": True}
        assert client.post("/ready/").status_code == 405
        assert client.head("/ready/").status_code == 200


def test_readiness_reports_missing_keys(issuer: DevIssuer) -> None:
    issuer.overrides["/jwks.json"] = Override(status=500)
    guard = issuer.guard()
    with TestClient(ReadinessEndpoint(guard)) as client:
        response = client.get("/")
    assert response.status_code == 503
    assert response.json()["keys"]["ready"] is False
    issuer.overrides.clear()
    assert readiness(guard)["ready"] is False  # until the cooldown allows another fetch


def test_readiness_wsgi(issuer: DevIssuer) -> None:
    app = readiness_wsgi(issuer.guard())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.json()["ready"] is True
