"""Settings read from files (checkpoints, heads) checked against their dataclass before use.

A crafted or damaged file must give one clear error, not a traceback later nor a model of
absurd size: every value must have its field's type and lie within the field's limits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

T = TypeVar("T")
MAX_ITEMS = 16
"""The longest tuple setting a file may hold (channel multipliers, timesteps, blocks, ...)."""


def _number(key: str, value: Any, default: Any, limit: tuple[float, float] | None) -> Any:
    if isinstance(default, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(default, bool):
            raise ValueError(
                f"{key} must be {'true or false' if isinstance(default, bool) else 'a number'}, got {value!r}"
            )
        return value
    if isinstance(default, int) and not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if limit is not None and not limit[0] <= value <= limit[1]:
        raise ValueError(f"{key} must be in {limit[0]}..{limit[1]}, got {value!r}")
    return value


def _value(key: str, value: Any, default: Any, limit: tuple[float, float] | None) -> Any:
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, got {value!r}")
        return value
    if isinstance(default, tuple) or (default is None and value is not None):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
            raise ValueError(f"{key} must be a list of at most {MAX_ITEMS} integers, got {value!r}")
        return tuple(_number(key, v, 0, limit) for v in value)
    if default is None:
        return None
    return _number(key, value, default, limit)


def from_settings(cls: type[T], data: Any, limits: dict[str, tuple[float, float]] | None = None) -> T:
    """``cls(**data)`` after checking keys, types and ``limits`` (inclusive ranges of numbers and
    of tuple items); any defect is a ``ValueError`` naming the setting."""
    if not isinstance(data, dict):
        raise ValueError(f"settings must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown settings: {unknown}")
    limits = limits or {}
    return cls(**{k: _value(k, v, fields[k], limits.get(k)) for k, v in data.items()})
