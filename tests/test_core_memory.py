"""Host memory helpers (issue 14): huge-page zeros and a heap kept for a backbone pass's tensors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_mdm import memory


@pytest.mark.parametrize("shape", [(3, 5), (8, 1024, 1024)])
def test_zeros_are_writable_zeros_of_the_shape_and_type(shape):
    out = memory.zeros(shape, np.float16)
    assert out.shape == shape and out.dtype == np.float16 and out.flags.writeable and out.flags.c_contiguous
    assert not out.any()
    out[(-1,) * len(shape)] = 2
    assert out.sum() == 2


def test_reused_heap_nests_across_threads_and_is_left_closed():
    """The thresholds are set by the first job in and trimmed by the last one out, whichever
    thread it runs on; a job that raises still closes."""
    errors = []

    def job():
        try:
            with memory.reused_heap(), memory.reused_heap():
                np.ones(1 << 22).sum()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(ValueError, match="inside"), memory.reused_heap():
        raise ValueError("inside")
    memory.release_free_memory()
    assert not errors and memory._open_jobs == [0]
