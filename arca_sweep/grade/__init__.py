"""MATH answer grading: the last boxed answer of a response against a gold answer, with math-verify.

Model output is untrusted. This module never evals it, and it goes to math-verify only as
``\\boxed{<last boxed content>}`` with the LaTeX extractor alone: math-verify's plain-expression extractor
runs sympy's ``parse_expr`` (an eval) on matched text. The only eval we found below that is sympy's
``Number(str)`` in latex2sympy, on number tokens of its lexer (digits, separators, exponent).

A sympy call on hostile input can hold the GIL for minutes (``\\boxed{9^{9^{9^{9}}}}``), which no thread
or signal in the same process can stop, so :class:`Grader` grades in worker processes and the parent
enforces each item's time limit by killing the worker (SIGKILL) and starting a new one.

    with Grader(workers=2, timeout_s=5.0) as grader:
        results = grader.grade([(response_text, gold_answer(row)) for response_text, row in ...])

The command line over a JSONL file, ``python -m arca_sweep.grade``, is ``arca_sweep/grade/__main__.py``.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Literal

from tqdm import tqdm

logger = logging.getLogger(__name__)

# Only a response's tail is read: a 1 MB response costs no more than a short one.
MAX_PRED_CHARS = 4000
# A boxed "answer" longer than this is not an answer; it scores 0 without reaching the parser.
MAX_ANSWER_CHARS = 1000
WORKER_START_TIMEOUT_S = 120.0
# The wall-clock backstop per item, as a multiple of its CPU-time limit: only an item that is not running
# (a worker starved far beyond any normal load, or stuck in a system call) ever meets it. Generous, since
# math-verify never waits on anything: on a 2-core machine at load 12, 2.5 s of CPU took 9 s of wall.
WALL_BACKSTOP_FACTOR = 10.0
_BOX_COMMANDS = ("\\boxed", "\\fbox")


# ---------------------------------------------------------------------------- answer extraction


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or None.

    Braces nest: ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; escaped ``\\{ \\}`` do not count, so
    ``\\boxed{\\left\\{ x \\right.}`` closes. Without braces the content runs to the
    next whitespace or ``$``: ``$\\boxed 2$`` gives ``2``. The last command wins even when it is malformed
    (unclosed, or nothing after it): then the result is None, not an earlier box. Linear time, no recursion.
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    pos = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    after_command = pos
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos == len(text):
        return None
    if text[pos] != "{":
        if pos == after_command:  # ``\boxedx`` is another command, not a box
            return None
        end = pos
        while end < len(text) and not text[end].isspace() and text[end] != "$":
            end += 1
        return text[pos:end] or None
    depth, k = 0, pos
    while k < len(text):
        if text[k] == "\\":  # ``\{`` and ``\}`` are literal braces, not grouping
            k += 1
        elif text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : k].strip()
        k += 1
    return None


def gold_answer(row: dict) -> str | None:
    """``row["answer"]`` when it is a non-empty string, else the last boxed answer of ``row["solution"]``.

    None when neither gives a non-empty answer (the full MATH splits have no ``answer`` field).
    """
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    solution = row.get("solution")
    boxed = extract_boxed(solution) if isinstance(solution, str) else None
    return boxed or None


# ---------------------------------------------------------------------------- math-verify, in process


@functools.cache
def _math_verify():
    """math-verify, imported once and made to work on antlr4-python3-runtime 4.9.3.

    hydra-core 1.3 pins antlr 4.9.3. latex2sympy2_extended 1.11 reads ``atom.FUNC_GAMMA()``, an alternative
    that its 4.9.3 parser's ``atom`` rule does not have, so every percentage failed with AttributeError.
    An atom of that grammar never holds a FUNC_GAMMA token: "no such child" (None) is the exact answer.
    Applied only where the method is missing, so a fixed release leaves it unused.
    """
    import math_verify
    from latex2sympy2_extended.antlr_parser import PSParser

    if not hasattr(PSParser.AtomContext, "FUNC_GAMMA"):
        PSParser.AtomContext.FUNC_GAMMA = lambda self: None
    # Its own time limits (signal.alarm) are off: Grader's parent enforces them. Silence the warning saying so.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Gold and prediction both arrive as ``\boxed{answer}``; boxed_match_priority=0 takes the box before
    # any "final answer is" pattern. No ExprExtractionConfig: latex2sympy already parses ``1/2`` and
    # ``3.5`` in a box, and that extractor runs sympy's parse_expr (an eval) on the text.
    config = (math_verify.LatexExtractionConfig(boxed_match_priority=0),)
    return math_verify, config


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> tuple:
    """math-verify's parse of ``\\boxed{gold}``: sympy objects, then the normalized string. Cached: golds repeat."""
    math_verify, config = _math_verify()
    return tuple(math_verify.parse(f"\\boxed{{{answer}}}", config, parsing_timeout=None))


def verify(pred_text: str, gold: str) -> bool:
    """True when the last boxed answer in the tail of ``pred_text`` equals the bare answer ``gold``.

    Equality is math-verify's (``verify(gold, pred)``, not symmetric): numerically equal values, symbolically
    equal expressions, sets in any order, intervals, matrices; ``\\text{}`` units, ``^\\circ`` and ``\\$``
    dropped; ``50\\%`` equals ``50`` and ``0.5``; a gold ``x=5`` accepts ``5``; ``\\text{(C)}`` accepts ``C``.
    A response without a closed box scores False. No time limit: run it in :class:`Grader`'s workers.
    """
    content = extract_boxed(pred_text[-MAX_PRED_CHARS:])
    if not content or len(content) > MAX_ANSWER_CHARS or not gold.strip():
        return False
    # Predictions are not cached: each is new, and caching would keep hostile sympy objects alive.
    math_verify, config = _math_verify()
    pred = math_verify.parse(f"\\boxed{{{content}}}", config, parsing_timeout=None)
    gold_parsed = _parse_gold(gold.strip())
    return bool(pred and gold_parsed and math_verify.verify(list(gold_parsed), pred, timeout_seconds=None))


# ---------------------------------------------------------------------------- worker processes


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    status: Literal["ok", "timeout", "error"]  # "error": the worker raised or died on this item
    seconds: float  # wall time from dispatch to result, as the parent saw it


def _worker_main(conn: Connection, cpu_limit_s: float) -> None:
    """A worker: import math-verify once, say "ready", then answer ``(pred, gold)`` until told to stop.

    Each item may use ``cpu_limit_s`` of this process's own CPU time (ITIMER_PROF: user + system, not
    counting time the process waits for a core). Past it the kernel's SIGPROF, left at its default
    action, ends the process even inside a long C call (sympy holding the GIL); the parent reads the
    exit signal as a timeout. So the verdict does not depend on how loaded the machine is."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us.
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    try:
        verify("\\boxed{\\frac{1}{2}}", "0.5")  # imports, patches, compiles math-verify's regexes
    except BaseException as exc:  # reported to the parent, which raises
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent is gone
            return
        if item is None:
            return
        try:
            signal.setitimer(signal.ITIMER_PROF, cpu_limit_s)
            try:
                correct = verify(*item)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            conn.send(("ok", correct))
        except Exception as exc:  # MemoryError, RecursionError, a math-verify bug: this item only
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))


class _Worker:
    def __init__(self, context, cpu_limit_s: float) -> None:
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child_conn, cpu_limit_s), daemon=True)
        self.process.start()
        child_conn.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.job: int | None = None  # index of the item in flight
        self.job_started_at = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class Grader:
    """A pool of worker processes that grade ``(pred, gold)`` pairs with :func:`verify`.

    Each item has ``timeout_s`` of its worker's own CPU time (so an idle and a busy machine give the same
    verdict), with a wall-clock backstop of ``WALL_BACKSTOP_FACTOR * timeout_s`` from dispatch. An item past
    either scores 0 with status "timeout" and its worker is killed and replaced; an item whose worker raises or dies (segfault, OOM kill) scores 0
    with status "error" and never hangs the caller. ``timeouts`` and ``errors`` count both over the
    grader's life. Workers start in a ``spawn`` context (the parent may hold torch threads, so no fork).
    After an exception inside :meth:`grade` (e.g. KeyboardInterrupt) the grader is closed. One ``grade`` at a
    time (not thread-safe). Spawned workers import the caller's ``__main__``, so a script that makes a
    Grader needs the usual ``if __name__ == "__main__":`` guard.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.wall_limit_s = WALL_BACKSTOP_FACTOR * self.timeout_s
        self.timeouts = 0
        self.errors = 0
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(self._context, self.timeout_s) for _ in range(workers)]
        self._closed = False

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        """Stop every worker: politely if idle, SIGKILL if busy, starting or slow to exit. Idempotent."""
        if self._closed:
            return
        self._closed = True
        idle = [worker for worker in self._workers if worker.ready and worker.job is None]
        for worker in idle:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for worker in idle:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            worker.kill()

    def grade(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[GradeResult]:
        """Grade ``(pred, gold)`` pairs; results in the order of ``pairs``."""
        if self._closed:
            raise RuntimeError("Grader is closed")
        for index, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
                raise TypeError(f"pairs[{index}] must be a (pred: str, gold: str) tuple")
        items = [(pred[-MAX_PRED_CHARS:], gold) for pred, gold in pairs]
        results: list[GradeResult | None] = [None] * len(items)
        pending = deque(range(len(items)))
        try:
            with tqdm(total=len(items), disable=not progress, unit="item", desc="grading") as bar:
                while pending or any(worker.job is not None for worker in self._workers):
                    self._dispatch(items, pending)
                    finished = self._collect(results)
                    bar.update(finished)
        except BaseException:
            self.close()
            raise
        return results  # type: ignore[return-value]

    def _dispatch(self, items: list[tuple[str, str]], pending: deque[int]) -> None:
        for slot, worker in enumerate(self._workers):
            if not (worker.ready and worker.job is None and pending):
                continue
            index = pending.popleft()
            try:
                worker.conn.send(items[index])
            except OSError:  # died while idle: the item was never sent, so it goes back in the queue
                pending.appendleft(index)
                self._replace(slot)
                continue
            worker.job, worker.job_started_at = index, time.monotonic()

    def _collect(self, results: list[GradeResult | None]) -> int:
        """Wait for the next result, death or deadline; record what happened. Returns items finished."""
        now = time.monotonic()
        deadlines = [
            worker.job_started_at + self.wall_limit_s
            if worker.ready
            else worker.started_at + WORKER_START_TIMEOUT_S
            for worker in self._workers
            if worker.job is not None or not worker.ready
        ]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        waitables = [worker.conn for worker in self._workers] + [w.process.sentinel for w in self._workers]
        wait(waitables, timeout=timeout)
        finished = 0
        for slot, worker in enumerate(self._workers):
            now = time.monotonic()
            try:
                message = worker.conn.recv() if worker.conn.poll() else None
                alive = message is not None or worker.process.is_alive()
            except (EOFError, OSError):  # the pipe broke: it died
                message, alive = None, False
            if message is not None:
                kind, value = message
                if kind == "ready":
                    worker.ready = True
                elif kind == "fatal":
                    raise RuntimeError(f"a grading worker could not start: {value}")
                else:
                    if kind == "error":
                        logger.debug("grading item %s raised %s", worker.job, value)
                    finished += self._finish(worker, results, kind == "ok" and bool(value), kind, now)
            elif not alive:
                if not worker.ready:
                    raise RuntimeError(
                        f"a grading worker exited with code {worker.process.exitcode} on start"
                    )
                if worker.job is not None:
                    # the pipe can break before the process is reaped (exitcode still None): wait for it
                    worker.process.join(timeout=5.0)
                    over_cpu = worker.process.exitcode == -signal.SIGPROF  # its CPU-time limit
                    if not over_cpu:
                        logger.warning("grading worker died (exit code %s)", worker.process.exitcode)
                    finished += self._finish(worker, results, False, "timeout" if over_cpu else "error", now)
                self._replace(slot)
            elif worker.job is not None and now >= worker.job_started_at + self.wall_limit_s:
                finished += self._finish(worker, results, False, "timeout", now)
                self._replace(slot)
            elif not worker.ready and now >= worker.started_at + WORKER_START_TIMEOUT_S:
                raise RuntimeError(f"a grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
        return finished

    def _finish(self, worker: _Worker, results: list, correct: bool, status: str, now: float) -> int:
        results[worker.job] = GradeResult(correct=correct, status=status, seconds=now - worker.job_started_at)
        worker.job = None
        self.timeouts += status == "timeout"
        self.errors += status == "error"
        return 1

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._context, self.timeout_s)
