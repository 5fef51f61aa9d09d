"""Which paths are served without credentials."""

from __future__ import annotations

from collections.abc import Iterable

from bearerguard.errors import ConfigurationError

__all__ = ["PublicPaths"]


class PublicPaths:
    """Paths reachable without credentials.

    A path is public when it equals an entry exactly; an entry ending in ``/*`` makes every
    path under that prefix public (``"/static/*"``), so ``"/health"`` never opens
    ``"/healthcheck-admin"``.
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise ConfigurationError(f"public path {pattern!r} must start with '/'")
            if pattern.endswith("/*"):
                prefixes.append(pattern[:-1])
            elif "*" in pattern:
                raise ConfigurationError(f"public path {pattern!r}: '*' only as a final '/*'")
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self._exact or path.startswith(self._prefixes))
