"""An embedding server with OpenAI's API: ``vocabert serve --model DIR``.

``POST /v1/embeddings`` takes and answers what OpenAI's embeddings endpoint does, so OpenAI clients
work with ``base_url="http://HOST:PORT/v1"``; ``GET /v1/models`` lists the one model served and
``GET /health`` says it is up. FastAPI, uvicorn and orjson come with the ``serve`` extra
(``pip install 'vocabert[serve]'``); they are imported only when a server is built, so importing this
module needs none of them.

Choices where OpenAI's API leaves room:

- ``model`` is optional and any value is accepted (a client written for another model works
  unchanged); the answer names the model actually served. With ``strict_model`` another name is a
  404 ``model_not_found``, as OpenAI answers.
- ``dimensions`` is accepted only when it equals the model's dimension (vectors are not truncated).
- ``usage.prompt_tokens`` counts the teacher's WordPiece tokens the model read from the texts: after
  truncation at the model's maximum length, ``[CLS]`` and ``[SEP]`` not counted (an empty text is 0).
- Texts only: token-id inputs (lists of integers) are refused with a message saying so.
- Every bad request is a 4xx with OpenAI's error body
  ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``.

Encoding runs in worker threads (at most ``threads`` at once), never on the event loop, and the JSON
answer is written there too (orjson: float32 vectors as their shortest exact decimals).

What a client may hold of the server is bounded (:class:`ServerLimits`, enforced by
``GuardedHttpProtocol``, uvicorn's httptools protocol with the limits uvicorn lacks): time to send a
request's headers and its body, idle time between requests, open connections, and how long a
shutdown waits. A request's body is at most what ``max_batch`` texts of ``max_chars`` characters
can take (413 beyond), it must be sent as ``application/json`` (415 otherwise, so a browser's
cross-site form cannot post one), and clients that time out or vanish mid-request are counted and
logged in one line a minute at most, not one traceback each.
"""

import asyncio
import functools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from functools import partial
from http import HTTPStatus
from pathlib import Path

from vocabert.artifacts import VocabertError
from vocabert.options import option

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 2048
DEFAULT_MAX_CHARS = 10_000
DEFAULT_BATCH_SIZE = 64
ENCODING_FORMATS = ("float", "base64")
API_KEY_ENV = "VOCABERT_API_KEY"
# Settings handed to each worker process when there are several (see ``create_app_from_environment``).
SETTINGS_ENV = "VOCABERT_SERVE_SETTINGS"
SERVE_MODULES = ("fastapi", "uvicorn", "httptools", "orjson")
# Bytes of JSON a character of a text can take at most (one outside the BMP, escaped: \ud83d\ude00): the
# body limit lets through any request within max_batch and max_chars, with a MiB for the rest.
JSON_BYTES_PER_CHAR = 12
BODY_OVERHEAD_BYTES = 1 << 20
log = logging.getLogger("vocabert.serve")
# Set in a request's ASGI scope when the server closed its connection (a timeout, a shutdown).
CLOSED_BY_SERVER = "vocabert.closed_by_server"


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of the server (per process), each a ``vocabert serve`` option. Times are in
    seconds."""

    header_timeout: float = option(  # a new connection's first request, or any after its first byte
        10.0,
        "seconds a client has to send a request's headers, from its connection or the request's first byte (408 "
        "and closed after)",
        metavar="SECONDS",
    )
    body_timeout: float = option(  # a total, not an idle time
        60.0,
        "seconds a client has to send a request's body once its headers are in (408 and closed after)",
        metavar="SECONDS",
    )
    keep_alive_timeout: float = option(
        5.0, "seconds an idle connection is kept open between requests", metavar="SECONDS"
    )
    max_connections: int = option(
        256, "open connections per server process; more are answered 503 and closed", metavar="N"
    )
    max_header_bytes: int = option(64 << 10, "bytes of a request's line and headers (431 beyond)", metavar="N")
    shutdown_timeout: float = option(
        5.0,
        "seconds requests being encoded get to finish after SIGTERM; connections still sending a request are "
        "closed at once",
        metavar="SECONDS",
    )

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise VocabertError(f"{f.name.replace('_', '-')} must be positive, got {getattr(self, f.name)}")


def check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise VocabertError(f"--port must be between 0 and 65535, got {port}")
    return port


def check_api_key(key: str | None) -> str | None:
    """``key`` if clients can send it: printable ASCII (no spaces at either end), as HTTP headers carry.

    A key with other characters could never match what OpenAI's clients send (they refuse to send
    non-ASCII headers, others encode them differently), so it is refused at start, without showing it.
    """
    if key is None:
        return None
    if not key or not key.isascii() or not key.isprintable() or key != key.strip():
        raise VocabertError(
            f"the API key (${API_KEY_ENV}) must be printable ASCII characters, without spaces at either end: "
            "HTTP clients send no others in a header"
        )
    return key


class ClientEvents:
    """Clients that time out, vanish mid-request or find the server full: counted, and logged as one
    line, the first at once, then the counts since with the first event ``interval`` seconds later
    (not a traceback each)."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.next_report = 0.0

    def note(self, event: str) -> None:
        self.counts[event] += 1
        now = time.monotonic()
        if now >= self.next_report:
            summary = ", ".join(f"{n} {what}" for what, n in self.counts.most_common())
            log.warning("clients: %s (logged at most every %.0f s)", summary, self.interval)
            self.counts.clear()
            self.next_report = now + self.interval


client_events = ClientEvents()


def require_serve_dependencies() -> None:
    """Raise a one-line :class:`VocabertError` naming the install command when the serve extra is missing."""
    import importlib.util

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise VocabertError(
            f"vocabert serve needs {', '.join(SERVE_MODULES)} (missing: {', '.join(missing)}): "
            "pip install 'vocabert[serve]'"
        )


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ApiError(Exception):
    """A request the server refuses: answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _error_bytes(status: int, message: str) -> bytes:
    return json.dumps(ApiError(status, message).body()).encode()


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def parse_request(
    body: bytes, max_batch: int, max_chars: int, dim: int, name: str, strict_model: bool = False
) -> tuple[list[str], str]:
    """The texts and the encoding format of an embeddings request; :class:`ApiError` for a bad one."""
    import orjson

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # the standard library also reads what orjson refuses on purpose (lone surrogates)
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:  # nested deeper than orjson's 1,024 levels
            raise ApiError(400, "the request body is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise ApiError(400, f"the request body must be a JSON object, not a {_type_name(request)}")

    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, not a {_type_name(model)}", "model")
    if strict_model and model is not None and model != name:
        raise ApiError(
            404, f"the model {model!r} does not exist; this server serves {name!r}", "model", "model_not_found"
        )

    fmt = request.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODING_FORMATS:
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', not {fmt!r}", "encoding_format")

    dimensions = request.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool):
            raise ApiError(400, f"'dimensions' must be an integer, not a {_type_name(dimensions)}", "dimensions")
        if dimensions != dim:
            message = f"this model's embeddings have {dim} dimensions; 'dimensions' {dimensions} is not supported"
            raise ApiError(400, message, "dimensions")

    texts = request.get("input")
    if texts is None:
        raise ApiError(400, "'input' is required: a string or a list of strings", "input")
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, list):
        raise ApiError(400, f"'input' must be a string or a list of strings, not a {_type_name(texts)}", "input")
    if not texts:
        raise ApiError(400, "'input' must not be an empty list", "input")
    if len(texts) > max_batch:
        raise ApiError(
            400, f"'input' has {len(texts)} texts; this server takes at most {max_batch} per request", "input"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            if _is_token_ids(text) or _is_token_ids(texts):
                raise ApiError(400, "token-id inputs (lists of integers) are not supported: send the texts", "input")
            raise ApiError(
                400, f"'input' must be a string or a list of strings; input[{i}] is a {_type_name(text)}", "input"
            )
        if len(text) > max_chars:
            raise ApiError(
                400, f"input[{i}] has {len(text)} characters; this server takes at most {max_chars} per text", "input"
            )
    return texts, fmt


def _is_token_ids(value) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def create_app(
    model,
    name: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_chars: int = DEFAULT_MAX_CHARS,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strict_model: bool = False,
    api_key: str | None = None,
):
    """The FastAPI app serving ``model`` (a :class:`vocabert.StudentModel`) under ``name``.

    ``name`` defaults to the folder the model was loaded from. At most ``threads`` requests
    (default: one per CPU) encode at once; the others wait their turn without blocking the event loop.
    ``api_key``: when set, requests must send ``Authorization: Bearer <api_key>``, and the
    interactive docs (``/docs``, ``/redoc``, ``/openapi.json``) are off (a browser cannot send the key).
    """
    import base64
    import hmac

    import anyio
    import orjson
    from fastapi import FastAPI, Request, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    if max_batch < 1 or max_chars < 1 or batch_size < 1:
        raise VocabertError("max_batch, max_chars and batch_size must be at least 1")
    api_key = check_api_key(api_key)
    key_header = b"Bearer " + api_key.encode("ascii") if api_key is not None else None
    max_body_bytes = BODY_OVERHEAD_BYTES + max_batch * max_chars * JSON_BYTES_PER_CHAR
    threads = cpu_count() if threads is None else threads
    if threads < 1:
        raise VocabertError("threads must be at least 1")
    name = name or (str(model.path) if getattr(model, "path", None) is not None else "vocabert")
    dim = int(model.dim)
    # Tokens the tokenizer adds to every text ([CLS] and [SEP] for BERT): not counted in usage.
    specials = int(model.tokenize([""])[1][-1])
    started = int(time.time())
    limiter: list = []  # the CapacityLimiter, made in the event loop on first use

    docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="vocabert", version=_version(), summary="OpenAI-compatible embeddings from a vocabert model", **docs
    )

    def json_response(status: int, body: dict, headers: dict | None = None) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        # Too large: close rather than read the rest of the body to get to the next request; shutting down: close.
        close = exc.status in (413, 503)
        return json_response(exc.status, exc.body(), {"connection": "close"} if close else None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:  # unknown path, wrong method
        return json_response(
            exc.status_code, ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}").body()
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:  # uvicorn logs it; the client gets JSON
        return json_response(500, ApiError(500, f"internal error: {type(exc).__name__}").body())

    def check_key(request: Request) -> None:
        if key_header is None:
            return
        sent = next((value for header, value in request.scope["headers"] if header == b"authorization"), b"")
        if not hmac.compare_digest(sent, key_header):  # bytes as sent: no decoding to get wrong
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")

    async def read_json_body(request: Request) -> bytes | None:
        """The body of a JSON request, at most ``max_body_bytes``; None if the client left before sending it all."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            shown = repr(media_type) if media_type else "none"
            raise ApiError(415, f"send the request as JSON, with 'Content-Type: application/json' (got {shown})")
        too_big = ApiError(413, f"the request body is larger than this server takes ({max_body_bytes:,} bytes)")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body_bytes:
            raise too_big
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:  # sent without a length, or with a wrong one
                    raise too_big
                chunks.append(chunk)
        except ClientDisconnect:
            if not request.scope.get(CLOSED_BY_SERVER):  # else counted where it was closed
                client_events.note("left before sending their whole request")
            return None
        return b"".join(chunks)

    def answer(texts: list[str], fmt: str) -> bytes:
        """Encode and write the JSON answer (in a worker thread)."""
        vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        # Counted batch by batch, as encode tokenizes: the Rust tokenizer takes ~190 bytes a token, what
        # truncation cuts off included, so 2048 texts of 10,000 tokens at once would take 4 GB.
        tokens = sum(int(model.tokenize(texts[i : i + batch_size])[1][-1]) for i in range(0, len(texts), batch_size))
        tokens -= specials * len(texts)
        if fmt == "base64":  # little-endian float32 bytes, as OpenAI sends them
            little = vectors.astype("<f4", copy=False)
            rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
        else:
            rows = list(vectors)
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return orjson.dumps(
            {"object": "list", "data": data, "model": name, "usage": usage}, option=orjson.OPT_SERIALIZE_NUMPY
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        check_key(request)
        body = await read_json_body(request)
        if body is None:
            return Response(status_code=400)  # nobody is left to read it
        texts, fmt = parse_request(body, max_batch, max_chars, dim, name, strict_model)
        if not limiter:
            limiter.append(anyio.CapacityLimiter(threads))
        try:
            content = await anyio.to_thread.run_sync(partial(answer, texts, fmt), limiter=limiter[0])
        except asyncio.CancelledError:  # a shutdown past its --shutdown-timeout: the process is about to end
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None
        except Exception as e:  # answered here: an exception that leaves the app makes uvicorn drop the connection
            log.exception("encoding a request failed")
            raise ApiError(500, f"internal error: {type(e).__name__}: {e}") from None
        return Response(content, media_type="application/json")

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "vocabert"}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        check_key(request)
        return json_response(200, {"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str, request: Request) -> Response:
        check_key(request)
        if model_id != name:
            message = f"the model {model_id!r} does not exist; this server serves {name!r}"
            raise ApiError(404, message, "model", "model_not_found")
        return json_response(200, model_card())

    @app.get("/health")
    async def health() -> Response:
        return json_response(
            200,
            {
                "status": "ok",
                "model": name,
                "dim": dim,
                "entries": model.config.get("entries"),
                "max_length": model.config.get("max_length"),
                "max_batch": max_batch,
                "max_chars": max_chars,
            },
        )

    return app


@functools.cache
def _guarded_protocol_class() -> type:
    """``GuardedHttpProtocol``: made on first use, since it subclasses uvicorn's protocol and this module
    imports uvicorn only when a server is built (see ``__getattr__`` below)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits uvicorn lacks (a :class:`ServerLimits`).

        uvicorn times out only the idle time after a response; a connection that sends nothing, or a
        request's headers or body a byte at a time, would hold its socket for ever, and a shutdown
        would wait for a request whose body never comes. Here a deadline runs while a request is
        arriving, connections beyond ``max_connections`` are refused, and a shutdown closes at once
        the connections still sending a request.
        """

        def __init__(self, *args, limits: ServerLimits, **kwargs):
            super().__init__(*args, **kwargs)
            self.limits = limits
            self.arriving: str | None = None  # "request", "headers" or "body": what the deadline waits for
            self.deadline: asyncio.TimerHandle | None = None
            self.header_bytes = 0

        def expect(self, part: str | None) -> None:
            """Start the deadline for ``part`` of a request (None: the request is in, no deadline)."""
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            self.arriving = part
            if part is not None:
                seconds = self.limits.body_timeout if part == "body" else self.limits.header_timeout
                self.deadline = self.loop.call_later(seconds, self.timed_out)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > self.limits.max_connections:
                client_events.note(f"connections refused (over {self.limits.max_connections} open)")
                self.refuse(503, f"the server has {self.limits.max_connections} connections open: try again later")
            else:
                self.expect("request")

        def connection_lost(self, exc) -> None:
            self.expect(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self.header_bytes += len(data)
            super().data_received(data)
            if self.arriving in ("request", "headers") and self.header_bytes > self.limits.max_header_bytes:
                client_events.note("requests with too large headers")
                self.refuse(431, f"a request's line and headers take at most {self.limits.max_header_bytes:,} bytes")

        # The parser's callbacks: where a request's parts begin and end.
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.expect("headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self.header_bytes = 0
            self.expect("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.header_bytes = 0
            self.expect(None)

        def timed_out(self) -> None:
            self.deadline = None
            if self.arriving == "request":  # a connection that sent nothing: closed without a word
                client_events.note("connections idle from the start")
                self.refuse(None)
                return
            seconds = self.limits.body_timeout if self.arriving == "body" else self.limits.header_timeout
            client_events.note(f"requests whose {self.arriving} took over {seconds:g} s")
            self.refuse(408, f"the request's {self.arriving} did not arrive within {seconds:g} s")

        def refuse(self, status: int | None, message: str = "") -> None:
            """Answer ``status`` (None: nothing) unless a response is under way on this connection, and close it."""
            if self.arriving == "body":  # the app is reading the body: tell it who closed the connection
                self.cycle.scope[CLOSED_BY_SERVER] = True
            self.expect(None)
            cycle = self.cycle
            answering = cycle is not None and cycle.response_started and not cycle.response_complete
            if status is not None and not self.transport.is_closing() and not answering:
                body = _error_bytes(status, message)
                head = (
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
                )
                self.transport.write(head.encode() + body)
            self.transport.close()

        def shutdown(self) -> None:
            if self.arriving is not None:  # nothing to finish: the request is not even in
                self.refuse(None)
            else:
                super().shutdown()

    GuardedHttpProtocol.__module__, GuardedHttpProtocol.__qualname__ = __name__, "GuardedHttpProtocol"
    return GuardedHttpProtocol


def __getattr__(name: str):
    # ``vocabert.serve.GuardedHttpProtocol`` resolves as a module attribute, so the worker processes of
    # ``--workers N`` (which get the protocol pickled, by name) find it.
    if name == "GuardedHttpProtocol":
        return _guarded_protocol_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def uvicorn_options(limits: ServerLimits) -> dict:
    """uvicorn's settings for ``vocabert serve`` (for ``uvicorn.run`` or ``uvicorn.Config``): the protocol
    and timeouts that enforce ``limits``, and this module's log lines printed as uvicorn's are."""
    from uvicorn.config import LOGGING_CONFIG

    log_config = {
        **LOGGING_CONFIG,
        "loggers": {**LOGGING_CONFIG["loggers"], log.name: LOGGING_CONFIG["loggers"]["uvicorn"]},
    }
    return {
        "http": partial(_guarded_protocol_class(), limits=limits),
        "ws": "none",
        "timeout_keep_alive": limits.keep_alive_timeout,
        "timeout_graceful_shutdown": limits.shutdown_timeout,
        "log_config": log_config,
    }


def _version() -> str:
    from vocabert._version import __version__

    return __version__


def create_app_from_environment():
    """The app of one worker process when ``serve`` runs several: settings from ``$VOCABERT_SERVE_SETTINGS``."""
    import vocabert

    settings = json.loads(os.environ[SETTINGS_ENV])
    model = vocabert.load(settings.pop("model_dir"))
    _one_blas_thread()
    return create_app(model, **settings)


def _one_blas_thread() -> None:
    """Requests run in parallel threads: one BLAS thread each (the model's matrices are small)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True)
class ServeSettings:
    """The ``vocabert serve`` options: :func:`serve`'s arguments of the same names (the API key comes from the
    environment, the limits are :class:`ServerLimits`)."""

    model_dir: str = option(help="model directory", flag="--model")
    host: str = option(DEFAULT_HOST, "address to listen on")
    port: int = option(DEFAULT_PORT, "port to listen on, 0-65535 (0: a free one, named in the log)")
    name: str | None = option(None, "model name in answers and in /v1/models (default: --model as given)")
    max_batch: int = option(DEFAULT_MAX_BATCH, "most texts in one request")
    max_chars: int = option(
        DEFAULT_MAX_CHARS,
        "most characters in one text; the model reads only its first max_length tokens (256 for the default "
        "model) anyway",
    )
    threads: int | None = option(
        None, "requests encoded at once per worker, each in its own thread (default: one per CPU)", type=int
    )
    batch_size: int = option(DEFAULT_BATCH_SIZE, "texts per encode batch")
    workers: int = option(1, "server processes, each with the model loaded")
    strict_model: bool = option(
        False, "refuse requests naming another model (404 model_not_found); by default any 'model' is accepted"
    )
    access_log: bool = option(False, "log every request (off by default: it costs time)")


def serve(
    model_dir: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    name: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_chars: int = DEFAULT_MAX_CHARS,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    strict_model: bool = False,
    api_key: str | None = None,
    access_log: bool = False,
    limits: ServerLimits | None = None,
) -> None:
    """Load the model in ``model_dir`` and serve it with uvicorn until interrupted.

    ``name`` defaults to ``model_dir`` as given. ``workers`` > 1 runs that many processes, each with
    its own copy of the model (the entry vectors are memory-mapped, so the page cache shares them).
    ``api_key`` defaults to ``$VOCABERT_API_KEY``; ``limits`` to :class:`ServerLimits`'s defaults.
    """
    require_serve_dependencies()
    import uvicorn

    import vocabert

    check_port(port)
    if workers < 1:
        raise VocabertError("workers must be at least 1")
    limits = limits or ServerLimits()
    _allow_open_files(limits.max_connections)
    model = vocabert.load(model_dir)  # a missing or broken folder is an error here, before any worker starts
    settings = {
        "name": name or str(model_dir),
        "max_batch": max_batch,
        "max_chars": max_chars,
        "threads": threads,
        "batch_size": batch_size,
        "strict_model": strict_model,
        "api_key": api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
    }
    app = create_app(model, **settings)  # checks the settings in this process too
    print(
        f"[vocabert] serve: {settings['name']} ({model.dim} dims, {model.config.get('entries')} entries) on "
        f"http://{host}:{port}/v1/embeddings, {workers} worker(s); limits: {_describe(limits)}",
        flush=True,
    )
    options = {"host": host, "port": port, "access_log": access_log, "log_level": "info", **uvicorn_options(limits)}
    if workers == 1:
        _one_blas_thread()
        uvicorn.run(app, **options)
    else:
        os.environ[SETTINGS_ENV] = json.dumps({"model_dir": str(Path(model_dir).resolve()), **settings})
        uvicorn.run("vocabert.serve:create_app_from_environment", factory=True, workers=workers, **options)


def _describe(limits: ServerLimits) -> str:
    return ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in asdict(limits).items())


def _allow_open_files(connections: int) -> None:
    """Raise the soft limit on open files to what ``connections`` need (with room for the rest), or say why not."""
    import resource

    needed = connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise VocabertError(
                f"--max-connections {connections} needs {needed} open files; this process may open {hard}: "
                "lower --max-connections or raise the limit (ulimit -n)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
