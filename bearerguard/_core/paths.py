"""Which paths are served without credentials."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from bearerguard.errors import ConfigurationError

__all__ = ["PublicPaths"]


class PublicPaths:
    """Paths reachable without credentials.

    A path is public when it equals an entry exactly; an entry ending in ``/*`` makes every
    path under that prefix public (``"/static/*"``), so ``"/health"`` never opens
    ``"/healthcheck-admin"``. A path with a ``.`` or ``..`` segment is never public
    (``"/static/../me"`` is ``/me`` to whatever normalises it); nor may an entry have one.
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise ConfigurationError(f"public path {pattern!r} must start with '/'")
            if _has_dot_segment(pattern):
                raise ConfigurationError(f"public path {pattern!r} has a dot segment")
            if pattern.endswith("/*"):
                prefixes.append(pattern[:-1])
            elif "*" in pattern:
                raise ConfigurationError(f"public path {pattern!r}: '*' only as a final '/*'")
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __iter__(self) -> Iterator[str]:
        """The entries, as given: ``public_paths=`` takes a ``PublicPaths`` too."""
        yield from sorted(self._exact)
        for prefix in self._prefixes:
            yield prefix + "*"

    def __contains__(self, path: object) -> bool:
        return (
            isinstance(path, str)
            and (path in self._exact or path.startswith(self._prefixes))
            and not _has_dot_segment(path)
        )


def _has_dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, which a proxy, a mounted app or a file
    server may remove (RFC 3986 §5.2.4) to reach a path that is not public: fail closed.

    Percent-encoded dots count too (``%2e%2e``, RFC 3986 §2.3): a server or proxy that
    decodes the path once more would see dots. So do the spellings some servers read as
    dot segments: a backslash (or ``%5c``) as the separator (IIS, and proxies normalising
    for it), and a segment's ``;`` parameters (``..;``, Tomcat).
    """
    # The common path has none of them: four C-level scans, no split.
    if (
        path.find("/.") == -1
        and path.find("%2") == -1
        and path.find("\\") == -1
        and path.find("%5") == -1
    ):
        return False
    normal = path.lower().replace("%5c", "/").replace("\\", "/").replace("%2e", ".")
    return any(segment.partition(";")[0] in (".", "..") for segment in normal.split("/"))
