"""Normalising a record of a known format to Phi-3 chat messages: a list of
{"role": "system" | "user" | "assistant", "content": str}.

  messages           system/user/assistant as they are; tool -> user "Function result:\\n..."; an assistant's
                     tool_calls -> "Function call:\\n" + [{"name", "arguments"}] JSON after its text
  sharegpt           human -> user, gpt -> assistant, system -> system,             (see _SHAREGPT_ROLES)
                     function_call -> assistant "Function call:\\n...", observation -> user "Function result:\\n..."
                     (either format's turns are read by their shape under `messages` or `conversations`)
  alpaca             history pairs first, then user = instruction + "\\n\\n" + input, assistant = output
  prompt_completion  a system column (if any), then two strings (one user turn, one assistant turn) or two lists
                     of messages
  phi3_text          the turns of the Phi-3 chat markup in `text` (markup.py)

A `tools` value (JSON text or a list) opens the system message: "You can call these functions:\\n" + its JSON.
Bad content never raises past `normalise`: it raises Invalid, whose messages become the record's problems.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .files import NotJSON, loads
from .formats import REQUIRED, TURN_FORMATS, turn_list_format, turn_list_key
from .markup import phi3_turns
from .turns import Invalid, Turn, check_turns
from .wording import describe, quoted, shown

FUNCTION_CALL = "Function call:\n"
FUNCTION_RESULT = "Function result:\n"
TOOLS_HEADER = "You can call these functions:\n"

# OpenAI-style role -> Phi-3 role.
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "user"}

# ShareGPT "from" -> (Phi-3 role, prefix of the content).
_SHAREGPT_ROLES = {
    "human": ("user", ""),
    "user": ("user", ""),
    "gpt": ("assistant", ""),
    "assistant": ("assistant", ""),
    "system": ("system", ""),
    "function_call": ("assistant", FUNCTION_CALL),
    "observation": ("user", FUNCTION_RESULT),
}


def normalise(record: dict, fmt: str) -> list[dict[str, str]]:
    missing = [key for key in REQUIRED[fmt] if record.get(key) is None]
    if fmt in TURN_FORMATS and turn_list_key(record):
        missing = []  # its turns are under the other key
    if missing:
        raise Invalid(f"missing {quoted(missing)} (the {fmt} format needs {quoted(REQUIRED[fmt])})")
    turns = _NORMALISERS[fmt](record)
    problems = check_turns(turns)
    if problems:
        raise Invalid(*problems)
    return [{"role": turn.role, "content": turn.content} for turn in turns]


def _normalise_turn_list(record: dict) -> list[Turn]:
    """messages and sharegpt: the turns under either key, read by their shape (formats.turn_list_format)."""
    key = turn_list_key(record)
    turns = _list_field(record, key, "a list of {role, content} objects" if key == "messages"
                        else "a list of {from, value} objects")
    if turn_list_format(turns, key) == "messages":
        return _add_tools(_message_turns(turns, "turn"), record.get("tools"))
    return _add_tools(_system_turns(record.get("system")) + _sharegpt_turns(turns), record.get("tools"))


def _message_turns(messages: list, where: str) -> list[Turn]:
    """OpenAI-style messages; `where` names them in problems ("turn", "prompt turn")."""
    turns = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise Invalid(f"{where} {number} must be an object with 'role' and 'content', found {describe(message)}")
        role = _role(message, "role", _MESSAGE_ROLES, f"{where} {number}")
        content = message.get("content")
        if role == "tool":
            content = _prefixed(FUNCTION_RESULT, content)
        elif role == "assistant" and message.get("tool_calls"):
            content = _with_tool_calls(content, message["tool_calls"])
        turns.append(Turn.numbered(number, _MESSAGE_ROLES[role], role, content, where))
    _check_tool_results(messages, where)
    return turns


def _check_tool_results(messages: list[dict], where: str) -> None:
    """An assistant's tool_calls are answered by a tool message before the conversation goes on; a call may end
    it (OpenAI's fine-tuning format teaches calling that way)."""
    for number, (message, after) in enumerate(zip(messages, messages[1:]), 1):
        if message.get("role") == "assistant" and message.get("tool_calls") and after.get("role") != "tool":
            raise Invalid(f"{where} {number}: the assistant's tool_calls must be followed by a tool result, "
                           f"found {shown(after.get('role'))}")


def _with_tool_calls(content: Any, tool_calls: Any) -> Any:
    """The assistant's text (if any), then its calls in the {"name", "arguments"} JSON of ShareGPT function_call."""
    calls = [_simple_call(call) for call in (tool_calls if isinstance(tool_calls, list) else [tool_calls])]
    call_text = FUNCTION_CALL + _dumps(calls[0] if len(calls) == 1 else calls, "tool_calls")
    if content is None or (isinstance(content, str) and not content.strip()):
        return call_text
    return f"{content}\n\n{call_text}" if isinstance(content, str) else content  # a wrong type is reported later


def _simple_call(call: Any) -> Any:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or "name" not in function:
        return call  # not OpenAI-shaped: keep it as it is
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # OpenAI sends the arguments as JSON text
        try:
            arguments = loads(arguments)
        except NotJSON:
            pass
    return {"name": function["name"], "arguments": arguments}


def _sharegpt_turns(conversation: list) -> list[Turn]:
    turns = []
    for number, turn in enumerate(conversation, 1):
        if not isinstance(turn, dict):
            raise Invalid(f"turn {number} must be an object with 'from' and 'value', found {describe(turn)}")
        name = _role(turn, "from", _SHAREGPT_ROLES, f"turn {number}")
        role, prefix = _SHAREGPT_ROLES[name]
        turns.append(Turn.numbered(number, role, name, _prefixed(prefix, turn.get("value"))))
    _check_function_calls(turns)
    return turns


def _check_function_calls(turns: list[Turn]) -> None:
    following = [turn.name for turn in turns[1:]] + ["nothing"]
    for turn, after in zip(turns, following):
        if turn.name == "function_call" and after != "observation":
            raise Invalid(f"{turn.at}: a function_call must be followed by an observation, found {after}")


def _normalise_alpaca(record: dict) -> list[Turn]:
    turns = _system_turns(record.get("system"))
    for number, pair in enumerate(_list_field(record, "history", "a list of [user, assistant] pairs", []), 1):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Invalid(f"history pair {number} must be a [user, assistant] pair, found {describe(pair)}")
        at = f"history pair {number}"
        turns += [Turn("user", pair[0], at, f"{at}: user message", "user"),
                  Turn("assistant", pair[1], at, f"{at}: assistant message", "assistant")]
    turns.append(Turn.named("instruction", "user", _alpaca_prompt(record)))
    turns.append(Turn.named("output", "assistant", record["output"]))
    return turns


def _alpaca_prompt(record: dict) -> str:
    """The instruction, then the input after a blank line; either may be empty, not both."""
    parts = {"instruction": record["instruction"], "input": record.get("input")}
    if parts["input"] is None:
        parts["input"] = ""
    for key, value in parts.items():
        if not isinstance(value, str):
            raise Invalid(f"{key} must be a string, found {describe(value)}")
    return "\n\n".join(part for part in parts.values() if part.strip())


def _normalise_prompt_completion(record: dict) -> list[Turn]:
    prompt, completion = record["prompt"], record["completion"]
    as_lists = _json_list(prompt), _json_list(completion)
    if all(_looks_like_messages(value) for value in as_lists):  # conversational pairs saved as JSON text (CSV)
        prompt, completion = as_lists
    system = _system_turns(record.get("system"))
    if isinstance(prompt, str) and isinstance(completion, str):
        return system + [Turn.named("prompt", "user", prompt), Turn.named("completion", "assistant", completion)]
    if isinstance(prompt, list) and isinstance(completion, list):
        return system + _message_turns(prompt, "prompt turn") + _message_turns(completion, "completion turn")
    raise Invalid("prompt and completion must both be strings or both be lists of messages, "
                   f"found {describe(prompt)} and {describe(completion)}")


def _normalise_phi3_text(record: dict) -> list[Turn]:
    text = record["text"]
    if not isinstance(text, str):
        raise Invalid(f"text must be a string of Phi-3 chat markup, found {describe(text)}")
    return phi3_turns(text)


_NORMALISERS = {
    "messages": _normalise_turn_list,
    "sharegpt": _normalise_turn_list,
    "alpaca": _normalise_alpaca,
    "prompt_completion": _normalise_prompt_completion,
    "phi3_text": _normalise_phi3_text,
}


# ---------------------------------------------------------------------------------------------- normaliser helpers


def _role(turn: dict, key: str, allowed: dict, at: str) -> str:
    name = turn.get(key)
    if name is None:
        raise Invalid(f"{at}: missing {key!r}")
    if not isinstance(name, str) or name not in allowed:
        raise Invalid(f"{at}: unknown role {shown(name)}; use {quoted(allowed, 'or')}")
    return name


def _prefixed(prefix: str, content: Any) -> Any:
    """prefix + content for real text; anything else unchanged, so the content check reports it."""
    return prefix + content if isinstance(content, str) and content.strip() else content


def _system_turns(system: Any) -> list[Turn]:
    """A system column as the first turn; an empty one means none."""
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [Turn.named("system", "system", system)]


def _add_tools(turns: list[Turn], tools: Any) -> list[Turn]:
    """Tools open the system message: Phi-3's chat template has no place of its own for them."""
    text = _tools_text(tools)
    if text is None:
        return turns
    first = turns[0] if turns else None
    if first and first.role == "system" and isinstance(first.content, str) and first.content.strip():
        return [replace(first, content=f"{text}\n\n{first.content}"), *turns[1:]]
    return [Turn.named("tools", "system", text), *turns]


def _tools_text(tools: Any) -> str | None:
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = loads(tools)
        except NotJSON as error:
            raise Invalid(f"tools is not valid JSON: {error.reason_at_column()}") from None
    if tools is None or tools == [] or tools == {}:
        return None
    if not isinstance(tools, (list, dict)):
        raise Invalid(f"tools must be a list of function descriptions, found {describe(tools)}")
    return TOOLS_HEADER + _dumps(tools, "tools")


def _dumps(value: Any, what: str) -> str:
    """JSON text of a value from the file; Parquet can hold what JSON cannot (binary, timestamps)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise Invalid(f"{what} cannot be written as JSON text ({error})") from None


def _list_field(record: dict, key: str, expected: str, default: list | None = None) -> list:
    """record[key] as a list; JSON text holding a list counts (CSV cells, JSON-encoded columns)."""
    value = _json_list(record.get(key))
    if isinstance(value, list):
        return value
    if default is not None and value in (None, ""):  # absent, or an empty CSV cell
        return default
    found = "text that is not a JSON list" if isinstance(value, str) and value else describe(value)
    raise Invalid(f"{key} must be {expected}, found {found}")


def _json_list(value: Any) -> Any:
    """The list a string holds as JSON text; any other value unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = loads(value)
        except NotJSON:
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def _looks_like_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)
