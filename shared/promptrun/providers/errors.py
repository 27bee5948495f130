"""Every SDK's exceptions as a classified ProviderError, with secrets kept out of messages.

- HTTP status: 429 rate limit (Retry-After honoured), 408 and timeouts, connection errors,
  5xx and Anthropic's 529 overloaded are retryable; other 4xx are permanent.
- The wait a provider asks for comes from `retry-after-ms`, `Retry-After` (seconds or an
  HTTP date), then Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339 times) or OpenAI's
  `x-ratelimit-reset-*` (durations like `6m0s`).
- Messages are short and never carry a key: anything shaped like one (`sk-...`, bearer
  tokens, AWS access key ids) and every key `keys.api_key_for` handed out are removed.

The SDKs are imported inside the functions that need them: each is optional.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from promptrun.providers.base import ErrorKind, ProviderError

MESSAGE_LIMIT = 300
REDACTED = "[redacted]"

_SECRET_PATTERNS = [
    re.compile(
        r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*.]{3,}"
    ),  # OpenAI / Anthropic / OpenRouter style keys
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"(?i)\b(api[_-]?key|x-api-key|authorization)(\s*[=:]\s*)[\"']?[^\s\"',;}]+"),
]
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Words in a 4xx message that mean the input did not fit the model's context.
_CONTEXT = re.compile(
    r"context[ _-]?length|context window|maximum context|too long|too many (input )?tokens"
    r"|exceeds? the (model'?s? )?(maximum|limit)|input is too large",
    re.IGNORECASE,
)

_MAX_WAIT = 24 * 3600.0


class ExtractionFailed(ProviderError):
    """A permanent extraction failure (invalid output after the repair, or a refusal) after
    billed model calls: the tokens those calls used travel with the error."""

    def __init__(
        self, kind: ErrorKind, message: str, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        super().__init__(kind, message, input_tokens=input_tokens, output_tokens=output_tokens)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` strips it from every later message."""
    if value and len(value) >= 8:
        with _secrets_lock:
            _known_secrets.add(value)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every registered secret, every one in `secrets` and anything shaped like a
    key replaced by [redacted]; nothing else changed (log lines keep their tracebacks)."""
    with _secrets_lock:
        known = set(_known_secrets)
    known.update(s for s in secrets if s and len(s) >= 4)
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def redact(text: str, secrets: Iterable[str | None] = (), limit: int = MESSAGE_LIMIT) -> str:
    """`text` without secrets, on one line, at most `limit` characters."""
    text = " ".join(scrub(text, secrets).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


# --- retry-after ---------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str) -> float | None:
    """OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`; a bare number is seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass  # not a bare number: read it as a duration below
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _seconds_until(value: str, now: float) -> float | None:
    """Seconds until an RFC 3339 timestamp (Anthropic's reset headers)."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - now


def _clean(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), _MAX_WAIT)


def retry_after_from_headers(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """The wait in seconds a response asks for, or None when it names none."""
    if not headers:
        return None
    now = time.time() if now is None else now
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return _clean(float(h["retry-after-ms"]) / 1000)
        except ValueError:
            pass  # malformed: fall back to the headers below
    if "retry-after" in h:
        raw = h["retry-after"].strip()
        try:
            return _clean(float(raw))
        except ValueError:
            import email.utils  # the date form is rare: not in every cold start

            parsed = email.utils.parsedate_tz(raw)
            if parsed is not None:
                return _clean(email.utils.mktime_tz(parsed) - now)
    # Anthropic: anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset.
    # OpenAI: x-ratelimit-reset-{requests,tokens}. Prefer the buckets that are exhausted.
    exhausted: list[float] = []
    others: list[float] = []
    for name, value in h.items():
        wait: float | None = None
        remaining: str | None = None
        if name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            bucket = name[len("anthropic-ratelimit-") : -len("-reset")]
            wait = _seconds_until(value, now)
            remaining = h.get(f"anthropic-ratelimit-{bucket}-remaining")
        elif name.startswith("x-ratelimit-reset-"):
            bucket = name[len("x-ratelimit-reset-") :]
            wait = parse_duration(value)
            remaining = h.get(f"x-ratelimit-remaining-{bucket}")
        if wait is None:
            continue
        (exhausted if remaining is not None and remaining.strip() == "0" else others).append(wait)
    if exhausted:
        return _clean(max(exhausted))
    if others:
        return _clean(min(others))
    return None


def quota_wait(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds until an exhausted quota refills, from a successful answer's rate-limit headers
    (a bucket whose `remaining` is 0: OpenAI `x-ratelimit-*`, Anthropic
    `anthropic-ratelimit-*`); None while every bucket has room, or without such headers."""
    if not headers:
        return None
    now = time.time() if now is None else now
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    waits: list[float] = []
    for name, value in h.items():
        if name.startswith("x-ratelimit-remaining-") and value.strip() == "0":
            wait = parse_duration(h.get("x-ratelimit-reset-" + name[22:], ""))
        elif (
            name.startswith("anthropic-ratelimit-")
            and name.endswith("-remaining")
            and value.strip() == "0"
        ):
            bucket = name[len("anthropic-ratelimit-") : -len("-remaining")]
            wait = _seconds_until(h.get(f"anthropic-ratelimit-{bucket}-reset", ""), now)
        else:
            continue
        if wait is not None:
            waits.append(wait)
    return _clean(max(waits)) if waits else None


# --- classification by HTTP status -----------------------------------------------------------


def classify_status(
    provider: str,
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    *,
    code: str | None = None,
    error_type: str | None = None,
    secrets: Iterable[str | None] = (),
) -> ProviderError:
    """A ProviderError for an HTTP error answer from a model API."""
    text = f"{code or ''} {error_type or ''} {detail}"
    retry_after: float | None = None
    if status == 429 and (code == "insufficient_quota" or error_type == "insufficient_quota"):
        # Billing, not a rate: waiting does not help.
        kind = ErrorKind.AUTH
    elif status == 429 or error_type == "rate_limit_error":
        kind = ErrorKind.RATE_LIMIT
    elif status == 529 or error_type == "overloaded_error":
        kind = ErrorKind.OVERLOADED
    elif status == 408:
        kind = ErrorKind.TIMEOUT
    elif status >= 500:
        kind = ErrorKind.SERVER
    elif status in (401, 402, 403):
        kind = ErrorKind.AUTH
    elif status == 404:
        kind = ErrorKind.NOT_FOUND
    elif status == 413 or code == "context_length_exceeded" or _CONTEXT.search(text):
        kind = ErrorKind.CONTEXT_LENGTH
    else:  # 400, 409, 422 and every other 4xx
        kind = ErrorKind.BAD_REQUEST
    if kind in (ErrorKind.RATE_LIMIT, ErrorKind.OVERLOADED, ErrorKind.SERVER, ErrorKind.TIMEOUT):
        retry_after = retry_after_from_headers(headers)
    message = f"{provider}: HTTP {status}"
    if code:
        message += f" {code}"
    if detail:
        message += f": {detail}"
    return ProviderError(kind, redact(message, secrets), retry_after=retry_after)


def _body_error(body: object) -> tuple[str | None, str | None, str | None]:
    """(message, type, code) from an `{"error": {...}}` body, as both APIs send them."""
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error", body)
    if isinstance(err, str):
        return err, None, None
    if not isinstance(err, dict):
        return None, None, None
    message = err.get("message")
    etype = err.get("type")
    code = err.get("code")
    return (
        str(message) if message is not None else None,
        str(etype) if etype is not None else None,
        str(code) if code is not None else None,
    )


def _headers_of(exc: Any) -> Mapping[str, str] | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if headers is not None else None


# --- OpenAI and Anthropic ----------------------------------------------------------------------------


def _from_sdk_error(
    sdk: Any,
    name: str,
    base: type[BaseException],
    exc: BaseException,
    secrets: Iterable[str | None],
    known: Sequence[tuple[type[BaseException], ErrorKind, str]] = (),
) -> ProviderError:
    """The `openai` and `anthropic` SDKs share one exception tree (both are generated by
    Stainless): map it once. `known` lists an SDK's own extra classes."""
    secrets = tuple(secrets)
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError(ErrorKind.TIMEOUT, f"{name}: request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return ProviderError(
            ErrorKind.CONNECTION, redact(f"{name}: could not connect ({cause})", secrets)
        )
    if isinstance(exc, sdk.APIStatusError):
        message, etype, code = _body_error(exc.body)
        return classify_status(
            name,
            exc.status_code,
            message or getattr(exc, "api_message", None) or exc.message,
            _headers_of(exc),
            code=code or getattr(exc, "code", None) or getattr(exc, "error_code", None),
            error_type=etype or getattr(exc, "type", None),
            secrets=secrets,
        )
    if isinstance(exc, sdk.APIResponseValidationError):
        return ProviderError(
            ErrorKind.SERVER, f"{name}: the API's response did not match its schema"
        )
    for cls, kind, text in known:
        if isinstance(exc, cls):
            return ProviderError(kind, f"{name}: {text}")
    if isinstance(exc, base):
        return ProviderError(ErrorKind.CONFIG, redact(f"{name}: {exc}", secrets))
    if isinstance(exc, ValueError):  # the SDK's own argument checks
        return ProviderError(ErrorKind.BAD_REQUEST, redact(f"{name}: {exc}", secrets))
    return ProviderError(
        ErrorKind.INTERNAL, redact(f"{name}: {type(exc).__name__}: {exc}", secrets)
    )


def from_openai_error(exc: BaseException, secrets: Iterable[str | None] = ()) -> ProviderError:
    """Any exception raised by the `openai` SDK as a ProviderError."""
    import openai

    return _from_sdk_error(
        openai,
        "openai",
        openai.OpenAIError,
        exc,
        secrets,
        known=(
            (
                openai.ContentFilterFinishReasonError,
                ErrorKind.REFUSAL,
                "stopped by the content filter",
            ),
            (
                openai.LengthFinishReasonError,
                ErrorKind.VALIDATION,
                "output cut off at the token limit",
            ),
        ),
    )


def from_anthropic_error(exc: BaseException, secrets: Iterable[str | None] = ()) -> ProviderError:
    """Any exception raised by the `anthropic` SDK as a ProviderError."""
    import anthropic

    return _from_sdk_error(anthropic, "anthropic", anthropic.AnthropicError, exc, secrets)


# --- botocore (Bedrock) ---------------------------------------------------------------------

_BEDROCK_CODES = {
    "ThrottlingException": ErrorKind.RATE_LIMIT,
    "TooManyRequestsException": ErrorKind.RATE_LIMIT,
    "ServiceQuotaExceededException": ErrorKind.RATE_LIMIT,
    "ServiceUnavailableException": ErrorKind.SERVER,
    "InternalServerException": ErrorKind.SERVER,
    "InternalFailure": ErrorKind.SERVER,
    "ModelNotReadyException": ErrorKind.SERVER,
    "ModelErrorException": ErrorKind.SERVER,
    "ModelStreamErrorException": ErrorKind.SERVER,
    "ModelTimeoutException": ErrorKind.TIMEOUT,
    "RequestTimeout": ErrorKind.TIMEOUT,
    "RequestTimeoutException": ErrorKind.TIMEOUT,
    "AccessDeniedException": ErrorKind.AUTH,
    "UnrecognizedClientException": ErrorKind.AUTH,
    "InvalidSignatureException": ErrorKind.AUTH,
    "ExpiredTokenException": ErrorKind.AUTH,
    "IncompleteSignature": ErrorKind.AUTH,
    "ResourceNotFoundException": ErrorKind.NOT_FOUND,
    "ValidationException": ErrorKind.BAD_REQUEST,
}


def from_botocore_error(
    exc: BaseException, service: str = "bedrock", secrets: Iterable[str | None] = ()
) -> ProviderError:
    """Any exception raised by a botocore client call as a ProviderError."""
    from botocore import exceptions as bx

    secrets = tuple(secrets)
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        detail = str(error.get("Message", ""))
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        headers = meta.get("HTTPHeaders") or {}
        kind = _BEDROCK_CODES.get(code)
        if kind is None:
            kind = (
                ErrorKind.RATE_LIMIT
                if status == 429
                else ErrorKind.SERVER
                if status >= 500
                else ErrorKind.BAD_REQUEST
            )
        if kind is ErrorKind.BAD_REQUEST and _CONTEXT.search(detail):
            kind = ErrorKind.CONTEXT_LENGTH
        retryable = {ErrorKind.RATE_LIMIT, ErrorKind.SERVER, ErrorKind.TIMEOUT}
        retry_after = retry_after_from_headers(headers) if kind in retryable else None
        message = f"{service}: {code}" + (f": {detail}" if detail else "")
        return ProviderError(kind, redact(message, secrets), retry_after=retry_after)
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectTimeoutError):
        return ProviderError(
            ErrorKind.TIMEOUT, f"{service}: request timed out ({type(exc).__name__})"
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return ProviderError(
            ErrorKind.CONNECTION, f"{service}: could not connect ({type(exc).__name__})"
        )
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ProviderError(ErrorKind.AUTH, f"{service}: no AWS credentials found")
    if isinstance(exc, bx.NoRegionError):
        return ProviderError(
            ErrorKind.CONFIG, f"{service}: no AWS region (set AWS_REGION or params.region)"
        )
    if isinstance(exc, bx.ParamValidationError):
        return ProviderError(ErrorKind.BAD_REQUEST, redact(f"{service}: {exc}", secrets))
    return ProviderError(
        ErrorKind.INTERNAL, redact(f"{service}: {type(exc).__name__}: {exc}", secrets)
    )
