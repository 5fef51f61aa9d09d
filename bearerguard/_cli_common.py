"""What every ``bearerguard`` sub-command shares: exit codes, output, expected failures.

Results go to standard output (text, or one JSON document with ``--json``); progress lines
for network steps and warnings go to standard error, so ``TOKEN=$(bearerguard token mint)``
and ``bearerguard jwks show URL --json | jq`` see only the result.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeAlias

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and the answer is "no": an invalid token, a bad key set
EXIT_USAGE = 2  # wrong arguments, a missing extra
EXIT_UNREACHABLE = 3  # the issuer or key set could not be fetched or used
EXIT_OUTPUT = 74  # standard output could not be written (a full disk): sysexits.h EX_IOERR
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of standard output went away (`| head`)

Handler = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """An expected failure: reported as one line (or a JSON document), never a traceback.

    Args:
        message: what went wrong and, where it helps, what to do.
        code: the exit code.
        kind: a short stable name for ``--json`` output (``usage``, ``unreachable`` ...).
    """

    def __init__(self, message: str, *, code: int = EXIT_FAILURE, kind: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind


class OutputError(CommandError):
    """Standard output cannot be written (``ENOSPC``, ``EIO`` ...): reported on standard
    error only, since the failed output cannot take a JSON document either."""

    def __init__(self, error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        super().__init__(f"cannot write the output: {reason}", code=EXIT_OUTPUT, kind="output")


def write_line(out: TextIO | None, text: str) -> None:
    """Print ``text`` to ``out``, a result that must arrive: its failure is an ``OutputError``.

    ``out`` is ``None`` when the command started with standard output closed (``>&-``):
    ``print`` would then write nowhere, and the result would be lost with exit 0.
    """
    if out is None:
        raise OutputError(OSError(errno.EBADF, os.strerror(errno.EBADF)))
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:  # the reader went away (`| head`): cli.main's exit 141
        raise
    except OSError as exc:
        raise OutputError(exc) from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"JSON has no {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"JSON number out of range: {text[:40]}")
    return value


def parse_json(text: str | bytes) -> Any:
    """A JSON document, strictly: no ``NaN`` or ``Infinity``, no number beyond a float.

    RFC 8259 §6 excludes ``Infinity`` and ``NaN``, which Python's ``json`` accepts, and
    ``1e400`` would become an infinite float: either would later crash arithmetic or print
    as invalid JSON.

    Raises:
        ValueError: not JSON, one of those, or nested too deeply for the parser.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not between 0 and 65535")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds (negative allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or abs(value) > 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"not a sensible number of seconds: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def non_negative_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    value = seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more: {text!r}")
    return value


def discard_output() -> None:
    """Point standard output at the null device once its reader has gone (``| head``).

    What is still buffered would otherwise be flushed at exit into the broken pipe, and
    Python would print that failure after all.
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # None, or not a file (a StringIO)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, descriptor)
    finally:
        os.close(null)


def print_usage(parser: argparse.ArgumentParser, _args: argparse.Namespace) -> int:
    """The handler of a command group named alone: print its help (to stderr), exit 2."""
    if sys.stderr is not None:  # closed (`2>&-`): print_help(None) would write to stdout
        parser.print_help(sys.stderr)
    return EXIT_USAGE


def interrupted(argv: Sequence[str]) -> int:
    """Report Ctrl-C pressed before a command's handler runs (while the command line loads
    or parses ``argv``), as ``Console.interrupted`` does once it runs; returns 130."""
    return Console(as_json="--json" in argv).interrupted()


def usage_error(message: str) -> CommandError:
    """A ``CommandError`` for arguments that cannot work (exit 2)."""
    return CommandError(message, code=EXIT_USAGE, kind="usage")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--quiet``, on every leaf command."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on standard error"
    )


class Console:
    """Where a command writes: results to ``out``, progress and warnings to ``err``."""

    def __init__(
        self,
        *,
        as_json: bool = False,
        quiet: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.out: TextIO | None = sys.stdout if out is None else out
        self.err: TextIO | None = sys.stderr if err is None else err

    @classmethod
    def of(cls, args: argparse.Namespace) -> Console:
        """The console the parsed ``--json`` and ``--quiet`` ask for."""
        return cls(as_json=getattr(args, "json", False), quiet=getattr(args, "quiet", False))

    def say(self, text: str = "") -> None:
        """A line of the result (text mode); what the output cannot encode is escaped."""
        if not self._encodable(text):  # a terminal or a file in Latin-1, ASCII ...
            encoding = self._encoding()
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        self._write(text)

    def document(self, value: Any) -> None:
        """The result as JSON (``--json``), with ``\\u`` escapes where the output needs them:
        for what it cannot encode, and for every character ``terminal_safe`` escapes."""
        text = json.dumps(value, indent=2, ensure_ascii=False)
        if not self._encodable(text):
            text = json.dumps(value, indent=2)  # the same document, in ASCII
        self._write(_terminal_safe_json(text))

    def _write(self, text: str) -> None:
        write_line(self.out, text)

    def _encoding(self) -> str:
        return getattr(self.out, "encoding", None) or "utf-8"

    def _encodable(self, text: str) -> bool:
        try:
            text.encode(self._encoding())
        except UnicodeEncodeError:
            return False
        except LookupError:  # an encoding Python does not know: let print() decide
            return True
        return True

    def progress(self, text: str) -> None:
        """A progress line on standard error, unless ``--quiet``."""
        if not self.quiet:
            self._note(text)

    def warn(self, text: str) -> None:
        """A warning on standard error, even with ``--quiet``."""
        self._note(text)

    def _note(self, text: str) -> None:
        # Standard error closed (`2>&-`) is None, and print(file=None) writes to standard
        # output: the note would land in the result (`TOKEN=$(...)`, `--json | jq`).
        if self.err is not None:
            print(_printable_lines(text), file=self.err, flush=True)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Announce a network step, then say how long it took."""
        self.progress(f"{text} ...")
        started = time.monotonic()
        yield
        self.progress(f"  done in {(time.monotonic() - started) * 1000:.0f} ms")

    def interrupted(self) -> int:
        """Report Ctrl-C: a line on standard error, or with ``--json`` the failure document
        every other failure gets; returns ``EXIT_INTERRUPTED``."""
        if self.as_json:
            return self.fail(CommandError("interrupted", code=EXIT_INTERRUPTED, kind="interrupted"))
        self._note("\ninterrupted")  # after the terminal's ^C, on a line of its own
        return EXIT_INTERRUPTED

    def fail(self, error: CommandError) -> int:
        """Report an expected failure; returns its exit code."""
        if self.as_json and not isinstance(error, OutputError):
            try:
                self.document(
                    {"ok": False, "error": {"kind": error.kind, "message": error.message}}
                )
            except OutputError as failed:  # the failure's document cannot be written either
                error = failed
            else:
                return error.code
        if isinstance(error, OutputError):
            # What is still buffered would fail again at exit, with a traceback of its own.
            discard_output()
        self._note(f"bearerguard: {error.message}")
        return error.code


def read_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, a file of at most ``max_bytes``.

    One byte more than that is read, never the whole file: a wrong path (a log file,
    ``/dev/zero``) is refused at once instead of filling the memory.

    Args:
        path: the file.
        max_bytes: the largest file accepted.
        what: what the file holds, for the message (``a JWK Set``).

    Raises:
        CommandError: a usage error: the file cannot be read, or is larger.
    """
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise usage_error(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise usage_error(
            f"cannot read {path}: it is larger than {_size(max_bytes)}, the most read of {what}"
        )
    return data


def _size(count: int) -> str:
    return f"{count // 1024} KiB" if count % 1024 == 0 else f"{count} bytes"


def read_token(text: str, stdin: TextIO | None = None) -> str:
    """The token given as an argument, or read from standard input when it is ``-``.

    Surrounding whitespace, a ``Bearer`` scheme and an ``Authorization:`` header name are
    removed, so a header pasted whole works.

    Raises:
        CommandError: nothing was given, or bytes that are not UTF-8.
    """
    if text == "-":
        source = sys.stdin if stdin is None else stdin
        if source is None:  # started with standard input closed (`<&-`)
            raise usage_error("no token given: standard input is closed")
        try:
            text = source.read()
        except UnicodeDecodeError:
            raise usage_error("the token read from standard input is not UTF-8 text") from None
        except OSError as exc:  # EIO: a background job reading a terminal that is gone
            reason = exc.strerror or type(exc).__name__
            raise usage_error(f"cannot read the token from standard input: {reason}") from None
    try:
        text.encode()
    except UnicodeEncodeError:  # undecodable bytes, kept by surrogateescape
        raise usage_error("the token is not UTF-8 text (a JWS is ASCII: RFC 7515 §7.1)") from None
    token = text.strip()
    name, colon, rest = token.partition(":")
    if colon and name.strip().lower() == "authorization":
        token = rest.strip()
    scheme, space, rest = token.partition(" ")
    if space and scheme.lower() == "bearer":
        token = rest.strip()
    if not token:
        raise usage_error("no token given (pass it as an argument, or '-' to read stdin)")
    return token


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character (C0 and C1 controls, ESC, bidi
    overrides) shown as its escape, so text from the network cannot drive the terminal."""
    return _escaped(text, _python_escape)


def _terminal_safe_json(text: str) -> str:
    """The JSON document ``text`` with what ``terminal_safe`` escapes written as ``\\u``
    escapes instead, so ``json.loads`` reads back the same value.

    ``json.dumps`` escapes only C0 controls (RFC 8259 §7 requires no more), and leaves C1
    controls, DEL and bidi formatting characters raw: printed to a terminal, claims or a key
    set could reorder or hide what the operator reads (Trojan Source, CVE-2021-42574).
    Outside its strings a document has no character to escape but the newlines of its
    indentation, and inside them a ``\\u`` escape stands for the character it replaces.
    """
    return "\n".join(_escaped(line, _json_escape) for line in text.split("\n"))


def _escaped(text: str, escape: Callable[[str], str]) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


def _python_escape(char: str) -> str:
    return repr(char)[1:-1]


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    # RFC 8259 §7: a character outside the Basic Multilingual Plane is escaped as the
    # UTF-16 surrogate pair that encodes it.
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _printable_lines(text: str) -> str:
    """``terminal_safe`` line by line: the lines of standard error name URLs from an
    issuer's metadata (its ``jwks_uri``), which may hold C1 controls or bidi overrides."""
    return "\n".join(terminal_safe(line) for line in text.split("\n"))


def describe_duration(seconds: float) -> str:
    """``seconds`` as a short human duration: ``45 s``, ``4 min 10 s``, ``3 h 2 min``, ``2 d``."""
    if not math.isfinite(seconds):
        return "forever"
    seconds = abs(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d"


def relative(instant: float, now: float) -> str:
    """``instant`` relative to ``now``: ``in 5 min`` or ``5 min ago``."""
    delta = instant - now
    return f"in {describe_duration(delta)}" if delta >= 0 else f"{describe_duration(delta)} ago"
