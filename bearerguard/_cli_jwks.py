"""``bearerguard jwks show | check``: list a key set's keys, and flag weak or misconfigured ones.

``analyze_jwks`` is pure: it takes the parsed document and returns one report per key and
the problems found, each an error (the set is misconfigured: exit 1) or a warning (worth
knowing, harmless to verification). Keys are judged by the same loader ``BearerGuard`` uses,
so "usable" here means usable there.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal
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
    positive_seconds,
    print_usage,
    read_file,
    terminal_safe,
    usage_error,
)

__all__ = ["Finding", "KeyReport", "add_jwks_commands", "analyze_jwks"]

Severity = Literal["error", "warning"]

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MIN_RSA_BITS = 2048
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its severity, a stable code, the key it concerns and what it means."""

    severity: Severity
    code: str
    message: str
    kid: str | None = None
    index: int | None = None


@dataclass(slots=True)
class KeyReport:
    """One entry of the key set, as ``jwks show`` lists it."""

    index: int
    kid: str | None
    kty: str | None
    alg: str | None
    use: str | None
    size: str | None
    usable: bool
    algorithms: list[str] = field(default_factory=list)
    skipped: str | None = None


def _rsa_bits(modulus: Any) -> int | None:
    if not isinstance(modulus, str) or not _BASE64URL.fullmatch(modulus):
        return None
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (ValueError, binascii.Error):
        return None
    return int.from_bytes(raw, "big").bit_length()


def _size(entry: Mapping[str, Any]) -> tuple[str | None, int | None]:
    kty = entry.get("kty")
    if kty == "RSA":
        bits = _rsa_bits(entry.get("n"))
        return (None if bits is None else f"{bits} bits"), bits
    if kty in ("EC", "OKP"):
        crv = entry.get("crv")
        return (crv if isinstance(crv, str) else None), None
    if kty == "oct":
        secret = entry.get("k")
        return (f"{len(secret) * 6 // 8 * 8} bits" if isinstance(secret, str) else None), None
    return None, None


def _algorithms_for(entry: Mapping[str, Any]) -> frozenset[str]:
    """The JWS algorithms the key's type and curve allow (what its ``alg`` may say)."""
    kty = entry.get("kty")
    crv = entry.get("crv")
    if not isinstance(crv, str):  # a list or an object from the network: unhashable
        crv = None
    if kty == "RSA":
        return _RSA_ALGORITHMS
    if kty == "EC" and crv in _EC_ALGORITHM_BY_CURVE:
        return frozenset({_EC_ALGORITHM_BY_CURVE[crv]})
    if kty == "OKP" and crv in _OKP_CURVES:
        return frozenset({"EdDSA", crv})  # RFC 9864: the curve's own name, or "EdDSA"
    return frozenset()


def _judge(index: int, entry: Any, allowed: frozenset[str]) -> tuple[KeyReport, list[Finding]]:
    from bearerguard._core.keys import keys_from_jwks  # noqa: PLC0415 - lazy, see cli

    if not isinstance(entry, dict):
        report = KeyReport(index, None, None, None, None, None, usable=False)
        report.skipped = "not a JSON object"
        problem = Finding("error", "not_an_object", "the entry is not a JSON object", None, index)
        return report, [problem]
    raw_kid = entry.get("kid")
    kid = raw_kid if isinstance(raw_kid, str) else None
    kty = entry.get("kty") if isinstance(entry.get("kty"), str) else None
    alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
    use = entry.get("use") if isinstance(entry.get("use"), str) else None
    size, bits = _size(entry)
    found, skipped = keys_from_jwks({"keys": [entry]}, allowed)
    report = KeyReport(index, kid, kty, alg, use, size, usable=bool(found))
    if found:
        report.algorithms = sorted(found[0].algorithms)
    else:
        report.skipped = skipped[0][1]

    findings: list[Finding] = []

    def flag(severity: Severity, code: str, message: str) -> None:
        findings.append(Finding(severity, code, message, kid, index))

    if raw_kid is not None and kid is None:
        flag("error", "kid_not_string", f"kid is {raw_kid!r}, not a string")
    if kty == "oct":
        flag(
            "error",
            "symmetric_key",
            "a symmetric (oct) key is published: its secret is readable by anyone; rotate it",
        )
    elif any(member in entry for member in _PRIVATE_MEMBERS):
        members = ", ".join(member for member in _PRIVATE_MEMBERS if member in entry)
        flag(
            "error",
            "private_key_material",
            f"private key members published ({members}): the private key is exposed; rotate it now",
        )
    if kty not in ("RSA", "EC", "OKP", "oct"):
        flag("error", "unknown_kty", f"kty {entry.get('kty')!r} is not a known key type")
    if use == "enc":
        flag("warning", "encryption_key", "an encryption key (use: enc): never used to verify")
    elif use is not None and use != "sig":
        flag("warning", "unknown_use", f"use {use!r} is neither 'sig' nor 'enc': never used")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        flag("warning", "no_verify_op", "key_ops does not include 'verify': never used to verify")
    if bits is not None and bits < _MIN_RSA_BITS:
        flag("error", "weak_rsa_key", f"an RSA key of {bits} bits (under 2048): refused as weak")
    declared = entry.get("alg")
    if declared is not None and use != "enc" and kty in ("RSA", "EC", "OKP"):
        fitting = _algorithms_for(entry)
        if not isinstance(declared, str) or declared not in fitting:
            expected = ", ".join(sorted(fitting)) or "none"
            flag(
                "error",
                "alg_mismatch",
                f"alg {declared!r} does not fit a {kty} key"
                + (f" on {entry.get('crv')}" if kty != "RSA" else "")
                + f" (it may say: {expected})",
            )
    if kty == "EC" and not _algorithms_for(entry):  # crv not a supported curve (or a string)
        flag("warning", "unsupported_curve", f"curve {entry.get('crv')!r} is not supported")
    if kty in ("RSA", "EC", "OKP") and not found and report.skipped is not None:
        known = {finding.code for finding in findings}
        if not known & {
            "private_key_material", "encryption_key", "unknown_use", "no_verify_op",
            "weak_rsa_key", "alg_mismatch", "unsupported_curve", "kid_not_string",
        }:  # fmt: skip
            flag("error", "unusable_key", f"the key cannot be used: {report.skipped}")
    return report, findings


def analyze_jwks(
    document: Any, allowed: frozenset[str] | None = None
) -> tuple[list[KeyReport], list[Finding]]:
    """Judge every key of a JWK Set, and the set as a whole.

    Args:
        document: the parsed JWK Set.
        allowed: the algorithms a guard would allow; every asymmetric one by default.

    Returns:
        One report per entry, in order, and the problems found.

    Raises:
        ValueError: the document is not a JWK Set at all.
    """
    from bearerguard._core.keys import (  # noqa: PLC0415
        ASYMMETRIC_ALGORITHMS,
        KEYS_PER_KID,
        crowded_kids,
        not_a_jwks,
    )

    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise not_a_jwks(document)
    allowed = ASYMMETRIC_ALGORITHMS if allowed is None else allowed
    reports: list[KeyReport] = []
    findings: list[Finding] = []
    for index, entry in enumerate(document["keys"]):
        report, problems = _judge(index, entry, allowed)
        reports.append(report)
        findings.extend(problems)
    several = len(reports) > 1
    for report in reports:
        if (
            report.kid is None
            and isinstance(document["keys"][report.index], dict)
            and ("kid" not in document["keys"][report.index])
        ):
            if several:
                findings.append(
                    Finding(
                        "error",
                        "missing_kid",
                        "no kid in a set of several keys: tokens cannot name this key, so "
                        "it never verifies",
                        None,
                        report.index,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "warning",
                        "missing_kid",
                        "no kid: fine while it is the only key, but publishing a second key "
                        "for a rotation will break verification of tokens without kid",
                        None,
                        report.index,
                    )
                )
    usable_kids = Counter(report.kid for report in reports if report.usable and report.kid)
    all_kids = Counter(report.kid for report in reports if report.kid)
    # Per algorithm, as the guard caps them: keys of different types under one kid (RFC
    # 7517 §4.5's own example) never compete for a token.
    crowded = crowded_kids((report.kid, report.algorithms) for report in reports if report.usable)
    for kid, count in sorted(all_kids.items()):
        if count < 2:
            continue
        if kid in crowded:
            message = (
                f"{crowded[kid]} keys for one alg share the kid {kid!r}: a token naming it is "
                f"checked against the first {KEYS_PER_KID} only (each costs a signature "
                "check): give keys distinct kids"
            )
            findings.append(Finding("error", "duplicate_kid", message, kid))
        elif usable_kids[kid] > 1:
            # RFC 7517 §4.5: kids should be distinct; the guard tries each key in turn.
            message = (
                f"{count} keys share the kid {kid!r}: a token naming it is checked against "
                "each in turn (fine during a rotation; kids should be distinct)"
            )
            findings.append(Finding("warning", "duplicate_kid", message, kid))
        else:
            message = f"{count} keys share the kid {kid!r} (only one is a signing key)"
            findings.append(Finding("warning", "duplicate_kid", message, kid))
    if not any(report.usable for report in reports):
        findings.append(Finding("error", "no_usable_key", "no key in the set can verify a token"))
    return reports, findings


# -- the commands -----------------------------------------------------------------------


def add_jwks_commands(commands: Commands) -> None:
    """Register ``jwks`` and its sub-commands."""
    parser = commands.add_parser(
        "jwks",
        help="show an issuer's signing keys, or check them for weak or misconfigured ones",
        description="Fetch a JWK Set (by URL, or discovered from an issuer) and examine it.",
    )
    parser.set_defaults(handler=partial(print_usage, parser))
    leaves = parser.add_subparsers(title="commands", metavar="COMMAND")
    show = leaves.add_parser(
        "show",
        help="list the keys of a JWK Set and whether BearerGuard can use each",
        description="List every key of a JWK Set: kid, type, alg, use, size, and whether "
        "BearerGuard would use it (and for which algorithms) or skip it (and why).",
    )
    check = leaves.add_parser(
        "check",
        help="flag weak or misconfigured keys (exit 1 when the set has errors)",
        description=(
            "Check a JWK Set for RSA keys under 2048 bits, missing or duplicate kids, "
            "published private or symmetric keys, alg values that do not fit the key type, "
            "encryption keys, and a set with no usable key. Errors exit 1; warnings "
            "(encryption keys, a lone key without kid) are reported but exit 0."
        ),
    )
    for parser_, handler in ((show, run_show), (check, run_check)):
        source = parser_.add_mutually_exclusive_group(required=True)
        source.add_argument("url", nargs="?", metavar="URL", help="the JWK Set URL")
        source.add_argument("--issuer", metavar="URL", help="discover the JWK Set of this issuer")
        source.add_argument("--file", type=Path, metavar="PATH", help="read a JWK Set file")
        parser_.add_argument(
            "--timeout",
            type=positive_seconds,
            default=10.0,
            help="seconds for each fetch (default 10)",
        )
        add_output_options(parser_)
        parser_.set_defaults(handler=handler)


# Words in the path of the providers' key set URLs (/.well-known/jwks.json, /v1/keys,
# /discovery/v2.0/keys, /protocol/openid-connect/certs): a URL without any is likelier the
# issuer itself, pasted where the key set's goes.
_KEY_SET_WORDS = ("jwk", "key", "cert")


def _issuer_hint(url: str | None) -> str:
    """For a URL that failed as a key set and does not look like one: try it as the issuer."""
    if url is None or any(word in urlsplit(url).path.lower() for word in _KEY_SET_WORDS):
        return ""
    return f"; if {url} is an issuer, --issuer {url} discovers its key set"


def _load(args: argparse.Namespace, console: Console) -> tuple[dict[str, Any], Any]:
    """The source description and the parsed document."""
    from bearerguard.errors import ConfigurationError  # noqa: PLC0415
    from bearerguard.jwks import (  # noqa: PLC0415
        FetchError,
        FetchPolicy,
        JWKSFetcher,
        NotJSONError,
        check_issuer,
    )

    if args.file is not None:
        # No larger than the guard would fetch of a key set (FetchPolicy.max_bytes).
        data = read_file(args.file, FetchPolicy().max_bytes, "a JWK Set")
        try:  # JSON is UTF-8 (RFC 8259 §8.1): other bytes are "not JSON", as over HTTP
            return {"file": str(args.file)}, parse_json(data.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise CommandError(f"{args.file} is not JSON", kind="not_a_jwks") from None
    try:
        if args.issuer is not None:
            issuer = check_issuer(args.issuer)
            fetcher = JWKSFetcher(issuer, None, FetchPolicy(timeout=args.timeout))
            what = f"discovering the keys of {args.issuer}"
        else:
            fetcher = JWKSFetcher(args.url, args.url, FetchPolicy(timeout=args.timeout))
            what = f"fetching {args.url}"
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None
    try:
        with console.step(what):
            document, max_age = fetcher.fetch_sync()
    except NotJSONError as exc:  # the key set answered: "not a JWK Set", as from a file
        raise CommandError(str(exc) + _issuer_hint(args.url), kind="not_a_jwks") from None
    except FetchError as exc:
        raise CommandError(
            str(exc) + _issuer_hint(args.url), code=EXIT_UNREACHABLE, kind="unreachable"
        ) from None
    source: dict[str, Any] = {"jwks_uri": fetcher.jwks_uri, "max_age": max_age}
    if args.issuer is not None:
        source["issuer"] = args.issuer
    return source, document


def _analyzed(
    args: argparse.Namespace, console: Console
) -> tuple[dict[str, Any], list[KeyReport], list[Finding]]:
    source, document = _load(args, console)
    try:
        reports, findings = analyze_jwks(document)
    except ValueError as exc:
        where = source.get("jwks_uri") or source.get("file")
        raise CommandError(f"{where}: {exc}", kind="not_a_jwks") from None
    return source, reports, findings


def _where(source: Mapping[str, Any]) -> str:
    where = str(source.get("jwks_uri") or source.get("file"))
    max_age = source.get("max_age")
    where += f"  (fresh for {max_age:g} s)" if max_age is not None else ""
    return terminal_safe(where)  # the jwks_uri comes from the issuer's metadata


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def run_show(args: argparse.Namespace) -> int:
    """``jwks show``: list the keys; exit 0 once the set is read."""
    console = Console.of(args)
    source, reports, _findings = _analyzed(args, console)
    if console.as_json:
        console.document({"source": source, "keys": [asdict(report) for report in reports]})
        return EXIT_OK
    console.say(_where(source))
    rows = [["KID", "KTY", "ALG", "USE", "SIZE", "BEARERGUARD"]]
    for report in reports:
        status = (
            "verifies " + ",".join(report.algorithms)
            if report.usable
            else f"skips it: {report.skipped}"
        )
        rows.append(
            [
                report.kid or "(none)",
                report.kty or "?",
                report.alg or "-",
                report.use or "-",
                report.size or "-",
                status,
            ]
        )
    # A hostile key set's kid or use may hold escape sequences (erasing an ERROR line):
    # every cell is made printable before it reaches the terminal.
    for line in _table([[terminal_safe(cell) for cell in row] for row in rows]):
        console.say(line)
    usable = sum(report.usable for report in reports)
    console.say(f"{len(reports)} key(s), {usable} usable")
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    """``jwks check``: report problems; exit 1 when any is an error."""
    console = Console.of(args)
    source, reports, findings = _analyzed(args, console)
    errors = [finding for finding in findings if finding.severity == "error"]
    if console.as_json:
        console.document(
            {
                "source": source,
                "ok": not errors,
                "keys": [asdict(report) for report in reports],
                "problems": [asdict(finding) for finding in findings],
            }
        )
        return EXIT_FAILURE if errors else EXIT_OK
    usable = sum(report.usable for report in reports)
    console.say(f"{_where(source)}: {len(reports)} key(s), {usable} usable")
    for finding in findings:
        if finding.kid is not None:
            which = f"kid {finding.kid}"
        elif finding.index is not None:
            which = f"key #{finding.index + 1}"
        else:
            which = "key set"
        line = f"  {finding.severity.upper():<7}  {which}: {finding.message}"
        console.say(terminal_safe(line))
    warnings = len(findings) - len(errors)
    if not findings:
        console.say("no problems found")
    else:
        console.say(f"{len(errors)} error(s), {warnings} warning(s)")
    return EXIT_FAILURE if errors else EXIT_OK
