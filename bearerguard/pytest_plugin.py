"""pytest fixtures for testing APIs protected by bearerguard (opt-in).

Enable them in a test suite with either of:

- ``pytest_plugins = ["bearerguard.pytest_plugin"]`` in the root ``conftest.py``;
- ``-p bearerguard`` on the command line, or ``addopts = "-p bearerguard"`` in the pytest
  configuration (the ``bearerguard`` pytest11 entry point, which does nothing else).

Merely installing bearerguard adds no fixture to anyone's test run: see
``bearerguard._pytest_optin`` for why the entry point is a switch and not this module.

Fixtures (function-scoped, so no test sees another's state):

``bearerguard_issuer``
    A started ``DevIssuer``: discovery and a JWKS on 127.0.0.1, tokens from ``mint`` and
    its bad variants. Its keys are generated once per session and shared.
``bearerguard_guard``
    A ``BearerGuard`` trusting that issuer, with ``bearerguard_guard_options``; the issuer
    then mints for the guard's audience.
``bearerguard_guard_options``
    ``{}``; override this fixture to configure ``bearerguard_guard`` (``audience``,
    ``scope_claims``, ``revocation`` ...).
``bearerguard_audit``
    The ``AuditEvents`` captured during the test (``bearerguard.testing.audit_events``).

Point your application at ``bearerguard_guard`` the way your app factory takes its guard,
then mint tokens with ``bearerguard_issuer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bearerguard.guard import BearerGuard
    from bearerguard.testing import AuditEvents, DevIssuer, SigningKey

__all__ = [
    "bearerguard_audit",
    "bearerguard_guard",
    "bearerguard_guard_options",
    "bearerguard_issuer",
    "bearerguard_signing_keys",
]


@pytest.fixture(scope="session")
def bearerguard_signing_keys() -> list[SigningKey]:
    """An RS256 and an ES256 key, generated once for the session's issuers."""
    from bearerguard.testing import SigningKey  # noqa: PLC0415 - only when a test asks

    return [SigningKey.generate("RS256"), SigningKey.generate("ES256")]


@pytest.fixture
def bearerguard_issuer(bearerguard_signing_keys: list[SigningKey]) -> Iterator[DevIssuer]:
    """A development issuer serving discovery and its JWKS on 127.0.0.1 for one test."""
    from bearerguard.testing import DevIssuer  # noqa: PLC0415 - only when a test asks

    with DevIssuer(keys=bearerguard_signing_keys) as issuer:
        yield issuer


@pytest.fixture
def bearerguard_guard_options() -> dict[str, Any]:
    """Options for ``bearerguard_guard``; override this fixture to change them."""
    return {}


@pytest.fixture
def bearerguard_guard(
    bearerguard_issuer: DevIssuer, bearerguard_guard_options: dict[str, Any]
) -> BearerGuard:
    """A guard that trusts ``bearerguard_issuer``, built with ``bearerguard_guard_options``.

    The issuer then mints for the guard's (first) audience, as a provider mints for the API
    that asked: options naming another ``audience`` or a ``resource`` need no ``aud=`` on
    every ``mint``.
    """
    guard = bearerguard_issuer.guard(**bearerguard_guard_options)
    bearerguard_issuer.audience = guard.audiences[0]
    return guard


@pytest.fixture
def bearerguard_audit() -> Iterator[AuditEvents]:
    """The audit events emitted during the test."""
    from bearerguard.testing import audit_events  # noqa: PLC0415 - only when a test asks

    with audit_events() as events:
        yield events
