"""Patch: ``/parse_function_call`` and ``/separate_reasoning`` answer an unknown parser
name with a 400 that lists the known ones (SGLang 0.5.17 answered 500 "Internal Server
Error" with a traceback in the log).

Both routes build the parser the client names (``entrypoints/http_server.py:1608`` and
``:1636``); the constructors raise ``ValueError`` for a name they do not know
(``function_call/function_call_parser.py:99-109``,
``parser/reasoning_parser.py:1656-1669``), which nothing on the way catches.
``/parse_function_call``'s ``tool_call_parser`` is even optional
(``managers/io_struct.py:2084``, "if not specified, tries all"), and leaving it out was
the same 500.

BEFORE hooks on the two constructors raise ``HTTPException(400)`` instead, which SGLang's
handler turns into its JSON error (``http_server.py:524``). Everywhere else the
constructors take the server's own ``--tool-call-parser`` / ``--reasoning-parser``
(chat serving, the scheduler, the grammar backend), which SGLang's argument parser holds
to the same names (``server_args.py:8220-8239``; ``auto`` is resolved at start-up,
``entrypoints/engine.py:1078-1082``), so only a client's name can reach the refusal.
"""

from __future__ import annotations

from typing import Any, Mapping

TOOL_PARSER_INIT = "sglang.srt.function_call.function_call_parser.FunctionCallParser.__init__"
REASONING_PARSER_INIT = "sglang.srt.parser.reasoning_parser.ReasoningParser.__init__"


def _refuse_unknown(field: str, name: Any, known: Mapping[str, Any], *, lower: bool) -> None:
    """HTTPException(400) unless ``name`` (lower-cased if the constructor does) is known."""
    if not isinstance(name, str) or (name.lower() if lower else name) not in known:
        from fastapi import HTTPException

        raise HTTPException(status_code=400, detail=(
            f"{field} {name!r} is not a parser this server knows: one of "
            f"{', '.join(sorted(known))}"))


def known_tool_parser(self: Any, tools: Any = None, tool_call_parser: Any = None,
                      *args: Any, **kwargs: Any) -> None:
    """BEFORE ``FunctionCallParser.__init__(tools, tool_call_parser, tokenizer=None)``
    (it looks the name up as given)."""
    _refuse_unknown("tool_call_parser", tool_call_parser, type(self).ToolCallParserEnum,
                    lower=False)


def known_reasoning_parser(self: Any, model_type: Any = None, *args: Any,
                           **kwargs: Any) -> None:
    """BEFORE ``ReasoningParser.__init__(model_type, ...)`` (it looks the name up
    lower-cased)."""
    _refuse_unknown("reasoning_parser", model_type, type(self).DetectorMap, lower=True)
