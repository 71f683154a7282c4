"""Errors a user fixes (a bad config value, a bad data file, an arm dir in use or damaged, a run that
diverged). Their message says what is wrong, where, and what to do; the CLI prints it alone, without a
traceback (``ARCA_TRACEBACK=1`` shows the traceback too)."""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is the whole story: printed as ``error: <message>``, exit code 2."""


class DataError(UserError, ValueError):
    """A data file that cannot be used: the message names the file (and line) and what is wrong."""


class DataFileNotFound(UserError, FileNotFoundError):
    """A data file that is not there."""


def utf8_text(data: bytes, path) -> str:
    """``data`` decoded as UTF-8, or a :class:`DataError` naming the file, line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); re-encode the "
            f"file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed.jsonl` for a Latin-1 file"
        ) from None


def json_value(text: str, where: str):
    """``json.loads(text)``, or a :class:`DataError` at ``where`` (``file:line``) for bad or too deep JSON."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read (hundreds of levels of [ or {{)") from None
