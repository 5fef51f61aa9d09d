"""Which paths are served without credentials."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from bearerguard.errors import ConfigurationError

__all__ = ["PublicPaths"]


class PublicPaths:
    """Paths reachable without credentials.

    A path is public when it equals an entry exactly; an entry ending in ``/*`` makes every
    path under that prefix public (``"/static/*"``), so ``"/health"`` never opens
    ``"/healthcheck-admin"``. A path with a ``.`` or ``..`` segment is never public
    (``"/static/../me"`` is ``/me`` to whatever normalises it); nor may an entry have one.

    Entries are matched against the request's decoded path alone, so an entry that could
    never be one (a query, a fragment, white space, a control character, a percent-encoding)
    is refused at construction rather than silently protecting what it was meant to open.

    Raises:
        ConfigurationError: ``patterns`` is a single string, or an entry is not a path.
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            # Iterated, a string is one-character "paths": "/" alone would open the root.
            raise ConfigurationError(f"public paths are a list of paths: [{patterns!r}]")
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            _check_pattern(pattern)
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


# RFC 3986 §2.1: a "%" followed by two hex digits; the request path is matched decoded.
# "%25" is refused too, not read as a literal "%": a "%" not followed by two hex digits is
# written as itself ("/50%" matches a request for "/50%25"), so all "%25" would add is a
# decoded path holding "%XX" ("/a%41"). RFC 3986 §2.4 warns that decoding twice misreads
# such data as an encoding: a proxy or framework that does serves another path ("/aA"),
# as "%2e%2e" becomes "..". And "/50%25" would then have two meanings.
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


def _check_pattern(pattern: object) -> None:
    """Refuse an entry that no decoded request path (ASGI ``path``, WSGI ``PATH_INFO``)
    would ever equal: left in, it would silently keep its path protected."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigurationError(f"public path {pattern!r} must start with '/'")
    if "?" in pattern:
        raise ConfigurationError(
            f"public path {pattern!r}: public paths match the path only, not the query string"
        )
    if "#" in pattern:
        # RFC 3986 §3.5: a fragment is never sent to the server.
        raise ConfigurationError(
            f"public path {pattern!r}: a fragment is never part of a request's path"
        )
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in pattern):
        raise ConfigurationError(
            f"public path {pattern!r} has white space or control characters: none belongs "
            f"in a path (RFC 3986 §3.3)"
        )
    if _has_dot_segment(pattern):
        raise ConfigurationError(f"public path {pattern!r} has a dot segment")
    if "%25" in pattern:
        raise ConfigurationError(
            f"public path {pattern!r} is percent-encoded: public paths match the decoded "
            f"path, and a literal '%' is written as itself ('/50%', not '/50%25'); no "
            f"entry holds '%' and two hex digits, which a second decoding would read as an "
            f"encoding (RFC 3986 §2.4)"
        )
    if _PERCENT_ENCODED.search(pattern):
        raise ConfigurationError(
            f"public path {pattern!r} is percent-encoded: public paths match the decoded "
            f"path, so write the characters themselves ('/café', not '/caf%C3%A9')"
        )


def _has_dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, which a proxy, a mounted app or a file
    server may remove (RFC 3986 §5.2.4) to reach a path that is not public: fail closed.

    Percent-encoded dots count too (``%2e%2e``, RFC 3986 §2.3): a server or proxy that
    decodes the path once more would see dots, and slashes around them where the path
    holds ``%2f`` (``..%2f..%2fadmin``). So do the spellings some servers read as
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
    normal = (
        path.lower().replace("%5c", "/").replace("%2f", "/").replace("\\", "/").replace("%2e", ".")
    )
    return any(segment.partition(";")[0] in (".", "..") for segment in normal.split("/"))
