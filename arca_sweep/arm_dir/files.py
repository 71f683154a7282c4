"""How a file of an arm dir is written and read: the one error for damaged or unwritable state, the one
atomic writer and the one JSONL reader."""

from __future__ import annotations

import errno
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from arca_sweep.errors import UserError


class ArmStateError(UserError):
    """The arm dir's state is damaged or cannot be written; the message names the file and the fix."""


@contextmanager
def writing(path: Path, resume_hint: str = "re-run the same command: the arm resumes from its checkpoint"):
    """Turn an OSError while writing ``path`` into an :class:`ArmStateError` that says what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArmStateError(
                f"no space left on device while writing {path} ({exc.strerror}). Free space on that "
                f"filesystem (or raise the quota), then {resume_hint}."
            ) from exc
        raise ArmStateError(
            f"could not write {path}: {exc.strerror or exc}. Fix that, then {resume_hint}."
        ) from exc


def temporary(path: Path) -> Path:
    """The file :func:`atomic_write` writes before moving it onto ``path``: ``<stem>.tmp`` beside it."""
    return Path(path).with_suffix(".tmp")


def atomic_write(path: Path, text: str) -> None:
    """``path`` holds exactly ``text`` or its previous content, never a part: ``text`` goes to
    :func:`temporary` (flushed to disk), which is then renamed onto ``path``; on any failure the temporary
    file is removed and the error re-raised unchanged (inside :func:`writing` it names the file and the fix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


RESTORE_HINT = "delete the file and re-run; the checkpoint restores the metrics up to its step"


def read_jsonl(path: Path, bad_lines: str = "raise", hint: str = RESTORE_HINT) -> list:
    """The records of a JSONL file, read as much damage as its reader accepts (``bad_lines``):

    - ``"raise"``: every non-blank line is JSON (else :class:`json.JSONDecodeError`); a missing file raises.
    - ``"skip"``: a missing file has none; a line that is not JSON (or not UTF-8), or not an object, is left
      out (a running arm's torn last line, read by the report).
    - ``"torn"``: :func:`read_lines`' rule (only a torn last line is dropped, with a warning; any other bad
      line is an :class:`ArmStateError` naming the file, the line and ``hint``, what to do), for the records
      this run restores and for every reader that must not read a damaged file as if whole (the report).
    """
    return [record for _, record in _read(Path(path), bad_lines, hint)]


def read_lines(path: Path) -> list[str]:
    """The whole JSON lines of a JSONL file. A torn last line (no newline, or not JSON: a writer died or
    the disk filled mid-line) is dropped with a warning; a bad line before the end is an error."""
    return [line for line, _ in _read(Path(path), "torn")]


def _read(path: Path, bad_lines: str, hint: str = RESTORE_HINT) -> list[tuple[str, object]]:
    """``(line, record)`` of each line :func:`read_jsonl`'s ``bad_lines`` rule keeps."""
    if bad_lines == "raise":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(line, json.loads(line)) for line in lines if line.strip()]
    if not path.exists():
        return []
    if bad_lines == "skip":
        out = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # bad bytes: not JSON
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append((line, record))
        return out
    if bad_lines != "torn":
        raise ValueError(f"bad_lines={bad_lines!r}: one of raise, skip, torn")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArmStateError(f"{path} is not UTF-8 text ({exc.reason}): {hint}") from None
    lines = text.split("\n")
    whole, last = lines[:-1], lines[-1]  # ``last`` is "" when the file ends with a newline
    good = []
    for number, line in enumerate(whole, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(whole) and not last:
                last = line  # a garbled final line: torn as well
                break
            raise ArmStateError(
                f"{path}:{number} is not a JSON record (the file was edited or written by two runs): {hint}"
            ) from None
        if not isinstance(record, dict):
            raise ArmStateError(f"{path}:{number} is a JSON {type(record).__name__}, not a record: {hint}")
        good.append((line, record))
    if last.strip():
        warnings.warn(f"{path}: dropped a torn last line ({len(last)} characters)", stacklevel=3)
    return good
