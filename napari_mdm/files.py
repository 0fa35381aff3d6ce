"""Atomic writes: outputs appear whole under their final name, or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .jobs import UserError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def refuse_existing(target: str | os.PathLike, overwrite: bool) -> None:
    """Raise before any work when ``target`` exists and replacing it was not asked for."""
    if not overwrite and Path(target).exists():
        raise UserError(f"{target} already exists; pass --overwrite (or overwrite=True) to replace it")


@contextmanager
def atomic_output(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    Works for files and for directories (zarr stores). On any error, or a cancel, the temporary
    output is removed and an existing ``target`` is left untouched. With ``overwrite=False`` an
    existing target is an error before any work is done. System errors (disk full, no permission,
    a file where a folder should be) become a one-line :class:`UserError`.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_file():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # some writers create 0600 temporaries
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err}") from None
    finally:
        _remove(tmp)
