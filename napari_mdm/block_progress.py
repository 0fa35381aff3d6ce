"""Progress and cancel inside one pass of the network: a callback after each U-Net block.

A 512-pixel tile of the ``small`` backbone takes tens of seconds on a CPU; reporting per tile
leaves a bar at 0 % and a Cancel waiting that long. Hooks on the U-Net's blocks call the
callback of the thread that is running the pass (another thread may use the same backbone
at the same time), so progress moves and ``should_stop`` is polled every block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

_current = threading.local()
_install_lock = threading.Lock()


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [*model.input_blocks, model.middle, *model.output_blocks]


def _after_block(*_) -> None:
    callback = getattr(_current, "callback", None)
    if callback is not None:
        callback()


def passes_blocks(model: nn.Module, deepest_decoder_block: int | None = None) -> int:
    """How many blocks one pass runs: all, or up to a decoder block (``decoder_features``)."""
    decoder = len(model.output_blocks) if deepest_decoder_block is None else deepest_decoder_block + 1
    return len(model.input_blocks) + 1 + decoder


@contextmanager
def per_block(model: nn.Module, callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` after each block of ``model`` this thread runs; it may raise
    :class:`~napari_mdm.jobs.Cancelled` to stop the pass. The hooks stay installed (they cost
    nothing without a callback), so no thread changes them while another runs the model."""
    with _install_lock:
        if not getattr(model, "_napari_mdm_block_hooks", False):
            for block in _blocks(model):
                block.register_forward_hook(_after_block)
            model._napari_mdm_block_hooks = True
    previous = getattr(_current, "callback", None)
    _current.callback = callback
    try:
        yield
    finally:
        _current.callback = previous
