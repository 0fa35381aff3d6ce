"""Atomic writes: outputs appear whole under their final name, or not at all.

Before any work, :func:`plan_outputs` checks every output of a command at once: no two outputs
on one path, no output on an input, no folder replaced by a file, nothing replaced without
``overwrite``, and every location writable; so a failure never comes after the compute.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .jobs import Remedy, UserError

MAX_NAME_BYTES = 255
"""The longest file name common file systems accept."""

OVERWRITE = Remedy(
    cli="pass --overwrite (or overwrite=True) to replace it",
    plugin="tick 'overwrite files' to replace it, or choose another folder under 'save to'",
)
"""How to replace an existing output: every output the plugin writes is planned in its
'Segment and export' tab, next to the 'overwrite files' box."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def is_zarr_store(path: Path) -> bool:
    """A zarr array or group (v2 or v3) rather than a folder of other files."""
    return any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup"))


def _temporary(target: Path, kind: str) -> Path:
    """A hidden name beside ``target`` that stays within the file-name limit however long it is."""
    return target.with_name(f".{target.name[:200]}.{uuid.uuid4().hex[:8]}.{kind}")


def refuse_existing(target: str | os.PathLike, overwrite: bool) -> None:
    """Raise before any work when ``target`` exists and replacing it was not asked for, or when it
    is a folder (other than a zarr store) that a file would replace."""
    target = Path(target)
    if len(os.fsencode(target.name)) > MAX_NAME_BYTES:
        raise UserError(
            f"cannot write {target}: the file name is {len(os.fsencode(target.name))} bytes long, "
            f"above the limit of {MAX_NAME_BYTES}"
        )
    try:
        is_folder, exists = target.is_dir(), target.exists() or target.is_symlink()
    except OSError as err:  # a folder name over the limit, a loop of links
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    if is_folder and not (target.suffix.lower() == ".zarr" and is_zarr_store(target)):
        raise UserError(
            f"cannot write {target}: it is a folder, and napari-mdm never replaces a folder with a file: name a file"
        )
    if not overwrite and exists:
        raise UserError(f"{target} already exists", OVERWRITE)


def check_writable(target: str | os.PathLike) -> None:
    """Raise ``cannot write PATH: why`` when ``target`` cannot be created: its name is too long,
    its folder cannot be made, or the nearest existing folder refuses a new file."""
    target = Path(target)
    refuse_existing(target, overwrite=True)  # a name that is too long, a folder in the way
    folder = target.parent
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    except OSError as err:  # a folder name over the limit
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    if not folder.is_dir():
        raise UserError(f"cannot write {target}: {folder} is not a folder")
    probe = folder / _temporary(target, "probe").name  # in the nearest folder that exists
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err} ({folder})") from None


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False
) -> list[Path]:
    """Check every output of a command before any work (see the module doc); returns them."""
    outputs = [Path(p) for p in outputs]
    inputs = [Path(p) for p in inputs]
    seen: dict[str, Path] = {}
    for out in outputs:
        key = os.path.realpath(out)
        if key in seen:
            raise UserError(
                f"several outputs of this run would go to the same output {out.name} in {out.parent}: "
                "rename the inputs or write them to other places"
            )
        seen[key] = out
        for source in inputs:
            if _same(out, source) or Path(os.path.realpath(source)).is_relative_to(key):
                raise UserError(f"{out} is an input of this run: write the output elsewhere, never over an input")
    for out in outputs:
        refuse_existing(out, overwrite)
    for out in outputs:
        check_writable(out)
    return outputs


@contextmanager
def atomic_output(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    Works for files and for directories (zarr stores). On any error, or a cancel, the temporary
    output is removed and an existing ``target`` is left untouched. With ``overwrite=False`` an
    existing target is an error before any work is done; a folder is never replaced by a file.
    System errors (disk full, no permission, a file where a folder should be) become a one-line
    :class:`UserError` ``cannot write PATH: why``.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    tmp = _temporary(target, "part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_file():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # some writers create 0600 temporaries
        if target.is_dir() and not target.is_symlink():
            if tmp.is_file():
                raise UserError(
                    f"cannot write {target}: it is a folder, and napari-mdm never replaces a folder "
                    "with a file: name a file"
                )
            old = _temporary(target, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    finally:
        _remove(tmp)
