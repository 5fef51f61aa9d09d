"""``bearerguard token mint | inspect | verify``.

``mint`` signs development tokens only: with an ephemeral key (or a key file of yours) for an
issuer on a loopback or reserved test name, never for a real provider. ``inspect`` decodes
without verifying anything and says so. ``verify`` runs the real ``BearerGuard`` against an
issuer's published keys and names the exact check that refuses a token.

Registration (``add_token_commands``) imports nothing heavy; each handler imports what it
needs when it runs, so ``bearerguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import ipaddress
import json
import math
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bearerguard._cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CommandError,
    Commands,
    Console,
    add_output_options,
    parse_json,
    port_number,
    positive_seconds,
    print_usage,
    read_file,
    read_token,
    relative,
    seconds,
    terminal_safe,
    usage_error,
)

__all__ = ["add_token_commands", "inspect_token"]

UNVERIFIED = (
    "UNVERIFIED: decoded without checking the signature, the issuer, the audience or the "
    "expiry. Nothing below can be trusted."
)
DEV_ONLY = (
    "development only: signed by a key no real identity provider uses, for an issuer on a "
    "loopback or reserved test name"
)
# RFC 2606 and RFC 6761: names no real identity provider can have.
_RESERVED_SUFFIXES = (".test", ".example", ".invalid", ".localhost")
_KEYS_FROM_TOKEN = ("jku", "x5u", "jwk", "x5c")
_DEFAULT_MAX_TOKEN_BYTES = 8192
_MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM key of RSA 16384 bits is about 13 KB
_TIME_CLAIMS = ("iat", "nbf", "exp")


def add_token_commands(commands: Commands) -> None:
    """Register ``token`` and its sub-commands."""
    parser = commands.add_parser(
        "token",
        help="mint (development only), inspect or verify access tokens",
        description="Mint development tokens, decode tokens, or verify them against an issuer.",
    )
    parser.set_defaults(handler=partial(print_usage, parser))
    leaves = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_mint(leaves)
    _add_inspect(leaves)
    _add_verify(leaves)


# -- mint -------------------------------------------------------------------------------


def _add_mint(commands: Commands) -> None:
    parser = commands.add_parser(
        "mint",
        help="sign a development token (never for a real issuer)",
        description=textwrap.fill(
            "Sign an access token with an ephemeral development key, or a PEM key file of "
            "yours, and print it. The issuer must be a loopback address or a reserved test "
            "name (.test, .example, .invalid, .localhost): this is not a way to make tokens "
            "for a real identity provider. With --serve, discovery and the JWKS are served "
            "on 127.0.0.1 until Ctrl-C, so an API can verify the token.",
            width=79,
        ),
        epilog=(
            "examples:\n"
            "  bearerguard token mint --scope items:read --sub alice\n"
            "  bearerguard token mint --key dev.pem --serve --port 9000\n"
            "  bearerguard token mint --key dev.pem --issuer http://127.0.0.1:9000 "
            "--claim tenant=acme"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scope",
        "-s",
        action="append",
        default=[],
        metavar="SCOPE",
        help="a scope to grant; repeat it, or give several separated by spaces",
    )
    parser.add_argument("--sub", default="user-1", help="the subject (default: user-1)")
    parser.add_argument(
        "--audience", default="https://api.example", help="the aud (default: https://api.example)"
    )
    parser.add_argument(
        "--expires-in",
        type=seconds,
        default=300.0,
        metavar="SECONDS",
        help="lifetime in seconds (default: 300; negative for an expired token)",
    )
    parser.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further claim; VALUE is read as JSON when it parses, else as a string",
    )
    parser.add_argument(
        "--algorithm",
        choices=("RS256", "PS256", "ES256", "EdDSA", "Ed25519", "Ed448"),
        help="the signing algorithm (EdDSA: an Ed25519 key)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        metavar="PEM",
        help="sign with this PEM private key (RSA >= 2048 bits, EC P-256, Ed25519 or Ed448; "
        "its kid is its RFC 7638 thumbprint) instead of an ephemeral one, so tokens stay "
        "verifiable",
    )
    parser.add_argument(
        "--issuer",
        metavar="URL",
        help="the iss (default: the ephemeral issuer's own URL); a loopback or test name only",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve discovery and the JWKS on 127.0.0.1 until Ctrl-C",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=0,
        help="the port to serve on (with --serve; default: free)",
    )
    add_output_options(parser)
    parser.set_defaults(handler=run_mint)


def _claim_values(items: Sequence[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise usage_error(f"--claim takes NAME=VALUE, not {item!r}")
        try:
            claims[name] = parse_json(value)
        except ValueError:  # not JSON (or Infinity, NaN, too deep): the text itself
            claims[name] = value
    return claims


def _is_dev_issuer(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost" or host.endswith(_RESERVED_SUFFIXES):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_mint(args: argparse.Namespace) -> int:
    """``token mint``: print a development token; with ``--serve``, serve its keys too."""
    from bearerguard.testing import DevIssuer, SigningKey  # noqa: PLC0415 - lazy, see module

    console = Console.of(args)
    claims = _claim_values(args.claim)
    if args.serve:
        # The token would name another issuer than the one served: nothing could verify it.
        given = (
            "--issuer" if args.issuer is not None else "--claim iss" if "iss" in claims else None
        )
        if given is not None:
            raise usage_error(f"{given} and --serve do not go together: --serve is the issuer")
    elif args.port != 0:
        raise usage_error("--port is the port of --serve: without it nothing is served")
    if args.issuer is not None:
        claims.setdefault("iss", args.issuer)
    iss = claims.get("iss")
    if iss is not None and not (isinstance(iss, str) and _is_dev_issuer(iss)):
        raise usage_error(
            f"refusing to mint for issuer {iss!r}: token mint is for development issuers only "
            "(127.0.0.1, ::1, localhost, or a .test/.example/.invalid/.localhost name)"
        )
    if args.key is not None:
        pem = read_file(args.key, _MAX_KEY_FILE_BYTES, "a PEM key")
        try:
            key = SigningKey.from_pem(pem, algorithm=args.algorithm)
        except ValueError as exc:
            raise usage_error(f"{args.key}: {exc}") from None
    else:
        key = SigningKey.generate(args.algorithm or "RS256")
    scopes = [scope for value in args.scope for scope in value.split()]
    try:
        issuer = DevIssuer(keys=[key], audience=args.audience, port=args.port if args.serve else 0)
    except OSError as exc:
        reason = exc.strerror or exc
        raise CommandError(f"cannot listen on 127.0.0.1:{args.port}: {reason}") from None
    try:
        payload = issuer.claims(scopes=scopes, sub=args.sub, expires_in=args.expires_in)
        payload.update(claims)  # --claim wins, sub and scope included
        token = issuer.sign({name: value for name, value in payload.items() if value is not None})
        payload = _decode_segment(token.split(".")[1])
        if args.serve:
            issuer.start()
        if console.as_json:
            console.document(
                {
                    "token": token,
                    "development_only": True,
                    "issuer": payload.get("iss"),
                    "audience": payload.get("aud"),
                    "kid": key.kid,
                    "alg": key.algorithm,
                    "claims": payload,
                    "jwks": issuer.jwks(),
                    "serving": issuer.url if args.serve else None,
                }
            )
        else:
            console.say(token)
        console.warn(f"bearerguard token mint: {DEV_ONLY}.")
        if args.serve:
            console.warn(
                f"Serving issuer {issuer.url} (discovery and {issuer.jwks_uri}) until Ctrl-C.\n"
                f'  BearerGuard(issuer="{issuer.url}", audience="{args.audience}")'
            )
            try:
                wait_for_interrupt()
            except KeyboardInterrupt:
                console.warn("Stopping.")
    finally:
        issuer.stop()
    return EXIT_OK


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (``KeyboardInterrupt``); replaced in tests."""
    while True:
        time.sleep(0.2)


# -- inspect ----------------------------------------------------------------------------


def _add_inspect(commands: Commands) -> None:
    parser = commands.add_parser(
        "inspect",
        help="decode a token WITHOUT verifying it, and say whether its shape is acceptable",
        description=(
            "Decode a token's header and claims without verifying anything, and check its "
            "structure with the same strict parser BearerGuard uses (exit 1 when the "
            "structure alone would get it refused). The output is marked UNVERIFIED: never "
            "make a decision from it; use `bearerguard token verify`."
        ),
    )
    parser.add_argument("token", metavar="TOKEN", help="the token, or - to read standard input")
    add_output_options(parser)
    parser.set_defaults(handler=run_inspect)


def _lenient_segment(segment: str) -> Any:
    try:
        return parse_json(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):  # includes Infinity and NaN: shown as undecodable
        return None


def _decode_segment(segment: str) -> dict[str, Any]:
    value = _lenient_segment(segment)
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A time claim as finite epoch seconds; ``None`` for a bool, a non-number, or no float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _when(value: Any, now: float) -> dict[str, Any] | None:
    number = _number(value)
    if number is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(number, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return {
        "value": value,
        "utc": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "relative": relative(number, now),
    }


# Auth0 issues an encrypted token (for its own /userinfo) when the authorization request
# names no audience: the usual way an encrypted token reaches an API.
_ENCRYPTED = (
    "an encrypted token (JWE): only its issuer can read it, so it is no access token for "
    "your API. Auth0 issues one when the client's authorization request names no audience: "
    "have the client ask for the audience of your API"
)


def _notes(
    token: str, header: Mapping[str, Any], claims: Mapping[str, Any], now: float
) -> list[str]:
    notes: list[str] = []
    if len(token.encode()) > _DEFAULT_MAX_TOKEN_BYTES:
        notes.append(
            f"{len(token.encode())} bytes: over the default max_token_bytes "
            f"({_DEFAULT_MAX_TOKEN_BYTES}), refused before any decoding"
        )
    notes.extend(
        f"the header offers its own key ({member}): ignored, only configured keys verify"
        for member in _KEYS_FROM_TOKEN
        if member in header
    )
    if not header:
        return notes
    if "enc" in header:  # RFC 7516 §9: a JWE header has "enc"; its kid and typ mean nothing here
        return [*notes, _ENCRYPTED]
    alg = header.get("alg")
    if isinstance(alg, str) and alg.upper().startswith("HS"):
        notes.append(f"alg {alg} (HMAC): verifiable only with a shared secret set on purpose")
    if "kid" not in header:
        notes.append("no kid: verifiable only against a key set of exactly one key")
    typ = header.get("typ")
    if not (isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt")):
        notes.append(
            f"typ is {typ!r}, not 'at+jwt': refused where the rfc9068 profile or "
            "require_typ is configured (an ID token is not an access token)"
        )
    if claims:
        notes.extend(
            f"no {name} claim: always refused"
            for name in ("exp", "aud", "iss")
            if name not in claims
        )
        exp = _number(claims.get("exp"))
        if exp is not None and exp <= now:
            notes.append(f"expired {relative(exp, now)}")
        nbf = _number(claims.get("nbf"))
        if nbf is not None and nbf > now:
            notes.append(f"not valid before {relative(nbf, now)}")
        if "jti" not in claims:
            notes.append("no jti: cannot be revoked individually")
    return notes


def inspect_token(token: str, *, now: float | None = None) -> dict[str, Any]:
    """Decode ``token`` without verifying it, and check its structure strictly.

    Returns:
        A JSON-able report: ``verified`` (always false), ``structure`` (``ok``, and the
        error class, reason and detail that would refuse it), ``header``, ``claims``,
        ``times`` and ``notes``.
    """
    from bearerguard._core.jws import decode_payload, parse_compact  # noqa: PLC0415
    from bearerguard.errors import AuthError  # noqa: PLC0415

    now = time.time() if now is None else now
    structure: dict[str, Any] = {"ok": True}
    segments = token.split(".")
    header: Any = None
    claims: Any = None
    try:
        jws = parse_compact(token)
        header = jws.header
        claims = decode_payload(jws)
    except AuthError as exc:
        structure = {
            "ok": False,
            "error": type(exc).__name__,
            "reason": exc.reason,
            "detail": exc.detail,
        }
    if header is None and segments:
        header = _lenient_segment(segments[0])
    if claims is None and len(segments) > 1:
        claims = _lenient_segment(segments[1])
    header_map = header if isinstance(header, dict) else {}
    claims_map = claims if isinstance(claims, dict) else {}
    times = {}
    for name in _TIME_CLAIMS:
        when = _when(claims_map.get(name), now)
        if when is not None:
            times[name] = when
    return {
        "verified": False,
        "warning": UNVERIFIED,
        "structure": structure,
        "segments": len(segments),
        "header": header,
        "claims": claims,
        "times": times,
        "notes": _notes(token, header_map, claims_map, now),
    }


def _indented_json(value: Any) -> list[str]:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return ["  " + line for line in text.splitlines()]


def run_inspect(args: argparse.Namespace) -> int:
    """``token inspect``: decode without verifying; exit 1 when the structure is refused."""
    console = Console.of(args)
    token = read_token(args.token)
    report = inspect_token(token)
    structure = report["structure"]
    if console.as_json:
        console.document(report)
    else:
        bar = "!" * 78
        console.say(bar)
        for line in textwrap.wrap(UNVERIFIED, 74):
            console.say(f"! {line}")
        console.say(bar)
        for part in ("header", "claims"):
            console.say(f"{part}:")
            value = report[part]
            if value is None:
                console.say("  (not decodable)")
            else:
                for line in _indented_json(value):  # JSON leaves C1 controls and DEL raw
                    console.say(terminal_safe(line))
        if report["times"]:
            console.say("times:")
            for name, when in report["times"].items():
                console.say(f"  {name}  {when['utc']}  ({when['relative']})")
        if structure["ok"]:
            console.say("structure: acceptable (a strict compact JWS, as BearerGuard parses it)")
        else:
            console.say(
                terminal_safe(
                    f"structure: REFUSED by BearerGuard's parser: {structure['error']} "
                    f"(reason {structure['reason']}): {structure['detail']}"
                )
            )
        if report["notes"]:
            console.say("notes:")
            for note in report["notes"]:  # they quote the header (its alg) as it came
                console.say(terminal_safe(f"  - {note}"))
    return EXIT_OK if structure["ok"] else EXIT_FAILURE


# -- verify -----------------------------------------------------------------------------


def _add_verify(commands: Commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="verify a token against an issuer's keys, naming the check that fails",
        description=(
            "Fetch the issuer's keys (discovery, or --jwks-uri) and verify the token with "
            "BearerGuard, exactly as an API would: signature, algorithm, issuer, audience, "
            "times, profile, and the scopes given with --scope. Exit codes: 0 valid, "
            "1 invalid, 2 usage error, 3 issuer or keys unreachable."
        ),
    )
    parser.add_argument("token", metavar="TOKEN", help="the token, or - to read standard input")
    parser.add_argument("--issuer", required=True, metavar="URL", help="the trusted issuer")
    parser.add_argument(
        "--audience",
        required=True,
        action="append",
        metavar="AUD",
        help="this API's identifier; repeat for several",
    )
    parser.add_argument(
        "--jwks-uri", metavar="URL", help="the key set URL (default: discovered from the issuer)"
    )
    parser.add_argument(
        "--algorithm",
        action="append",
        metavar="ALG",
        help="an allowed algorithm; repeat for several (default: every asymmetric one)",
    )
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="a scope the token needs; repeat it, or give several separated by spaces",
    )
    parser.add_argument(
        "--scope-claim",
        action="append",
        default=[],
        metavar="CLAIM",
        help="a further claim read as scopes (dotted for nested: realm_access.roles)",
    )
    parser.add_argument(
        "--profile", choices=("rfc9068",), help="enforce the RFC 9068 access token profile"
    )
    parser.add_argument(
        "--leeway", type=seconds, default=30.0, help="seconds of clock skew tolerated (default 30)"
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=10.0, help="seconds for each fetch (default 10)"
    )
    add_output_options(parser)
    parser.set_defaults(handler=run_verify)


def _explain(
    error: Any,
    *,
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    args: argparse.Namespace,
    kids: Sequence[str],
    now: float,
    granted: Iterable[str] = (),
) -> str | None:
    """Why the check failed, in terms of what the token says (read without trusting it)."""
    reason = error.reason
    if reason == "malformed_token" and "enc" in header:
        return _ENCRYPTED
    if reason == "expired" and "exp" in claims:
        return f"exp was {relative(float(claims['exp']), now)} (leeway {args.leeway:g} s)"
    if reason == "not_yet_valid":
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if isinstance(value, int | float) and value > now:
                return f"{name} is {relative(float(value), now)} (leeway {args.leeway:g} s)"
    if reason == "invalid_issuer":
        return _explain_issuer(claims.get("iss"), args.issuer)
    if reason == "invalid_audience":
        return _explain_audience(claims.get("aud"), args.audience)
    if reason == "unknown_key":
        kid = header.get("kid")
        return f"the token's kid {kid!r} is not published; the key set has {list(kids)}"
    if reason == "unsupported_algorithm":
        return f"the token's alg is {header.get('alg')!r}"
    if reason == "bad_signature":
        return (
            f"the key {header.get('kid')!r} does not verify the signature: the token was "
            "altered, or signed by another key under the same kid"
        )
    if reason == "invalid_type":
        return f"the header's typ is {header.get('typ')!r}; the rfc9068 profile needs 'at+jwt'"
    if reason == "insufficient_scope":
        return _explain_scopes(error.required, granted, claims)
    return None


def _explain_issuer(iss: Any, issuer: str) -> str:
    """An issuer mismatch, and Entra ID's v1.0 tokens (its default) named as such."""
    text = (
        f"the token's iss is {iss!r}; --issuer is {issuer!r}: they must be equal character "
        "for character (a trailing slash counts)"
    )
    if isinstance(iss, str) and iss.startswith("https://sts.windows.net/"):
        text += (
            "; an Entra ID v1.0 token: set the API's app registration to issue v2.0 tokens "
            "(requestedAccessTokenVersion 2 in its manifest), or configure the v1.0 issuer "
            "(see the Entra ID recipe)"
        )
    return text


def _explain_audience(aud: Any, audience: Sequence[str]) -> str:
    """An audience mismatch, with the usual cause of a missing one or Keycloak's default."""
    if aud is None:
        return (
            "the token has no aud: it names no API (RFC 9068 §4). Keycloak adds yours with "
            "an Audience mapper; Auth0 when the client asks for your API's audience"
        )
    text = f"the token's aud is {aud!r}; --audience is {list(audience)!r}"
    if aud == "account" or (isinstance(aud, list) and aud == ["account"]):
        text += (
            "; Keycloak's default audience 'account' names its account console: add an "
            "Audience mapper naming your API"
        )
    return text


def _explain_scopes(
    required: Sequence[str], granted: Iterable[str], claims: Mapping[str, Any]
) -> str:
    """The scopes asked for and granted, and where a missing one is, if in a claim not read.

    Keycloak's roles (``realm_access.roles``), Auth0's RBAC ``permissions`` and Entra ID's
    app ``roles`` are read only when named with ``--scope-claim``, as with the guard's
    ``scope_claims``: say which claim holds a scope the token seems not to grant.
    """
    held = set(granted)
    text = f"--scope asks for {sorted(required)}; the token grants {sorted(held)}"
    for scope in sorted(set(required) - held):
        claim = _claim_holding(claims, scope)
        if claim is not None:
            text += f"; {scope!r} is in the claim {claim!r}, not read: add --scope-claim {claim}"
    return text


def _claim_holding(claims: Mapping[str, Any], scope: str) -> str | None:
    """The dotted name of a claim (nested at most 3 deep) listing ``scope``, or ``None``."""
    pending: list[tuple[str, Any]] = [
        (name, value) for name, value in claims.items() if name not in ("scope", "scp")
    ]
    for _ in range(3):
        nested: list[tuple[str, Any]] = []
        for name, value in pending[:_MAX_CLAIMS_SEARCHED]:
            if isinstance(value, str) and scope in value.split(" "):
                return name
            if isinstance(value, list) and scope in value:
                return name
            if isinstance(value, dict):
                nested.extend((f"{name}.{key}", child) for key, child in value.items())
        pending = nested
    return None


# A token's claims are read to explain, not trusted: a bounded search per level.
_MAX_CLAIMS_SEARCHED = 1000


def run_verify(args: argparse.Namespace) -> int:
    """``token verify``: 0 valid, 1 invalid, 2 usage error, 3 keys unreachable."""
    from bearerguard.errors import (  # noqa: PLC0415
        AuthError,
        ConfigurationError,
        InsufficientScopeError,
        ServiceUnavailableError,
    )
    from bearerguard.guard import DEFAULT_ALGORITHMS, BearerGuard  # noqa: PLC0415
    from bearerguard.jwks import FetchPolicy, JWKSFetcher  # noqa: PLC0415

    console = Console.of(args)
    token = read_token(args.token)
    options: dict[str, Any] = {
        "issuer": args.issuer,
        "audience": args.audience,
        "algorithms": args.algorithm or DEFAULT_ALGORITHMS,
        "leeway": args.leeway,
        "profile": args.profile,
        "scope_claims": args.scope_claim,
    }
    try:
        # Built once with the fetching configuration, to refuse a bad one before any I/O.
        BearerGuard(jwks_uri=args.jwks_uri, **options)
        fetcher = JWKSFetcher(args.issuer, args.jwks_uri, FetchPolicy(timeout=args.timeout))
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None
    usable = _published_keys(fetcher, frozenset(options["algorithms"]), console)
    kids = sorted(key.kid for key in usable if key.kid is not None)
    guard = BearerGuard(keys={"keys": [json.loads(key.source) for key in usable]}, **options)
    now = time.time()
    report: dict[str, Any] = {"valid": False, "issuer": args.issuer, "jwks_uri": fetcher.jwks_uri}
    granted: frozenset[str] = frozenset()
    try:
        access = guard.authenticate_sync(token)
        granted = access.scopes
        # A scope-token holds no space (RFC 6749 §3.3): "a b" is two scopes, as for mint.
        required = sorted({scope for value in args.scope for scope in value.split()})
        missing = sorted(set(required) - access.scopes)
        if missing:
            raise InsufficientScopeError(required, detail=f"missing {missing}")
    except ServiceUnavailableError as exc:  # pragma: no cover - static keys never go missing
        raise CommandError(str(exc), code=EXIT_UNREACHABLE, kind="unreachable") from None
    except AuthError as exc:
        segments = token.split(".")
        header = _decode_segment(segments[0]) if segments else {}
        claims = _decode_segment(segments[1]) if len(segments) > 1 else {}
        report["error"] = {
            "class": type(exc).__name__,
            "reason": exc.reason,
            "detail": exc.detail,
            "explanation": _explain(
                exc, header=header, claims=claims, args=args, kids=kids, now=now, granted=granted
            ),
            "status": exc.status,
            "error_code": exc.error_code,
        }
        return _report_invalid(console, report)
    report.update(
        valid=True,
        token={
            "sub": access.subject,
            "client_id": access.client_id,
            "scopes": sorted(access.scopes),
            "aud": list(access.audience),
            "kid": access.key_id,
            "alg": access.algorithm,
            "expires_at": access.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "expires": relative(access.expires_at.timestamp(), now),
        },
    )
    if console.as_json:
        console.document(report)
    else:
        details = report["token"]
        console.say("VALID: every check passed")
        for name in ("sub", "client_id", "scopes", "aud", "kid", "alg"):
            value = details[name]
            shown = " ".join(value) if isinstance(value, list) else value
            shown = "-" if shown in (None, "") else terminal_safe(str(shown))
            console.say(f"  {name:<10} {shown}")
        console.say(f"  {'expires':<10} {details['expires_at']} ({details['expires']})")
    return EXIT_OK


def _published_keys(fetcher: Any, algorithms: frozenset[str], console: Console) -> list[Any]:
    """Fetch the key set and load the keys a guard allowing ``algorithms`` would use.

    Raises:
        CommandError: the key set is unreachable, not a JWK Set, or has no usable key.
    """
    from bearerguard._core.keys import ASYMMETRIC_ALGORITHMS, keys_from_jwks  # noqa: PLC0415
    from bearerguard.jwks import FetchError  # noqa: PLC0415

    if fetcher.configured_uri is not None:
        what = f"fetching {fetcher.configured_uri}"
    else:
        what = f"discovering the keys of {fetcher.issuer}"
    try:
        with console.step(what):
            document, _max_age = fetcher.fetch_sync()
    except FetchError as exc:
        raise CommandError(str(exc), code=EXIT_UNREACHABLE, kind="unreachable") from None
    try:
        usable, skipped = keys_from_jwks(document, algorithms & ASYMMETRIC_ALGORITHMS)
    except ValueError as exc:
        raise CommandError(
            f"{fetcher.jwks_uri}: {exc}", code=EXIT_UNREACHABLE, kind="unreachable"
        ) from None
    console.progress(f"  {fetcher.jwks_uri}: {len(usable)} usable key(s)")
    for kid, why in skipped:
        console.progress(f"  skipped key {kid!r}: {why}")
    if not usable:
        raise CommandError(
            f"{fetcher.jwks_uri} has no usable key (`bearerguard jwks check` says why)",
            code=EXIT_UNREACHABLE,
            kind="unreachable",
        )
    return usable


def _report_invalid(console: Console, report: dict[str, Any]) -> int:
    error = report["error"]
    if console.as_json:
        console.document(report)
        return EXIT_FAILURE
    console.say(f"INVALID: {error['class']} (reason {error['reason']})")
    if error["detail"]:
        console.say(terminal_safe(f"  detail   {error['detail']}"))
    if error["explanation"]:
        console.say(terminal_safe(f"  why      {error['explanation']}"))
    code = f' error="{error["error_code"]}"' if error["error_code"] else ""
    console.say(f"  answer   an API answers {error['status']}{code}")
    return EXIT_FAILURE
