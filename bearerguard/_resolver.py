"""Host name lookups that end by a deadline, for the synchronous HTTP edge.

``socket.getaddrinfo`` takes no timeout: a slow resolver holds its caller as long as it
likes (the C library retries for tens of seconds), before the connection's own timeout even
starts. Here the lookup runs in a thread of its own and is waited for until the deadline
only. Callers looking up one name meanwhile share its lookup: a resolver that hangs costs
one thread per name, not one per request, and a lookup given up on ends in its thread.

The asynchronous edge needs none of this: the event loop resolves in a worker thread
(asyncio's executor, trio's abandonable threads), and the deadline (``anyio.fail_after``)
stops waiting for it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["resolve"]


@dataclass(slots=True)
class _Lookup:
    """One ``getaddrinfo`` under way, and its outcome once ``done`` is set."""

    done: threading.Event = field(default_factory=threading.Event)
    addresses: list[str] = field(default_factory=list)
    error: str | None = None


_lookups: dict[tuple[str, int], _Lookup] = {}
_lock = threading.Lock()


def _forked() -> None:
    """In a child process after ``fork()``: the lookups under way in the parent went on in
    threads that did not survive the fork, so none of them will ever end here (and a lock
    held by one of them at the fork is never released). A pre-forking server
    (gunicorn --preload) warmed up during a slow lookup left each worker waiting for it,
    every fetch of that name timed out, for the worker's whole life."""
    global _lock  # noqa: PLW0603 - the module's state, made anew in the child
    _lookups.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses of ``host``, in the resolver's order, waiting at most ``timeout``.

    An IP address is returned as it is, without a lookup.

    Raises:
        TimeoutError: no answer within ``timeout``; the lookup goes on in its thread, and
            callers looking up the same name meanwhile wait for it.
        OSError: the name does not resolve (``socket.gaierror``'s message).
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    key = (host, port)
    with _lock:
        lookup = _lookups.get(key)
        if lookup is None:
            lookup = _Lookup()
            thread = threading.Thread(
                target=_look_up, args=(key, lookup), name="bearerguard-resolve", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:
                # Out of threads: this fetch fails (closed), and the lookup is not left
                # registered with no thread to end it, which every later one would wait on.
                raise OSError(f"resolving {host} failed: {exc}") from exc
            _lookups[key] = lookup
    if not lookup.done.wait(max(timeout, 0.0)):
        raise TimeoutError(f"resolving {host} took longer than the deadline")
    if lookup.error is not None:
        # A new exception per caller: one object raised in several threads shares a traceback.
        raise OSError(lookup.error)
    return lookup.addresses


def _look_up(key: tuple[str, int], lookup: _Lookup) -> None:
    try:
        found = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
        # In order, each once; an entry whose address is not text (IPv6 support missing
        # from this Python) is of no use to a TCP connection.
        addresses = [info[4][0] for info in found if isinstance(info[4][0], str)]
        lookup.addresses = list(dict.fromkeys(addresses))
        if not lookup.addresses:
            lookup.error = f"{key[0]} resolves to no usable address"
    except Exception as exc:  # noqa: BLE001 - whatever the resolver raised, the lookup failed
        # Not only OSError and UnicodeError: a resolver may raise anything (LookupError in a
        # frozen app without the idna codec, a patched getaddrinfo's own exception), and a
        # lookup ended with neither addresses nor an error left its callers nothing to go on.
        lookup.error = f"resolving {key[0]} failed: {type(exc).__name__}: {exc}"
    finally:
        with _lock:
            # Not cached: the next lookup asks the resolver again (which honours DNS TTLs).
            if _lookups.get(key) is lookup:
                del _lookups[key]
        lookup.done.set()
