"""The ``bearerguard`` command line (also ``python -m bearerguard``).

Each sub-command is registered by one ``_add_*`` function that builds its parser and sets
its ``handler``: a callable taking the parsed arguments and returning the exit code. A
command group (``token mint``, ``jwks show`` ...) is one more ``add_subparsers`` under its
parser, whose leaves set their own handler; the group itself gets ``_usage`` so that naming
the group alone prints its help.

Handlers import what they need lazily: ``bearerguard --help`` stays fast, and a command
whose optional extra is missing says which one to install instead of failing on import.

Commands:

- ``demo``: a walkthrough against a local demo API (``bearerguard._demo``).
- ``token mint | inspect | verify`` (``bearerguard._cli_token``).
- ``jwks show | check`` (``bearerguard._cli_jwks``).
- ``revoke token | subject | client`` and ``revocations list``, against a Redis revocation
  store (``bearerguard._cli_revoke``).

Every leaf but ``demo`` takes ``--json`` (one JSON document on standard output) and
``--quiet`` (no progress lines on standard error). Expected failures (an unreachable
issuer, a bad argument, a key file that is not a key) are one line on standard error, or a
JSON document with ``--json``; never a traceback.

Exit codes: 0 success, 1 the command ran and the answer is no (an invalid token, a key set
with errors), 2 usage error or missing extra, 3 the issuer, the key set or Redis is unreachable,
74 standard output cannot be written (a full disk), 130 interrupted (Ctrl-C), 141 standard
output closed early (``| head``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn, cast

from bearerguard.__about__ import __version__
from bearerguard._cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Console,
    Handler,
    discard_output,
    interrupted,
    port_number,
    print_usage,
    usage_error,
)
from bearerguard._cli_common import Commands as _Commands
from bearerguard._cli_jwks import add_jwks_commands
from bearerguard._cli_revoke import add_revocation_commands
from bearerguard._cli_token import add_token_commands

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

_MISSING_UVICORN = (
    "bearerguard demo needs uvicorn, which is not installed.\n"
    "Install the demo extra:  pip install 'bearerguard[demo]'"
)


# -- demo -------------------------------------------------------------------------------


def _add_demo(commands: _Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="walk through accepted and refused requests against a local demo API",
        description=(
            "Start a development issuer and a protected demo API on 127.0.0.1, then send "
            "real requests to it: no token, a valid token, an expired one, one missing a "
            "scope, a revoked one and forged ones, each with its status, WWW-Authenticate "
            "challenge and audit event. Exits 0 when every answer is the expected one."
        ),
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep serving after the walkthrough, with a 1-hour token and curl lines, until Ctrl-C",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=0,
        help="the API's port on 127.0.0.1 (default: a free one)",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from bearerguard import _demo  # noqa: PLC0415 - needs the optional uvicorn
    except ModuleNotFoundError as exc:
        if exc.name != "uvicorn":
            raise
        Console().warn(_MISSING_UVICORN)
        return EXIT_USAGE
    return _demo.run_demo(port=args.port, serve=args.serve)


# -- the parser -------------------------------------------------------------------------

_COMMANDS: tuple[Callable[[_Commands], None], ...] = (
    _add_demo,
    add_token_commands,
    add_jwks_commands,
    add_revocation_commands,
)


class _ArgumentsRefused(Exception):  # noqa: N818 - argparse's usage error, carried out
    """argparse refused the arguments: raised rather than printed, so that ``--json`` can
    answer it as every other usage error."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors reach ``_run`` (sub-parsers are of its class)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentsRefused(self, message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = _Parser(
        prog="bearerguard",
        description="Tools for bearerguard: accept OAuth 2.0 bearer tokens safely.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(handler=partial(print_usage, parser))
    # Of _Parser, as every sub-parser made from it: typed as the commands' own signature.
    commands = cast("_Commands", parser.add_subparsers(title="commands", metavar="COMMAND"))
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see the module docstring).
    """
    try:
        return _run(build_parser(), argv)
    except BrokenPipeError:  # `bearerguard ... | head`: the reader has what it wanted
        discard_output()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C while the parser is built or reads the arguments
        return interrupted(sys.argv[1:] if argv is None else argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
    except _ArgumentsRefused as refused:
        if "--json" in (sys.argv[1:] if argv is None else argv):
            return Console(as_json=True).fail(usage_error(refused.message))
        if sys.stderr is not None:  # as argparse says it, unless stderr is closed (`2>&-`)
            refused.parser.print_usage(sys.stderr)
        Console().warn(f"{refused.parser.prog}: error: {refused.message}")
        return EXIT_USAGE
    except SystemExit as exc:  # --help or --version: argparse has spoken
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        return Console.of(args).fail(exc)
    except KeyboardInterrupt:
        return Console.of(args).interrupted()
