"""How pydantic's checks read on a command line: a settings object's ``ValidationError``
as one line per error naming the flag the user typed (``--num-prompts -3: Input should
be greater than 0``) instead of the dataclass field and pydantic's help links, and
argparse types that validate one flag the same way."""

from __future__ import annotations

import argparse
from typing import Annotated, Any, Callable, Mapping

from pydantic import (BeforeValidator, Field, NonNegativeInt, PositiveInt, TypeAdapter,
                      ValidationError)


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


def arg_type(annotation: Any, name: str) -> Callable[[str], Any]:
    """An argparse ``type`` that validates with pydantic: ``arg_type(PositiveInt,
    "positive integer")`` turns ``"0"`` into argparse's ``argument --window: 0 is not a
    positive integer (Input should be greater than 0)`` (exit code 2)."""
    adapter = TypeAdapter(annotation)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(
                f"{text} is not a {name} ({e.errors()[0]['msg']})") from None

    parse.__name__ = name
    return parse


#: A share in (0, 1]: a memory fraction, an attainment target, a fraction of peak
Share = Annotated[float, Field(gt=0, le=1)]

#: Concurrency levels: at least one, each a positive count (``"1,8,32"`` on a command line)
Levels = Annotated[list[PositiveInt], Field(min_length=1), BeforeValidator(
    lambda v: [x for x in v.split(",") if x.strip()] if isinstance(v, str) else v)]

POSITIVE = arg_type(PositiveInt, "positive integer")
NON_NEGATIVE = arg_type(NonNegativeInt, "non-negative integer")
SHARE = arg_type(Share, "share in (0, 1]")
LEVELS = arg_type(Levels, "comma-separated list of positive integers")
