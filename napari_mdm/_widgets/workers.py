"""Long jobs off the Qt thread: a progress bar, a Cancel button, errors as napari notifications.

A job is any core call ``compute(progress, should_stop)``; it runs in a napari thread worker,
its progress reaches the bar through a queued Qt signal, Cancel sets the ``should_stop`` flag,
and the result comes back on the Qt thread. User problems (:class:`~napari_mdm.jobs.UserError`,
bad checkpoints included) become one-line error notifications; nothing is raised into Qt.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal as PSignal
from qtpy.QtCore import QObject, Signal

from ..jobs import Cancelled, UserError

log = logging.getLogger(__name__)

Compute = Callable[[Callable[[int, int, str], None], Callable[[], bool]], Any]


def limit_torch_threads() -> None:
    """Leave one core to the Qt event loop so the viewer keeps responding during a job."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def notify_error(message: str) -> None:
    show_error(message)


def notify_warning(message: str) -> None:
    show_warning(message)


def notify_info(message: str) -> None:
    show_info(message)


def report_failure(title: str, err: BaseException) -> None:
    """Turn a job's exception into a notification that says what to do."""
    if isinstance(err, Cancelled):
        notify_info(f"{title}: cancelled")
    elif isinstance(err, UserError):
        notify_error(f"{title}: {err}")
    else:
        log.error("%s failed", title, exc_info=err)
        notify_error(f"{title} failed: {type(err).__name__}: {err}")


def chosen_path(file_edit) -> Path | None:
    """The path in a magicgui FileEdit, or None when the user has not chosen one."""
    value = file_edit.value
    return None if value is None or str(value) in ("", ".") else Path(value)


class _ProgressSignal(QObject):
    """Carries progress from the worker thread to the Qt thread (a queued connection)."""

    progressed = Signal(int, int, str)


def _format_eta(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class JobPanel(Container):
    """Progress bar, one status line and a Cancel button for the job a dock widget runs."""

    progressed = PSignal(int, int, str)
    """(done, total, info) of the running job, on the Qt thread (e.g. for a live loss plot)."""

    def __init__(self) -> None:
        self.bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="idle")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        super().__init__(widgets=[self.bar, self.status, self.cancel_button], labels=False)
        self.cancel_button.changed.connect(self.cancel)
        self.worker = None
        self.title = ""
        self._stop = threading.Event()
        self._signal = _ProgressSignal()
        self._signal.progressed.connect(self._show_progress)
        self._stage = (0, 0, 0.0)  # (total, done, time) from which the current stage's ETA counts
        self._last_report = 0.0
        self._failed = False
        self._closed = False
        self.native.destroyed.connect(self._close)

    def _close(self) -> None:
        """The dock was closed (or its viewer): stop the job and drop what it would show."""
        self._closed = True
        self._stop.set()

    def _unless_closed(self, callback: Callable) -> Callable:
        return lambda *args: None if self._closed else callback(*args)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, title: str, compute: Compute, on_done: Callable[[Any], None],
              on_finished: Callable[[], None] | None = None):
        """Run ``compute`` in a thread worker; ``on_done(result)`` runs on the Qt thread.

        Returns the worker, or None when another job of this panel is still running."""
        if self.busy:
            notify_warning(f"{self.title} is still running: wait for it or press Cancel")
            return None
        self.title = title
        self._stop, self._failed = threading.Event(), False
        stop, emit = self._stop, self._signal.progressed.emit

        def run():
            limit_torch_threads()
            return compute(lambda done, total, info="": emit(int(done), int(total), str(info)), stop.is_set)

        finished = [self._finished] + ([on_finished] if on_finished is not None else [])
        worker = create_worker(run, _start_thread=False,
                               _connect={"returned": self._unless_closed(on_done), "errored": self._errored,
                                         "finished": [self._unless_closed(f) for f in finished]})
        self.worker = worker
        self._last_report = time.perf_counter()
        self._stage = (0, 0, self._last_report)
        self.bar.value, self.bar.max = 0, 1
        self.status.value = f"{title}: starting"
        self.cancel_button.enabled = True
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next step; what it would have written is not written."""
        if self.busy:
            self._stop.set()
            self.status.value = f"{self.title}: cancelling"

    def _show_progress(self, done: int, total: int, info: str) -> None:
        if not self.busy or self._closed:
            return
        self.bar.max = max(total, 1)
        self.bar.value = min(done, self.bar.max)
        text = f"{self.title}: {done}/{total}"
        if info:
            text += f"  {info}"
        now = time.perf_counter()
        stage_total, stage_done, since = self._stage
        if total != stage_total or done < stage_done:  # a new stage (features, then head, ...)
            self._stage = stage_total, stage_done, since = total, 0, self._last_report
        if done > stage_done and "eta=" not in info:
            eta = (now - since) / (done - stage_done) * (total - done)
            text += f"  ETA {_format_eta(eta)}"
        self._last_report = now
        self.status.value = text
        self.progressed.emit(done, total, info)

    def _errored(self, err: BaseException) -> None:
        self._failed = True
        report_failure(self.title, err)

    def _finished(self) -> None:
        self.worker = None
        self.cancel_button.enabled = False
        state = "cancelled" if self._stop.is_set() else "failed" if self._failed else "done"
        self.status.value = f"{self.title}: {state}"
