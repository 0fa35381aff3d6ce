"""The seam every long operation shares: a progress callback, a cancel flag, clear user errors.

The CLI passes a progress bar, the widgets pass a worker's ``yield``, tests pass nothing.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, info)``: called after each unit of work (step, tile, image)."""

StopFn = Callable[[], bool]
"""``should_stop()``: polled between units of work; True cancels the job."""


class UserError(Exception):
    """A problem with the user's input or files, reported as one line, never as a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an error's text: third-party messages can span several."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class Cancelled(Exception):
    """Raised inside a job when ``should_stop()`` returned True; outputs are left untouched."""


def report(progress: ProgressFn | None, done: int, total: int, info: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, info)


def check_stop(should_stop: StopFn | None) -> None:
    """Raise :class:`Cancelled` when the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled by the user")


def staged(progress: ProgressFn | None, stage: str) -> ProgressFn | None:
    """A progress callback that prefixes each message with the stage of the job (None stays None)."""
    if progress is None:
        return None
    return lambda done, total, info="": progress(done, total, f"{stage} {info}".strip())
