"""What the Anthropic and OpenAI drivers share: HTTP client setup and error classification.

Both official SDKs are Stainless clients with the same shape (httpx2 underneath,
an optional aiohttp transport, the same exception tree), so one place decides
the connection pool and timeouts and one place turns any SDK failure into a
`ProviderError` the resilience layer understands. The API key is scrubbed from
every message we build, whatever the server echoed back.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from sys import modules
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx2

from yool.drivers.llm.provider import ProviderError

if TYPE_CHECKING:
    import anthropic
    import openai

T = TypeVar("T")

Transport = Literal["aiohttp", "httpx"]
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})

_VENDORS = ("anthropic", "openai")  # each takes seconds to import: only loaded ones are asked


def _errors(name: str) -> tuple[type[Exception], ...]:
    """The SDKs' exception class `name`, from the vendor SDKs that are imported."""
    return tuple(getattr(modules[v], name) for v in _VENDORS if v in modules)


def aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def default_transport() -> Transport:
    return "aiohttp" if aiohttp_available() else "httpx"


def timeouts(timeout: float, connect_timeout: float, pool_timeout: float | None) -> httpx2.Timeout:
    """`timeout` bounds each read; the pool wait is long because a burst of calls queues
    for a connection slot and should not fail for waiting its turn."""
    return httpx2.Timeout(timeout, connect=connect_timeout, pool=pool_timeout)


def http_client(
    sdk: Literal["anthropic", "openai"],
    transport: Transport,
    timeout: httpx2.Timeout,
    max_connections: int,
) -> httpx2.AsyncClient:
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if transport == "aiohttp" and not aiohttp_available():
        raise ProviderError("transport='aiohttp' needs the aiohttp package (pip install aiohttp)")
    if transport not in ("aiohttp", "httpx"):
        raise ProviderError(f"transport must be 'aiohttp' or 'httpx', not {transport!r}")
    module: Any = importlib.import_module(sdk)  # the caller's own SDK, already imported
    factory = (
        module.DefaultAioHttpClient if transport == "aiohttp" else module.DefaultAsyncHttpxClient
    )
    client: httpx2.AsyncClient = factory(timeout=timeout, limits=limits)
    return client


def dumps(body: dict[str, Any]) -> bytes:
    """The request body as JSON bytes: handing the SDK bytes skips its deep copy and
    transform of the body (milliseconds of CPU at fifty messages)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return text


def malformed(provider: str, detail: str, secret: str | None = None) -> ProviderError:
    return ProviderError(f"malformed reply from {provider}: {scrub(detail, secret)}"[:500])


def classify(exc: Exception, provider: str, secret: str | None, timeout: float) -> ProviderError:
    """Any failure of an SDK call as a ProviderError: retryable or not, and why."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _errors("APIStatusError")):
        status = exc.status_code  # type: ignore[attr-defined]
        kind, message = _error_detail(exc.body, exc.message)  # type: ignore[attr-defined]
        text = f"{provider}: HTTP {status}" + (f" {kind}" if kind else "") + f": {message}"
        retryable = status in RETRYABLE_STATUSES or status >= 500
        headers = exc.response.headers  # type: ignore[attr-defined]
        retry_after = parse_retry_after(headers) if retryable else None
        return ProviderError(
            scrub(text, secret)[:1000], retryable=retryable, retry_after=retry_after, status=status
        )
    refused = _refusal(exc)
    if isinstance(exc, _errors("APITimeoutError")) and refused is None:
        return ProviderError(f"{provider}: no reply within {timeout:g}s", retryable=True)
    if isinstance(exc, _errors("APIConnectionError")):
        cause = refused or exc.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        return ProviderError(
            scrub(f"{provider}: connection failed ({why})", secret), retryable=True
        )
    validation = _errors("APIResponseValidationError")
    if isinstance(exc, (*validation, ValueError, KeyError, TypeError, AttributeError)):
        return malformed(provider, f"{type(exc).__name__}: {exc}", secret)
    return ProviderError(scrub(f"{provider}: unexpected {type(exc).__name__}: {exc}", secret))


async def post(
    client: anthropic.AsyncAnthropic | openai.AsyncOpenAI,
    path: str,
    body: dict[str, Any],
    parse: Callable[[Any], T],
    *,
    provider: str,
    secret: str | None,
    timeout_s: float,
) -> T:
    """POST `body` through the SDK client and parse the reply.

    Every failure, the provider's own or a malformed reply, comes out as a
    `ProviderError` with the key scrubbed and no SDK exception chained to it
    (the chain could carry an echoed key).
    """
    try:
        return parse(await client.post(path, cast_to=object, content=dumps(body)))
    except ProviderError as exc:
        raise ProviderError(
            scrub(str(exc), secret),
            retryable=exc.retryable,
            retry_after=exc.retry_after,
            status=exc.status,
        ) from None
    except Exception as exc:
        raise classify(exc, provider, secret, timeout_s) from None


def _refusal(exc: BaseException) -> BaseException | None:
    """The connection failure under `exc`, if any. openai's vendored aiohttp transport
    reports a refused connection as a ConnectTimeout, so look beneath the label."""
    seen = 0
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionError) or (
            isinstance(cause, OSError) and not isinstance(cause, TimeoutError)
        ):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _error_detail(body: object, fallback: str) -> tuple[str, str]:
    """(error type, message) from either vendor's error body."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            kind = err.get("type") or err.get("code") or ""
            message = err.get("message")
            if message:
                return str(kind), str(message)
        elif isinstance(err, str):
            return "", err
    if isinstance(body, str) and body:
        return "", body[:300]
    if body is not None and not isinstance(body, Mapping):
        return "", json.dumps(body, default=str)[:300]
    return "", fallback
