"""The public surface: sorted __all__ lists that name real objects."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "bearerguard",
    "bearerguard.errors",
    "bearerguard.revocation",
    "bearerguard.asgi",
    "bearerguard.django",
    "bearerguard.decorators",
    "bearerguard.testing",
    "bearerguard.fastapi",
    "bearerguard.mcp",
    "bearerguard.metadata",
    "bearerguard.mtls",
    "bearerguard.issuers",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda item: (not item.isupper(), item))
    for item in exported:
        assert hasattr(module, item), item


def test_the_names_the_spine_promises() -> None:
    from bearerguard import AccessToken, BearerGuard, get_access_token, requires_scopes
    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.revocation import MemoryRevocationStore, RevocationStore

    assert all([AccessToken, BearerGuard, get_access_token, requires_scopes])
    assert all([BearerGuardMiddleware, MemoryRevocationStore, RevocationStore])
