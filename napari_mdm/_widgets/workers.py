"""Long jobs off the Qt thread: a progress bar, a Cancel button, errors as napari notifications.

A job is any core call ``compute(progress, should_stop)``; it runs in a napari thread worker,
its progress reaches the bar through a queued Qt signal, Cancel sets the ``should_stop`` flag,
and the result comes back on the Qt thread. User problems (:class:`~napari_mdm.jobs.UserError`,
bad checkpoints included) become one-line error notifications; nothing is raised into Qt.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal as PSignal
from qtpy.QtCore import QCoreApplication, QEvent, QObject, Signal
from qtpy.QtWidgets import QDockWidget, QSizePolicy

from ..jobs import Cancelled, UserError

log = logging.getLogger(__name__)

Compute = Callable[[Callable[[int, int, str], None], Callable[[], bool]], Any]
SHUTDOWN_WAIT_S = 30.0
"""How long closing a dock or the viewer waits for a cancelled job's thread (it stops at the
next block of the network, tile or training step, normally well under a second)."""


class _TorchThreads:
    """While any job runs, torch leaves one core to the Qt event loop; the last job to end
    restores the thread count the process had (torch's setting is process-wide)."""

    lock = threading.Lock()
    running = 0
    before = 1

    @classmethod
    @contextmanager
    def limited(cls) -> Iterator[None]:
        import torch

        with cls.lock:
            if cls.running == 0:
                cls.before = torch.get_num_threads()
                torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
            cls.running += 1
        try:
            yield
        finally:
            with cls.lock:
                cls.running -= 1
                if cls.running == 0:
                    torch.set_num_threads(cls.before)


def user_action(method: Callable) -> Callable:
    """A button handler whose bad inputs (:class:`UserError`) become one error notification
    instead of an exception in Qt's event loop; nothing is started then."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except UserError as err:
            notify_error(err.in_plugin)
            return None

    return guarded


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
        notify_error(f"{title}: {err.in_plugin}")
    else:
        log.error("%s failed", title, exc_info=err)
        notify_error(f"{title} failed: {type(err).__name__}: {err}")


def chosen_path(file_edit) -> Path | None:
    """The path in a magicgui FileEdit, or None when the user has not chosen one."""
    value = file_edit.value
    return None if value is None or str(value) in ("", ".") else Path(value)


def existing_path(file_edit, what: str, folder: bool = False) -> Path:
    """The file (or folder) chosen in ``file_edit``, or a UserError saying to choose ``what``."""
    path = chosen_path(file_edit)
    if path is None:
        raise UserError(f"choose {what}")
    if not (path.is_dir() if folder else path.is_file()):
        state = "does not exist" if not path.exists() else "is a file" if folder else "is a folder"
        raise UserError(f"{path} {state}: choose {what}")
    return path


def safetensors_target(file_edit, what: str) -> Path:
    """Where to save ``what`` (a .safetensors file), or a UserError when no file name is chosen."""
    path = chosen_path(file_edit)
    if path is None or path.is_dir():
        raise UserError(f"choose a file name (.safetensors) to save the {what} to")
    return path.with_suffix(".safetensors")


def wrap_to_width(label) -> None:
    """A word-wrapped QLabel that takes the row's width (Qt would otherwise size it to its own
    idea of a comfortable width: too wide for a narrow dock, or a narrow column of words)."""
    label.setWordWrap(True)
    label.setMinimumWidth(120)
    label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)


class _ProgressSignal(QObject):
    """Carries progress from the worker thread to the Qt thread (a queued connection)."""

    progressed = Signal(int, int, str)


def _format_eta(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _shut_down_all() -> None:
    for panel in list(JobPanel._live):
        panel.shutdown()


@functools.lru_cache(maxsize=1)
def _shut_down_jobs_on_quit() -> None:
    """Once per process: when the application quits, or a script ends, every panel's job stops
    and is waited for, so no worker thread runs torch while the interpreter shuts down."""
    atexit.register(_shut_down_all)
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(_shut_down_all)


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the dock holding a widget is closed (napari takes the docked widget
    out of its dock: its parent becomes None) or when the viewer's window closes."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        super().__init__()
        self.on_close = on_close

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        closing = event.type() == QEvent.Type.Close and obj.isWindow()
        if closing or event.type() == QEvent.Type.ParentChange and obj.parent() is None:
            self.on_close()
        return False


class JobPanel(Container):
    """Progress bar, one status line and a Cancel button for the job a dock widget runs.

    Closing the dock, the viewer or the application cancels the job, waits for its thread and
    drops what it would have shown."""

    progressed = PSignal(int, int, str)
    """(done, total, info) of the running job, on the Qt thread (e.g. for a live loss plot)."""

    _live: weakref.WeakSet[JobPanel] = weakref.WeakSet()

    def __init__(self) -> None:
        self.bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="idle")
        wrap_to_width(self.status.native)  # long progress lines wrap instead of widening the dock
        self.status.native.setMinimumHeight(2 * self.status.native.fontMetrics().lineSpacing() + 4)
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop the running job; what it would have written or shown is dropped"
        )
        super().__init__(widgets=[self.bar, self.status, self.cancel_button], labels=False)
        self.bar.tooltip = "Progress of the running job"
        self.cancel_button.changed.connect(self.cancel)
        self.worker = None
        self.title = ""
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._signal = _ProgressSignal()
        self._signal.progressed.connect(self._show_progress)
        self._stage = (0, 0, 0.0)  # (total, done, time) from which the current stage's ETA counts
        self._last_report = 0.0
        self._failed = False
        self._closed = False
        self._watcher = _CloseWatcher(self.shutdown)
        self.native.destroyed.connect(self.shutdown)
        JobPanel._live.add(self)
        _shut_down_jobs_on_quit()

    def shutdown(self, *_) -> None:
        """The dock, the viewer or the application is closing: stop the job, drop what it would
        show, and wait for its thread so nothing runs on after the window is gone."""
        self._closed = True
        self._stop.set()
        if not self._idle.wait(SHUTDOWN_WAIT_S):
            log.warning("%s did not stop within %.0f s", self.title, SHUTDOWN_WAIT_S)

    def _watch_dock(self) -> None:
        """Watch the widget napari docked (this panel's dock-level ancestor) for its removal, and
        the window holding it for its closing."""
        child, parent = self.native, self.native.parentWidget()
        while parent is not None and not isinstance(parent, QDockWidget):
            child, parent = parent, parent.parentWidget()
        if parent is not None:
            for watched in (child, parent.window()):
                watched.removeEventFilter(self._watcher)
                watched.installEventFilter(self._watcher)

    def _unless_closed(self, callback: Callable) -> Callable:
        return lambda *args: None if self._closed else callback(*args)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        title: str,
        compute: Compute,
        on_done: Callable[[Any], None],
        on_finished: Callable[[], None] | None = None,
    ):
        """Run ``compute`` in a thread worker; ``on_done(result)`` runs on the Qt thread.

        Returns the worker, or None when another job of this panel is still running."""
        if self.busy:
            notify_warning(f"{self.title} is still running: wait for it or press Cancel")
            return None
        if self._closed:
            return None
        self.title = title
        self._stop, self._failed = threading.Event(), False
        stop, emit, idle = self._stop, self._signal.progressed.emit, self._idle
        idle.clear()

        def run():
            try:
                with _TorchThreads.limited():
                    return compute(lambda done, total, info="": emit(int(done), int(total), str(info)), stop.is_set)
            finally:
                idle.set()

        finished = [self._finished] + ([on_finished] if on_finished is not None else [])
        worker = create_worker(
            run,
            _start_thread=False,
            _connect={
                "returned": self._unless_closed(on_done),
                "errored": self._unless_closed(self._errored),
                "finished": [self._unless_closed(f) for f in finished],
            },
        )
        self.worker = worker
        self._last_report = time.perf_counter()
        self._stage = (0, 0, self._last_report)
        self.bar.value, self.bar.max = 0, 1
        self.status.value = f"{title}: starting"
        self.cancel_button.enabled = True
        self._watch_dock()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next step; what it would have written is not written."""
        if self.busy:
            self._stop.set()
            self.status.value = f"{self.title}: cancelling"

    def _show_progress(self, done: int, total: int, info: str) -> None:
        if not self.busy or self._closed or self._stop.is_set():  # no stale step after 'cancelling'
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
        if state == "done":
            self.bar.value = self.bar.max  # jobs without steps (loading) end full too
        self.status.value = f"{self.title}: {state}"
