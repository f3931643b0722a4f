"""How a settings object's pydantic ``ValidationError`` reads on a command line: one line
per error, naming the flag the user typed (``--num-prompts -3: Input should be greater
than 0``) instead of the dataclass field and pydantic's help links."""

from __future__ import annotations

from typing import Mapping

from pydantic import ValidationError


def flag_message(err: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """``err``'s errors as ``--flag value: message`` lines. ``flags`` maps a field name to
    its flag where they differ (``rate`` -> ``--request-rate``); any other field ``a_b``
    is ``--a-b``. The value shown is the one that failed: for an element of a list, the
    element and its place (``--concurrency item 2 = 0``)."""
    lines = []
    for e in err.errors():
        name, *where = e["loc"] or ("",)
        flag = (flags or {}).get(str(name), "--" + str(name).replace("_", "-"))
        value = e.get("input")
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        place = "".join(f" item {i + 1}" for i in where if isinstance(i, int))
        lines.append(f"{flag}{place}{' =' if place else ''} {value}: {e['msg']}")
    return "\n".join(lines)
