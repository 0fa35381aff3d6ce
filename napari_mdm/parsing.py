"""Text a user types into a list of numbers: one rule for the command line and the widgets."""

from __future__ import annotations

from .jobs import UserError


def parse_ints(text: str, what: str = "values") -> tuple[int, ...]:
    """'50, 150' or '50 150' -> (50, 150); anything else is a :class:`UserError` naming ``what``."""
    try:
        values = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise UserError(f"{what} must be whole numbers separated by commas or spaces, got {text!r}") from None
    if not values:
        raise UserError(f"give at least one of the {what}, e.g. 50")
    return values
