"""Sender-constrained tokens: one request's checks of the binding a token carries.

A DPoP-bound token (``cnf.jkt``) is accepted only with a proof of its key for this request
(RFC 9449), a certificate-bound one (``cnf.x5t#S256``) only over a connection with that
client certificate (RFC 8705 §3), whether the token was just verified or came from the
cache. These checks need no I/O; the guard records a proof's ``jti`` in the replay store
afterwards, last (``check_dpop_binding`` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NoReturn

from bearerguard._core.dpop import check_proof
from bearerguard._core.extract import redact_token
from bearerguard._core.mtls import check_certificate_binding
from bearerguard.dpop import DPoPPolicy, DPoPRequest
from bearerguard.errors import (
    AuthError,
    CertificateBindingError,
    InvalidDPoPProofError,
    InvalidTokenError,
    ReplayStoreError,
    UseDPoPNonceError,
)
from bearerguard.mtls import CertificateBinding
from bearerguard.token import AccessToken

__all__ = ["check_certificate", "check_dpop_binding", "replay_failed"]


def check_dpop_binding(
    policy: DPoPPolicy,
    access: AccessToken,
    request: DPoPRequest | None,
    clock: Callable[[], float],
) -> tuple[str, float] | None:
    """RFC 9449 checks for this request, whether the token came from the cache or not.

    Returns the replay-store key and lifetime of the proof's ``jti``, or ``None`` for a
    request with the Bearer scheme (allowed only for unbound tokens, in "allowed" mode).
    The caller records the key after the certificate and revocation checks: a revoked
    token, or one without its certificate, would otherwise fill a bounded store with its
    proofs, and every other client would be answered 503 (RFC 9449 §11.1).
    """
    cnf = access.claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if request is None or request.scheme == "bearer":
        if policy.mode == "required":
            raise InvalidTokenError("Bearer scheme used where DPoP is required")
        if isinstance(cnf, Mapping) and "jkt" in cnf:  # even "jkt": null
            # RFC 9449 §7.2: a DPoP-bound token must not be accepted as a bearer token.
            raise InvalidTokenError("DPoP-bound token presented with the Bearer scheme")
        return None
    if not request.proofs:
        raise InvalidDPoPProofError("no DPoP proof header")
    if len(request.proofs) > 1:
        raise InvalidDPoPProofError("several DPoP proof headers")  # RFC 9449 §4.3 step 1
    now = clock()
    try:
        proof = check_proof(
            request.proofs[0],
            method=request.method,
            url=request.url,
            access_token=access.raw,
            now=now,
            algorithms=policy.allowed,
            iat_window=policy.iat_window,
            leeway=policy.leeway,
        )
    except AuthError:
        raise
    except Exception as exc:
        raise InvalidDPoPProofError(f"unexpected {type(exc).__name__} in the proof") from exc
    if policy.nonce is not None and (
        proof.nonce is None or not policy.nonce.is_valid(proof.nonce, now)
    ):
        raise UseDPoPNonceError(policy.nonce.issue(now), "proof without a current nonce")
    if not isinstance(jkt, str):
        raise InvalidTokenError("DPoP scheme used with a token that is not DPoP-bound")
    if jkt != proof.thumbprint:
        raise InvalidDPoPProofError("the proof key is not the key the token is bound to")
    ttl = max(proof.issued_at + policy.iat_window + policy.leeway - now, 1.0)
    return f"{proof.thumbprint}:{proof.jti}", ttl


def replay_failed(access: AccessToken, exc: Exception) -> NoReturn:
    """Raise what a replay store's failure to record a proof's ``jti`` means for the request."""
    # A store refusing one proof (a key over its share) is that client's 401, not a 503.
    if isinstance(exc, ReplayStoreError | InvalidDPoPProofError):
        raise exc
    # The application's store may quote the token: redacted before the cut, as the guard's
    # _revocation_failed does (a token cut in two is no longer found).
    detail = redact_token(f"{type(exc).__name__}: {exc}", access.raw)
    raise ReplayStoreError(detail[:200]) from exc


def check_certificate(
    policy: CertificateBinding, access: AccessToken, certificate: bytes | None
) -> bool:
    """RFC 8705 §3 for this request, whether the token came from the cache or not.

    Returns whether the token is certificate-bound (its binding held): a later refusal
    (revoked, the store down) is audited with ``binding="mtls"``, as its acceptance is.
    """
    try:
        bound = check_certificate_binding(access.claims, certificate)
    except CertificateBindingError as exc:
        exc.binding, exc.token = "mtls", access
        raise
    if policy.required and not bound:
        refusal = CertificateBindingError("token not certificate-bound where mTLS is required")
        refusal.binding, refusal.token = "mtls", access
        raise refusal
    return bound
