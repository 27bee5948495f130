"""`offline`: a deterministic, clearly labelled synthetic model for the demo and the tests.

No network. The same prompt, model and run give the same answer, which mentions
entities from a fixed list of made-up names. Catalogue params can simulate faults:
  simulate_error: rate_limit | server | timeout | bad_request | auth | refusal | validation
  simulate_error_attempts: how many first attempts fail (default: every attempt)
  retry_after: seconds, with simulated rate limits
  latency_ms: sleep per call, to stand for a model's wait
"""

from __future__ import annotations

import hashlib
import time

from promptrun.extraction import ExtractionResult
from promptrun.providers.base import Completion, ErrorKind, Extraction, ModelCall, ProviderError

LABEL = "[offline synthetic answer]"

VOCABULARY: list[tuple[str, str]] = [
    ("Acme CRM", "product"),
    ("Northwind Suite", "product"),
    ("Globex", "brand"),
    ("Initech", "brand"),
    ("Umbrella Analytics", "product"),
    ("Hooli", "brand"),
    ("Stark Ledger", "product"),
    ("Wayne Desk", "product"),
    ("Pied Piper", "brand"),
    ("Soylent Cloud", "product"),
    ("Ada Lovelace", "person"),
    ("Grace Hopper", "person"),
]
SENTIMENTS = ("positive", "neutral", "negative")


def waits(params: dict[str, object]) -> bool:
    """Whether a call with these params can block (a simulated latency, or an error whose
    handling may sleep): the others are pure computation, not worth a thread of their own."""
    return bool(params.get("latency_ms")) or bool(params.get("simulate_error"))


def _words(text: str) -> int:
    return max(1, len(text.split()))  # the runs of non-space characters


class OfflineProvider:
    name = "offline"

    def _maybe_fail(self, call: ModelCall) -> None:
        kind = call.params.get("simulate_error")
        if not kind:
            return
        failing = int(call.params.get("simulate_error_attempts", 10**6))
        if call.attempt > failing:
            return
        try:
            error_kind = ErrorKind(kind)
        except ValueError:
            raise ProviderError(
                ErrorKind.BAD_REQUEST, f"offline: unknown simulate_error {kind!r}"
            ) from None
        retry_after = call.params.get("retry_after")
        raise ProviderError(
            error_kind,
            f"offline: simulated {error_kind} on attempt {call.attempt}",
            retry_after=float(retry_after) if retry_after is not None else None,
        )

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        self._maybe_fail(call)
        latency = float(call.params.get("latency_ms", 0)) / 1000
        if latency:
            time.sleep(min(latency, call.timeout_seconds))
        digest = hashlib.sha256(
            f"{call.provider_model}\x00{prompt}\x00{call.seed}".encode()
        ).digest()
        count = 3 + digest[0] % 3
        picked: list[tuple[str, str]] = []
        for i in range(len(VOCABULARY)):
            name = VOCABULARY[(digest[1] + i * (1 + digest[2] % 5)) % len(VOCABULARY)]
            if name not in picked:
                picked.append(name)
            if len(picked) == count:
                break
        lines = [f'{LABEL} ({call.provider_model}) On "{prompt[:80]}":']
        for i, (entity_name, _) in enumerate(picked, 1):
            mood = SENTIMENTS[digest[3 + i] % 3]
            lines.append(f"{i}. **{entity_name}**: a {mood} pick.")
        text = "\n".join(lines)
        return Completion(
            text=text,
            input_tokens=_words(prompt) + _words(system or ""),
            output_tokens=_words(text),
            response_id="offline-" + digest.hex()[:16],
            finish_reason="stop",
        )

    def extract(self, call: ModelCall, answer: str) -> Extraction:
        if call.params.get("simulate_error") == "validation" and call.attempt <= int(
            call.params.get("simulate_error_attempts", 10**6)
        ):
            raise ProviderError(
                ErrorKind.VALIDATION, "offline: simulated invalid structured output"
            )
        found: list[tuple[int, str, str]] = []
        for name, kind in VOCABULARY:
            pos = answer.find(name)
            if pos >= 0:
                found.append((pos, name, kind))
        found.sort()
        lines = answer.splitlines()
        raw: list[dict[str, object]] = []
        for rank, (_pos, name, kind) in enumerate(found, 1):
            line = next(x for x in lines if name in x)
            mood = next((s for s in SENTIMENTS if f"a {s} pick" in line), None)
            raw.append(
                {
                    "name": name,
                    "type": kind,
                    "rank": rank,
                    "sentiment": mood,
                    "snippet": line.strip()[:200],
                }
            )
        # Validated as a real provider's result is: the whole list in one pass.
        entities = ExtractionResult.model_validate({"entities": raw}).entities
        return Extraction(
            entities=entities, input_tokens=_words(answer), output_tokens=3 * len(entities)
        )
