"""The one reading of a boolean option (request options, metadata, flags, environment): 1/true/yes/on and
0/false/no/off, case and spaces ignored; a missing or empty value is the default; anything else is refused
with INVALID_ARGUMENT naming the option, so a typo never silently means "false"."""
from __future__ import annotations

from typing import Any

from common.status import StatusError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def as_bool(value: Any, default: bool = False, name: str = "option") -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text == "":
        return default
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise StatusError("INVALID_ARGUMENT", f"{name}={str(value)[:40]!r} is not a boolean (true/false)")


def is_boolean(value: Any) -> bool:
    """Whether as_bool would accept it (validation without a default)."""
    try:
        as_bool(value)
        return True
    except StatusError:
        return False
