"""The catalogue checked whole before anything runs: params per provider, duplicate keys,
limits on prompt length and on jobs per batch; every problem named on its own line."""

from __future__ import annotations

import pytest

from promptrun.catalog import MAX_JOBS_PER_BATCH, MAX_PROMPT_CHARS, load_catalog
from promptrun.catalog_params import param_problems
from promptrun.errors import InputError


def problems(yaml_text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_catalog(yaml_text, "c.yaml")
    first, *rest = str(caught.value).splitlines()
    assert first.startswith("c.yaml: ")
    return [line.strip() for line in rest]


@pytest.mark.parametrize(
    ("provider", "params", "expected"),
    [
        ("openai", {"temperature": 0.7, "max_tokens": 800, "extra_body": {"anything": 1}}, []),
        ("openai", {"temperature": "hot"}, ["temperature: must be a number, got 'hot'"]),
        ("openai", {"temperature": 2.5}, ["temperature: must be <= 2, got 2.5"]),
        ("openai", {"max_tokens": 1.5}, ["max_tokens: must be an integer, got 1.5"]),
        ("openai", {"max_tokens": True}, ["max_tokens: must be an integer, got True"]),
        ("openai", {"stop": [1]}, ["stop: must be a string or a list of strings, got [1]"]),
        ("openai", {"reasoning_effort": "max"}, ["reasoning_effort: must be one of minimal, low, medium, high, got 'max'"]),
        ("openai", {"extra_body": "x"}, ["extra_body: must be a mapping, got 'x'"]),
        ("anthropic", {"temperature": 1.5}, ["temperature: must be <= 1, got 1.5"]),
        ("anthropic", {"seed": 3}, ["seed: unknown param for provider anthropic; put provider-specific keys under extra_body"]),
        ("bedrock", {"extra_body": {}}, ["extra_body: unknown param for provider bedrock; put provider-specific keys under additional_model_request_fields"]),
        ("bedrock", {"region": "us-east-1", "additional_model_request_fields": {"k": 1}}, []),
        ("offline", {"simulate_error": "kaboom"}, ["simulate_error: must be one of"]),
        ("offline", {"timeout": -5}, ["timeout: must be >= 0.1, got -5"]),
        ("offline", {"temperature": None}, []),
    ],
)  # fmt: skip
def test_params_per_provider(provider: str, params: dict[str, object], expected: list[str]) -> None:
    found = [f"{p.key}: {p.message}" for p in param_problems(provider, params)]
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got.startswith(want), got


def test_every_problem_on_its_own_line_naming_entry_and_field() -> None:
    lines = problems(
        """
models:
  - {slug: a, provider: openai, model: x, params: {temperature: hot, top_p: 3}}
  - {slug: b, provider: offline, model: y, max_concurrency: 0}
prompts:
  - {slug: p, text: hi, schedule: daily, models: [nope]}
"""
    )
    # The params problems are named beside the schema's, not after it is fixed.
    assert lines == [
        "models[1] (b).max_concurrency: Input should be greater than or equal to 1",
        "models[0] (a).params.temperature: must be a number, got 'hot'",
        "models[0] (a).params.top_p: must be <= 1, got 3",
    ]


def test_cross_checks_list_every_problem() -> None:
    lines = problems(
        """
models:
  - {slug: a, provider: openai, model: x, params: {temperature: hot, top_p: 3}}
prompts:
  - {slug: p, text: hi, schedule: daily, models: [nope]}
"""
    )
    assert lines == [
        "models[0] (a).params.temperature: must be a number, got 'hot'",
        "models[0] (a).params.top_p: must be <= 1, got 3",
        "prompts[0] (p).models: unknown model slug 'nope'",
    ]


def test_duplicate_keys_are_refused_with_their_line() -> None:
    with pytest.raises(InputError, match=r"duplicate key 'slug' \(line 4"):
        load_catalog(
            "models: []\nprompts:\n  - slug: a\n    slug: b\n    text: t\n    schedule: daily\n"
        )
    with pytest.raises(InputError, match="duplicate key 'models'"):
        load_catalog("models: []\nmodels: []\n")


def test_limits_on_prompt_length_and_jobs_per_batch() -> None:
    long_text = "x" * (MAX_PROMPT_CHARS - 10)
    lines = problems(
        f"""
models: [{{slug: a, provider: offline, model: x}}]
prompts:
  - {{slug: p, text: "{long_text}", system: "{"y" * 20}", schedule: daily}}
"""
    )
    assert lines == [
        f"prompts[0] (p).text: {MAX_PROMPT_CHARS + 10} characters with the system text; at most {MAX_PROMPT_CHARS}"
    ]

    models = "\n".join(f"  - {{slug: m{i}, provider: offline, model: x}}" for i in range(11))
    prompts = "\n".join(
        f"  - {{slug: p{i}, text: t, schedule: hourly, runs: 100}}" for i in range(91)
    )
    lines = problems(f"models:\n{models}\nprompts:\n{prompts}\n")
    assert lines == [
        f"prompts: the hourly batch would have {11 * 100 * 91} jobs; at most {MAX_JOBS_PER_BATCH} (fewer runs, models or prompts)"
    ]
    # Disabled prompts add nothing.
    load_catalog(
        f"models:\n{models}\nprompts:\n{prompts.replace('runs: 100}', 'runs: 100, enabled: false}')}\n"
    )
