"""Usage monitoring as the guard applies it: each accepted token's use observed, and what
the monitor's verdict means for the request (``bearerguard.usage`` holds the monitors and
their policy).

A verdict past the policy's limits records one ``token.anomaly`` audit event per window and,
as the policy says, refuses the token or also revokes it in the guard's revocation store. A
monitor that fails is judged by its own failure policy: the request refused, or let in and
counted as unmonitored.
"""

from __future__ import annotations

import functools
import logging

import anyio
import anyio.to_thread

from bearerguard.audit import AuditLog, RequestInfo
from bearerguard.errors import ConfigurationError
from bearerguard.metrics import USAGE_UNMONITORED, MetricsHook, count
from bearerguard.revocation.protocol import RevocationStore
from bearerguard.token import AccessToken
from bearerguard.usage import (
    SyncUsageMonitor,
    UsageAnomalyError,
    UsageMonitor,
    UsageVerdict,
    consequence,
    usage_failed,
    usage_failures,
)

__all__ = ["UsageWatch"]

_log = logging.getLogger("bearerguard")
_UNKNOWN_REQUEST = RequestInfo("-", "-", None, None)


class UsageWatch:
    """Observes each accepted token's use with ``usage`` and applies its verdict.

    Args:
        usage: the guard's usage monitor, with an asynchronous side, a synchronous one, or
            both (``observe`` runs a synchronous-only monitor in a worker thread).
        revocation: the guard's revocation store, where ``action="revoke"`` revokes.
        audit: the guard's audit log, which records the ``token.anomaly`` event.
        metrics: counts the requests let in unmonitored (``USAGE_UNMONITORED``).
    """

    def __init__(
        self,
        usage: UsageMonitor | SyncUsageMonitor,
        *,
        revocation: RevocationStore,
        audit: AuditLog,
        metrics: MetricsHook | None,
    ) -> None:
        self._usage = usage
        self._async_usage = usage if isinstance(usage, UsageMonitor) else None
        self._sync_usage = usage if isinstance(usage, SyncUsageMonitor) else None
        self._name = str(getattr(usage, "name", type(usage).__name__))
        self._failures = usage_failures()
        self._revocation = revocation
        self._audit = audit
        self._metrics = metrics

    def has_sync_side(self) -> bool:
        """Whether the monitor answers ``observe_sync``: a Redis-backed one given only an
        asynchronous client answers every synchronous call with an error."""
        return (
            self._sync_usage is not None and getattr(self._usage, "synchronous", True) is not False
        )

    def _consequence(
        self, access: AccessToken, verdict: UsageVerdict, request: RequestInfo | None
    ) -> str:
        """What a usage verdict means for this request; records the anomaly once a window."""
        decided = consequence(verdict)
        if decided != "allow" and verdict.first:
            self._audit.anomaly(access, request or _UNKNOWN_REQUEST, verdict)
        return decided

    async def observe(
        self, access: AccessToken, client: str | None, request: RequestInfo | None
    ) -> None:
        """Observe a use of ``access`` from ``client`` and apply the verdict.

        Raises:
            UsageAnomalyError: the policy refuses the token (``reject``, ``revoke``).
            UsageMonitorError: the monitor failed and its failure policy is ``deny``.
        """
        usage = self._async_usage
        sync_usage = self._sync_usage
        monitor = usage or sync_usage
        assert monitor is not None  # noqa: S101 - only called with a usage monitor
        try:
            if usage is not None:
                verdict = await usage.observe(access, client)
            else:
                # A monitor with only the synchronous side (SyncUsageMonitor) is accepted at
                # construction: it runs in a worker thread rather than failing every request.
                assert sync_usage is not None  # noqa: S101 - usage is one or the other
                verdict = await anyio.to_thread.run_sync(sync_usage.observe_sync, access, client)
        except Exception as exc:  # noqa: BLE001 - the monitor's own failure policy decides
            usage_failed(monitor.policy, exc, self._failures, token=access)  # deny: raises
            count(self._metrics, USAGE_UNMONITORED, {"monitor": self._name})
            return
        if self._failures.failing:
            self._failures.recovered()
        decided = self._consequence(access, verdict, request)
        if decided == "revoke":
            try:
                revoke = getattr(self._revocation, "revoke_token", None)
                if callable(revoke):
                    await revoke(access.token_id, access.expires_at, issuer=access.issuer)
                else:
                    # The guard accepts a store with only revoke_token_sync: in a worker thread.
                    revoke_sync = getattr(self._revocation, "revoke_token_sync")  # noqa: B009
                    await anyio.to_thread.run_sync(
                        functools.partial(
                            revoke_sync, access.token_id, access.expires_at, issuer=access.issuer
                        )
                    )
            except Exception as exc:  # noqa: BLE001 - the token is refused all the same
                _log.warning("bearerguard: revoking a misused token failed: %r", exc)
        if decided in ("reject", "revoke"):
            raise UsageAnomalyError.of(verdict, access)

    # -- the synchronous side -------------------------------------------------------------

    def observe_sync(
        self, access: AccessToken, client: str | None, request: RequestInfo | None
    ) -> None:
        """Observe and apply the verdict as ``observe`` does, blocking this thread.

        Raises:
            ConfigurationError: the monitor has no synchronous side.
        """
        usage = self._sync_usage
        if usage is None:
            raise ConfigurationError("the usage monitor has no synchronous side (observe_sync)")
        try:
            verdict = usage.observe_sync(access, client)
        except Exception as exc:  # noqa: BLE001 - the monitor's own failure policy decides
            usage_failed(usage.policy, exc, self._failures, token=access)  # deny: raises
            count(self._metrics, USAGE_UNMONITORED, {"monitor": self._name})
            return
        if self._failures.failing:
            self._failures.recovered()
        decided = self._consequence(access, verdict, request)
        if decided == "revoke":
            try:
                getattr(self._revocation, "revoke_token_sync")(  # noqa: B009 - not in the protocol
                    access.token_id, access.expires_at, issuer=access.issuer
                )
            except Exception as exc:  # noqa: BLE001 - the token is refused all the same
                _log.warning("bearerguard: revoking a misused token failed: %r", exc)
        if decided in ("reject", "revoke"):
            raise UsageAnomalyError.of(verdict, access)
