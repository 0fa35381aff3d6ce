"""The job panel every widget uses: results on the Qt thread, progress with ETA, cancel, errors."""

from __future__ import annotations

import threading

import pytest

from napari_mdm._widgets.workers import JobPanel
from napari_mdm.jobs import UserError, check_stop


@pytest.fixture
def panel(qtbot):
    panel = JobPanel()
    qtbot.addWidget(panel.native)
    return panel


def test_result_progress_and_eta_per_stage(panel, qtbot):
    results, reports, statuses = [], [], []
    panel.progressed.connect(lambda *report: (reports.append(report), statuses.append(panel.status.value)))

    def compute(progress, should_stop):
        for i in range(1, 4):
            progress(i, 3, f"features tile {i}/3")
        for step in (10, 20):
            progress(step, 20, "head loss=0.5")
        return 42

    panel.start("Job", compute, results.append)
    qtbot.waitUntil(lambda: not panel.busy)
    assert results == [42] and panel.status.value == "Job: done"
    assert [r[:2] for r in reports] == [(1, 3), (2, 3), (3, 3), (10, 20), (20, 20)]
    assert any(s.startswith("Job: 2/3  features tile 2/3  ETA ") for s in statuses)
    assert any(s.startswith("Job: 10/20  head loss=0.5  ETA ") for s in statuses)


def test_one_job_at_a_time_and_cancel(panel, qtbot, notes):
    release = threading.Event()

    def compute(progress, should_stop):
        while not release.wait(0.01):
            check_stop(should_stop)

    assert panel.start("Long", compute, print) is not None
    assert panel.start("Other", compute, print) is None
    assert "Long is still running" in notes()[-1]
    panel.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not panel.busy)
    assert panel.status.value == "Long: cancelled" and notes()[-1] == "Long: cancelled"


@pytest.mark.parametrize(
    "error, message",
    [(UserError("paint two classes"), "Job: paint two classes"), (ValueError("bad"), "Job failed: ValueError: bad")],
)
def test_errors_become_notifications(panel, qtbot, notes, error, message):
    def compute(progress, should_stop):
        raise error

    panel.start("Job", compute, print)
    qtbot.waitUntil(lambda: not panel.busy)
    assert panel.status.value == "Job: failed" and notes()[-1] == message
