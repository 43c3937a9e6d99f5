"""Raw rows in the usual shapes -> validated chat messages: Alpaca, chat (OpenAI messages or ShareGPT
conversations), prompt/completion, or a user's templates over any columns with value maps. Every error names
the file and line (`where`)."""

from __future__ import annotations

import string
from typing import Any

from tasks.lib.config import DataConfig
from tasks.lib.dataset.data_formats import DataError

_ROLES = {"system", "user", "assistant"}
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
_AUTO_KEYS = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
}


def detect_format(row: dict[str, Any], source: str) -> str:
    """The format a row's keys imply; a DataError when none or several match."""
    found = sorted(
        {"chat" if name == "sharegpt" else name for name, keys in _AUTO_KEYS.items() if all(key in row for key in keys)}
    )
    if len(found) == 1:
        return found[0]
    columns = ", ".join(map(str, row)) or "(none)"
    if not found:
        raise DataError(
            f"{source}: cannot detect the data format from columns [{columns}]; expected instruction/output "
            "(alpaca), messages or conversations (chat), prompt/completion, or set data.format: template"
        )
    raise DataError(f"{source}: ambiguous data format, columns [{columns}] match {found}; set data.format")


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {key!r} (columns: {', '.join(map(str, row))})")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return text


def template_columns(template: str) -> set[str]:
    """Column names used as {placeholders} in a str.format template."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.add(field.split(".")[0].split("[")[0])
    return names


def check_template_columns(columns: list[str], data: DataConfig, source: str) -> None:
    """One error naming every template/value_map column absent from the data, with the available ones."""
    used = template_columns(data.prompt_template or "") | template_columns(data.completion_template or "")
    if "" in used:
        raise DataError(f"{source}: templates must name columns, e.g. {{sentence}}; positional {{}} is not allowed")
    missing = sorted((used | set(data.value_maps)) - set(columns))
    if missing:
        raise DataError(
            f"{source}: column(s) {', '.join(map(repr, missing))} used by data.prompt_template / "
            f"data.completion_template / data.value_maps not found; available columns: {', '.join(columns)}"
        )


def _render_template(template: str, row: dict[str, Any], data: DataConfig, where: str) -> str:
    values = {}
    for column in template_columns(template):
        if row.get(column) is None:
            raise DataError(f"{where}: missing value for column {column!r}")
        value = _text(row, column, where, required=False)
        mapping = data.value_maps.get(column)
        if mapping is not None:
            if value not in mapping:
                raise DataError(
                    f"{where}: column {column!r} value {value!r} is not in data.value_maps.{column} "
                    f"({', '.join(map(repr, mapping))})"
                )
            value = mapping[value]
        values[column] = value
    return template.format_map(values)


def _chat_messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    sharegpt = "messages" not in row and "conversations" in row
    raw = row["conversations"] if sharegpt else row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: field {'conversations' if sharegpt else 'messages'!r} must be a non-empty list")
    messages = []
    for number, message in enumerate(raw, start=1):
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        if not isinstance(message, dict) or role_key not in message or content_key not in message:
            raise DataError(f"{where}: message {number} must be an object with {role_key!r} and {content_key!r}")
        role = message[role_key]
        role = _SHAREGPT_ROLES.get(role, role) if sharegpt else role
        if role not in _ROLES:
            raise DataError(
                f"{where}: message {number} has role {message[role_key]!r}; expected one of system, user, assistant"
            )
        content = message[content_key]
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: message {number} ({role}) has empty or non-text content")
        messages.append({"role": role, "content": content})
    return messages


def validate_messages(messages: list[dict[str, str]], where: str) -> None:
    """Optional system first, then user/assistant alternating, ending with an assistant answer."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * ((len(turns) + 1) // 2)
    roles = [message["role"] for message in turns]
    if not turns or roles != expected[: len(roles)] or roles[-1] != "assistant":
        raise DataError(
            f"{where}: chat roles out of order: {roles}; expected an optional system turn, "
            "then user/assistant alternating, ending with assistant"
        )


def row_to_messages(row: dict[str, Any], data: DataConfig, where: str) -> list[dict[str, str]]:
    """Normalise one raw row to validated chat messages; `where` ("file line N") prefixes every error."""
    fmt = detect_format(row, where) if data.format == "auto" else data.format
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction", where), _text(row, "input", where, required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(row, "output", where)},
        ]
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _text(row, "prompt", where)},
            {"role": "assistant", "content": _text(row, "completion", where)},
        ]
    elif fmt == "template":
        prompt = _render_template(data.prompt_template or "", row, data, where)
        answer = _render_template(data.completion_template or "", row, data, where)
        if not prompt.strip() or not answer.strip():
            raise DataError(f"{where}: the {'prompt' if not prompt.strip() else 'completion'} template renders empty")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    else:
        messages = _chat_messages(row, where)
    if data.system_prompt:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": data.system_prompt}
        else:
            messages.insert(0, {"role": "system", "content": data.system_prompt})
    validate_messages(messages, where)
    return messages
