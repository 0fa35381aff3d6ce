"""The seam every long operation shares: a progress callback, a cancel flag, clear user errors.

The CLI passes a progress bar, the widgets pass a worker's ``yield``, tests pass nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, info)``: called after each unit of work (step, tile, image)."""

StopFn = Callable[[], bool]
"""``should_stop()``: polled between units of work; True cancels the job."""


@dataclass(frozen=True)
class Remedy:
    """What the user can do about a :class:`UserError`, in the words of each front end: the CLI
    (and the API) name their options, the plugin its controls, where a flag means nothing."""

    cli: str
    plugin: str


class UserError(Exception):
    """A problem with the user's input or files, reported as one line, never as a traceback.

    ``str(err)`` is the problem and the CLI's remedy; :attr:`in_plugin` the problem and the
    plugin's remedy. A message that names an option gives it in a :class:`Remedy`, never in
    ``problem`` (the plugin shows ``problem`` as it is)."""

    def __init__(self, problem: str, remedy: Remedy | None = None) -> None:
        super().__init__(problem if remedy is None else f"{problem}; {remedy.cli}")
        self.problem, self.remedy = problem, remedy

    def __reduce__(self):  # raised on a dask worker: comes back with both wordings
        return type(self), (self.problem, self.remedy)

    @property
    def in_plugin(self) -> str:
        """The text of the napari notification: the plugin's remedy instead of the CLI's."""
        return str(self) if self.remedy is None else f"{self.problem}; {self.remedy.plugin}"


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
