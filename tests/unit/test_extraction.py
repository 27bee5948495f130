"""The strict extraction result, its normalisation, and the JSON schema the providers send."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from promptrun.extraction import Entity, ExtractionResult, clean_name, normalize_entities
from promptrun.providers import schema


def entity(name: str, rank: int, **kw: Any) -> Entity:
    return Entity(name=name, rank=rank, **kw)


# -- clean_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("**Acme CRM**", "Acme CRM"),
        ("__Globex__", "Globex"),
        ("`Initech`", "Initech"),
        ("Globex.", "Globex"),
        ("Pied Piper:", "Pied Piper"),
        ("Initech),", "Initech"),
        ('"Soylent Cloud"', "Soylent Cloud"),
        ("(Wayne Desk", "Wayne Desk"),
        ("  Stark   Ledger \n", "Stark Ledger"),
        ("# Heading Brand!", "Heading Brand"),
        ("Yahoo!", "Yahoo"),
        ("Node.js", "Node.js"),  # inner punctuation stays
        ("***", ""),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


# -- normalize_entities ---------------------------------------------------------------------


def test_markdown_and_trailing_punctuation_are_stripped() -> None:
    [only] = normalize_entities([entity("**Acme CRM**.", 1)])
    assert only.display_name == "Acme CRM"
    assert only.name == "acme crm"


def test_case_insensitive_merge_keeps_the_first_display_name() -> None:
    out = normalize_entities(
        [entity("ACME crm", 3), entity("Acme CRM", 1, type="product"), entity("acme CRM!", 2)]
    )
    assert len(out) == 1
    assert out[0].display_name == "Acme CRM"  # the first by rank, not by list order
    assert out[0].type == "product"
    assert out[0].rank == 1


def test_a_merge_fills_missing_sentiment_and_snippet_from_later_mentions() -> None:
    out = normalize_entities(
        [
            entity("Globex", 1),
            entity("globex", 2, sentiment="negative", snippet="Globex is slow"),
            entity("GLOBEX", 3, sentiment="positive", snippet="later"),
        ]
    )
    assert (out[0].sentiment, out[0].snippet) == ("negative", "Globex is slow")


def test_ranks_are_renumbered_by_first_appearance() -> None:
    out = normalize_entities(
        [
            entity("Hooli", 10),
            entity("Globex", 4),
            entity("**globex**", 5),
            entity("***", 6),  # nothing left after cleaning: dropped
            entity("Initech", 7),
        ]
    )
    assert [(e.display_name, e.rank) for e in out] == [("Globex", 1), ("Initech", 2), ("Hooli", 3)]


def test_no_entities() -> None:
    assert normalize_entities([]) == []


# -- the strict result ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"entities": [{"name": "A", "rank": 0}]},
        {"entities": [{"name": "", "rank": 1}]},
        {"entities": [{"name": "A", "rank": 1, "type": "animal"}]},
        {"entities": [{"name": "A", "rank": 1, "sentiment": "meh"}]},
        {"entities": [{"name": "A", "rank": 1, "colour": "red"}]},
        {"entities": [], "extra": 1},
        {"entities": [{"name": f"E{i}", "rank": i + 1} for i in range(201)]},
        {},
    ],
)
def test_extraction_result_is_strict(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ExtractionResult.model_validate(bad)


# -- the strict JSON schema the providers send ----------------------------------------------


def _objects(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found.extend(_objects(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_objects(value))
    return found


def test_strict_schema_requires_everything_and_forbids_extras() -> None:
    strict = schema.extraction_schema()
    text = json.dumps(strict)
    assert "$ref" not in text and "$defs" not in text and "anyOf" not in text
    for keyword in ('"default"', '"title"', '"minLength"', '"maxItems"', '"minimum"'):
        assert keyword not in text
    objects = _objects(strict)
    assert len(objects) == 2
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    item = strict["properties"]["entities"]["items"]["properties"]
    assert item["sentiment"] == {
        "enum": ["positive", "neutral", "negative", None],
        "type": ["string", "null"],
    }
    assert item["snippet"]["type"] == ["string", "null"]
    assert item["type"]["type"] == "string" and "other" in item["type"]["enum"]


def test_strict_schema_accepts_what_pydantic_accepts_and_rejects_extras() -> None:
    strict = schema.extraction_schema()
    good = ExtractionResult(
        entities=[
            entity("Acme", 1, type="product", sentiment="positive", snippet="Acme is good"),
            entity("Bo", 2),
        ]
    ).model_dump()
    jsonschema.validate(good, strict)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"entities": [{**good["entities"][0], "colour": "red"}]}, strict)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"entities": [{"name": "Acme", "rank": 1}]}, strict
        )  # all fields required


def test_extraction_schema_is_a_fresh_copy() -> None:
    first = schema.extraction_schema()
    first["properties"].clear()
    assert schema.extraction_schema()["properties"]


# -- parsing model output -------------------------------------------------------------------


GOOD = {
    "entities": [{"name": "Acme", "type": "brand", "rank": 1, "sentiment": None, "snippet": None}]
}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD),
        "```json\n" + json.dumps(GOOD) + "\n```",
        "Sure! Here it is:\n" + json.dumps(GOOD) + "\nHope this helps.",
    ],
)
def test_parse_result_text_tolerates_fences_and_prose(text: str) -> None:
    assert schema.parse_result_text(text).entities[0].name == "Acme"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        (None, "empty"),
        ('{"entities": [{"name": "Acme"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"entities": [{"name": "Acme", "rank": 0}]}', "entities.0.rank"),
    ],
)
def test_invalid_output_names_what_was_wrong(text: str | None, needle: str) -> None:
    with pytest.raises(schema.InvalidOutput) as info:
        schema.parse_result_text(text)
    assert needle in str(info.value)


def test_markdown_link_keeps_only_its_text() -> None:
    from promptrun.extraction import clean_name

    assert clean_name("[Hooli](https://hooli.example/pricing)") == "Hooli"
    assert clean_name("**[Acme CRM](http://x)**.") == "Acme CRM"
