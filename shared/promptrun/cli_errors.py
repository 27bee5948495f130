"""Every CLI failure as one line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from promptrun.errors import ConfigError, InputError, PromptrunError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `| head`


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_message(exc: BaseException) -> tuple[str, int]:
    """SQLAlchemy's wrapped errors: the driver's message, without the SQL or parameters."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], dict):  # pg8000: the server's own fields
        return f"database error: {args[0].get('M', 'unknown')}", EXIT_ERROR
    text = _first_line(orig)
    lowered = text.lower()
    if any(w in lowered for w in ("connect", "timed out", "refused", "network", "resolve")):
        return f"database unreachable: {text} (is it running? see DATABASE_URL)", EXIT_UNREACHABLE
    return f"database error: {text}", EXIT_ERROR


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def run_guarded(action: Callable[[], int]) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        code = action()
        sys.stdout.flush()  # a closed pipe shows here, inside the guard
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (InputError, ConfigError) as exc:
        message, code = str(exc), EXIT_USAGE  # a catalogue's problems keep one line each
    except PromptrunError as exc:
        message, code = str(exc), EXIT_ERROR
    except TimeoutError as exc:
        message, code = f"timed out: {_first_line(exc)}", EXIT_TIMEOUT
    except SQLAlchemyError as exc:
        message, code = _database_message(exc)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        message, code = f"AWS {err.get('Code', 'error')}: {err.get('Message', '')}", EXIT_ERROR
    except BotoCoreError as exc:
        message, code = (
            f"AWS unreachable: {_first_line(exc)} (see AWS_ENDPOINT_URL)",
            EXIT_UNREACHABLE,
        )
    except UnicodeError as exc:
        message, code = f"bad text encoding: {_first_line(exc)}", EXIT_USAGE
    except OSError as exc:
        message, code = (
            f"{exc.strerror or _first_line(exc)}" + (f": {exc.filename}" if exc.filename else ""),
            EXIT_ERROR,
        )
    except Exception as exc:  # a bug: still one line, named
        message, code = f"unexpected {type(exc).__name__}: {_first_line(exc)}", EXIT_ERROR
    with contextlib.suppress(BrokenPipeError):
        print(f"promptrun: {message}", file=sys.stderr)
    return code
