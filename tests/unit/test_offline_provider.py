"""The offline model: deterministic answers, token counts as word counts, and an extraction
that finds what the answer names, in order, validated as a real provider's result is."""

from __future__ import annotations

import re

import pytest

from promptrun.extraction import Entity
from promptrun.providers.base import ErrorKind, ModelCall, ProviderError
from promptrun.providers.offline import LABEL, SENTIMENTS, VOCABULARY, OfflineProvider

PROMPT = "Which CRM\ttools would you\nrecommend\u00a0for a team of 12?"


def words(text: str) -> int:
    return max(1, len(re.findall(r"\S+", text)))


def test_the_same_call_gives_the_same_answer() -> None:
    provider = OfflineProvider()
    call = ModelCall("m1", seed="batch:1")
    first = provider.answer(call, PROMPT, "Be brief.")
    assert first == provider.answer(call, PROMPT, "Be brief.")
    assert first.text.startswith(f"{LABEL} (m1)")
    assert first.response_id is not None and first.response_id.startswith("offline-")


@pytest.mark.parametrize("system", [None, "", "Be\u2003brief, please."])
def test_tokens_count_the_words_of_prompt_system_and_answer(system: str | None) -> None:
    completion = OfflineProvider().answer(ModelCall("m1", seed="s"), PROMPT, system)
    assert completion.input_tokens == words(PROMPT) + words(system or "")
    assert completion.output_tokens == words(completion.text)


@pytest.mark.parametrize("seed", [f"batch:{i}" for i in range(8)])
def test_extraction_finds_the_named_entities_in_order(seed: str) -> None:
    provider = OfflineProvider()
    call = ModelCall("m2", seed=seed)
    answer = provider.answer(call, PROMPT, None).text
    result = provider.extract(call, answer)
    named = sorted((answer.find(n), n, kind) for n, kind in VOCABULARY if n in answer)
    assert 3 <= len(result.entities) <= 5
    assert [(e.name, e.type, e.rank) for e in result.entities] == [
        (n, kind, rank) for rank, (_, n, kind) in enumerate(named, 1)
    ]
    for entity in result.entities:
        assert isinstance(entity, Entity)
        line = next(x for x in answer.splitlines() if entity.name in x)
        assert entity.snippet == line.strip()
        assert entity.sentiment in SENTIMENTS and f"a {entity.sentiment} pick" in line
    assert result.input_tokens == words(answer)
    assert result.output_tokens == 3 * len(result.entities)


def test_an_answer_naming_nothing_extracts_nothing() -> None:
    result = OfflineProvider().extract(ModelCall("m1"), "Nothing to see here.")
    assert result.entities == [] and result.output_tokens == 0


def test_a_simulated_invalid_extraction_is_a_validation_error() -> None:
    call = ModelCall("m1", params={"simulate_error": "validation", "simulate_error_attempts": 1})
    with pytest.raises(ProviderError) as raised:
        OfflineProvider().extract(call, "Globex")
    assert raised.value.kind is ErrorKind.VALIDATION
    retried = ModelCall("m1", attempt=2, params=call.params)
    assert [e.name for e in OfflineProvider().extract(retried, "Globex").entities] == ["Globex"]
