"""What every real provider's extraction shares: the strict JSON schema, the instructions,
and the parsing and validation of what a model sends back.

The schema is derived from `promptrun.extraction.ExtractionResult`, in the strict form that
OpenAI structured outputs require (and Anthropic / Bedrock tools accept): every property
required, nullable fields typed `["string", "null"]`, `additionalProperties: false`, no
`$ref`, and no keywords strict mode refuses (lengths and bounds stay with pydantic, which
validates every result).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from typing import Any

from pydantic import ValidationError

from promptrun.extraction import ExtractionResult

TOOL_NAME = "record_entities"
SCHEMA_NAME = "entities"

EXTRACTION_INSTRUCTIONS = """\
You extract the named entities that an AI assistant's answer mentions.
Rules:
- Include the brands, products, people, organizations and places the answer names.
  Skip generic categories (for example "CRM software" or "a laptop").
- One entry per distinct entity, in order of first appearance; `rank` is that order, from 1.
- `name`: as the answer writes it, without markdown, numbering or trailing punctuation.
- `type`: brand, product, person, organization, place or other.
- `sentiment`: how the answer speaks of the entity (positive, neutral or negative), or null.
- `snippet`: the short phrase or sentence (at most 200 characters) where the entity first
  appears, or null.
- Never add an entity the answer does not mention. If it mentions none, return an empty list."""

TOOL_DESCRIPTION = (
    "Record the named entities that the answer mentions, in order of first appearance."
)

# Keywords strict structured outputs do not accept; pydantic enforces them after parsing.
_DROPPED = {
    "title",
    "default",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "pattern",
    "format",
}


class InvalidOutput(Exception):
    """The model's structured output was not valid JSON or did not match the schema."""


def _strict(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_strict(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _strict(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _strict(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _strict(value, defs)
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
        # `X | None` -> X with type [X, "null"] (and null among its enum values).
        other = next(x for x in any_of if x != {"type": "null"})
        if isinstance(other.get("type"), str):
            del out["anyOf"]
            out.update(other)
            out["type"] = [other["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
    if out.get("type") == "object" and "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


@cache
def _schema_text() -> str:
    raw = ExtractionResult.model_json_schema()
    schema = _strict(raw, raw.get("$defs", {}))
    schema["description"] = "The entities the answer mentions, in order of first appearance."
    return json.dumps(schema)


def extraction_schema() -> dict[str, Any]:
    """A fresh copy of the strict JSON schema for ExtractionResult."""
    return copy.deepcopy(json.loads(_schema_text()))


def json_text_instructions() -> str:
    """Instructions for models without structured outputs: the JSON is asked for in text."""
    return (
        EXTRACTION_INSTRUCTIONS
        + "\nReply with only one JSON object, with no prose and no code fences, matching this"
        " JSON Schema:\n" + _schema_text()
    )


def user_message(answer: str) -> str:
    return f"The answer to analyse:\n<answer>\n{answer}\n</answer>"


def repair_message(error: str) -> str:
    return (
        f"Your previous output was invalid: {error}\n"
        "Send the complete result again, matching the schema exactly."
    )


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_json_text(text: str | None) -> Any:
    """A JSON value from a model's text: code fences and prose around one object tolerated."""
    if text is None or not text.strip():
        raise InvalidOutput("the reply was empty; expected a JSON object")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        start, end = body.find("{"), body.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(body[start : end + 1])
            except json.JSONDecodeError:
                pass  # not JSON either: the error below names the first problem
        raise InvalidOutput(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(x) for x in err["loc"]) or "result"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)[:400]


def validate_result(data: Any) -> ExtractionResult:
    """The parsed output as an ExtractionResult, or InvalidOutput naming what was wrong."""
    if not isinstance(data, dict):
        raise InvalidOutput(f"expected a JSON object with `entities`, got {type(data).__name__}")
    try:
        return ExtractionResult.model_validate(data)
    except ValidationError as exc:
        raise InvalidOutput(
            f"does not match the schema: {describe_validation_error(exc)}"
        ) from None


def parse_result_text(text: str | None) -> ExtractionResult:
    return validate_result(parse_json_text(text))
