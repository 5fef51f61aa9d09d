"""Shared fixtures: a real development issuer on 127.0.0.1 and app builders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bearerguard.testing import DevIssuer
from tests import helpers

pytest_plugins = ["tests.redis_server"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def session_issuer() -> Iterator[DevIssuer]:
    """One issuer for tests that only mint tokens and never change its keys."""
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test (``helpers.closed_port``:
    held bound, so no other process can start listening on it meanwhile)."""
    with helpers.closed_port() as port:
        yield port


@pytest.fixture
def issuer() -> Iterator[DevIssuer]:
    """A fresh issuer per test, for tests that rotate keys or inject faults."""
    with DevIssuer() as issuer:
        yield issuer
