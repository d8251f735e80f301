"""Google's `fields` system parameter: partial responses.

Facts (Google's "Performance tips", partial response syntax, as quoted in
PipedreamHQ/pipedream#21968; googleapis/google-api-dotnet-client#1444): `fields` is a
comma-separated list of fields relative to the response root; `a/b` selects `b` inside
`a`; `a(b,c)` selects sub-fields of each element of an array or object (`items(id)` is
`items/id`); `*` selects every field; names are case-sensitive, and a name the resource
does not have is refused with 400 "Invalid field selection <name>". (The error's reason
and location below are this sandbox's guess: only the message text was observed.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Field names of Gmail's ListMessagesResponse and its Message (gmail.v1.json schemas).
_MESSAGE_FIELDS = (
    "id", "threadId", "labelIds", "snippet", "historyId", "internalDate", "payload",
    "sizeEstimate", "raw", "classificationLabelValues",
)  # fmt: skip
LIST_MESSAGES_SCHEMA: dict[str, Any] = {
    "messages": dict.fromkeys(_MESSAGE_FIELDS),
    "nextPageToken": None,
    "resultSizeEstimate": None,
}


class InvalidFieldSelection(Exception):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Invalid field selection {name}")


@dataclass
class Selection:
    """Selected names, each with what is selected below it (empty: the whole value)."""

    children: dict[str, Selection] = field(default_factory=dict)

    def add(self, path: list[str]) -> Selection:
        node = self
        for name in path:
            node = node.children.setdefault(name, Selection())
        return node


_TOKEN = re.compile(r"\s*([A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+)*|[(),])")


def parse(text: str) -> Selection:
    root = Selection()
    tokens = _tokens(text)
    position = _parse_list(tokens, 0, root)
    if position != len(tokens):
        raise InvalidFieldSelection(text)
    return root


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip():
                raise InvalidFieldSelection(text[position:].strip())
            break
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _parse_list(tokens: list[str], position: int, into: Selection) -> int:
    while position < len(tokens):
        token = tokens[position]
        if token in "(),":
            raise InvalidFieldSelection(token)
        node = into.add(token.split("/"))
        position += 1
        if position < len(tokens) and tokens[position] == "(":
            position = _parse_list(tokens, position + 1, node)
            if position >= len(tokens) or tokens[position] != ")":
                raise InvalidFieldSelection(token)
            position += 1
        if position < len(tokens) and tokens[position] == ",":
            position += 1
            continue
        break
    return position


def check(selection: Selection, schema: dict[str, Any] | None) -> None:
    """Refuse names the resource does not have; below the known schema anything goes."""
    if schema is None:
        return
    for name, below in selection.children.items():
        if name == "*":
            continue
        if name not in schema:
            raise InvalidFieldSelection(name)
        check(below, schema[name])


def apply(selection: Selection, value: Any) -> Any:
    """The parts of `value` the selection names; absent fields stay absent."""
    if not selection.children:
        return value
    if isinstance(value, list):
        return [apply(selection, item) for item in value]
    if not isinstance(value, dict):
        return value
    picked: dict[str, Any] = {}
    for name, below in selection.children.items():
        for key in value if name == "*" else [name]:
            if key in value:
                picked[key] = apply(below, value[key])
    return picked
