"""Errors say what to do in the words of the front end that shows them: the CLI names its
options, the plugin its controls (a flag cannot be passed in a dock widget)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest

from napari_mdm.files import OVERWRITE, refuse_existing
from napari_mdm.jobs import Remedy, UserError

PACKAGE = Path(__file__).resolve().parent.parent / "napari_mdm"
CLI_ONLY = {"cli.py"}
"""Modules whose errors only the CLI shows."""
FLAG = re.compile(r"--[a-z]")


def _literal_text(node: ast.AST) -> str:
    """The literal parts of a string expression (f-strings and concatenations included)."""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _calls(name: str):
    for path in PACKAGE.rglob("*.py"):
        if path.name in CLI_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
                yield path.relative_to(PACKAGE.parent), node


def test_no_error_the_plugin_can_show_names_a_cli_flag_outside_a_remedy():
    assert len(list(_calls("UserError"))) > 50  # the scan sees the package's errors
    problems = [
        f"{path}:{call.lineno}"
        for path, call in _calls("UserError")
        if call.args and FLAG.search(_literal_text(call.args[0]))
    ]
    assert problems == [], "give the flag in a Remedy(cli=..., plugin=...) instead"
    remedies = list(_calls("Remedy"))
    assert len(remedies) >= 4  # overwrite, --format zarr, --crop/--batch-size, another --out
    for path, call in remedies:
        plugin = next(
            (k.value for k in call.keywords if k.arg == "plugin"), call.args[1] if len(call.args) > 1 else None
        )
        assert plugin is not None and not FLAG.search(_literal_text(plugin)), f"{path}:{call.lineno}"


def test_an_existing_output_says_pass_overwrite_in_the_cli_and_tick_the_box_in_the_plugin(tmp_path):
    (tmp_path / "mask.tif").touch()
    with pytest.raises(UserError) as caught:
        refuse_existing(tmp_path / "mask.tif", overwrite=False)
    err = caught.value
    assert str(err) == f"{tmp_path / 'mask.tif'} already exists; pass --overwrite (or overwrite=True) to replace it"
    assert err.in_plugin == (
        f"{tmp_path / 'mask.tif'} already exists; tick 'overwrite files' to replace it, "
        "or choose another folder under 'save to'"
    )
    assert err.remedy is OVERWRITE


def test_both_wordings_survive_a_trip_through_another_process():
    err = pickle.loads(pickle.dumps(UserError("too big", Remedy("pass --smaller", "lower 'size'"))))
    assert (str(err), err.in_plugin) == ("too big; pass --smaller", "too big; lower 'size'")
    plain = UserError("no head")
    assert str(plain) == plain.in_plugin == "no head"
