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
"""

import json
import logging
import os
import time
from functools import partial
from pathlib import Path

from vocabert.artifacts import VocabertError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 2048
DEFAULT_MAX_CHARS = 10_000
DEFAULT_BATCH_SIZE = 64
ENCODING_FORMATS = ("float", "base64")
API_KEY_ENV = "VOCABERT_API_KEY"
# Settings handed to each worker process when there are several (see ``create_app_from_environment``).
SETTINGS_ENV = "VOCABERT_SERVE_SETTINGS"
SERVE_MODULES = ("fastapi", "uvicorn", "orjson")


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
    ``api_key``: when set, requests must send ``Authorization: Bearer <api_key>``.
    """
    import base64
    import hmac

    import anyio
    import orjson
    from fastapi import FastAPI, Request, Response
    from starlette.exceptions import HTTPException

    if max_batch < 1 or max_chars < 1 or batch_size < 1:
        raise VocabertError("max_batch, max_chars and batch_size must be at least 1")
    threads = cpu_count() if threads is None else threads
    if threads < 1:
        raise VocabertError("threads must be at least 1")
    name = name or (str(model.path) if getattr(model, "path", None) is not None else "vocabert")
    dim = int(model.dim)
    # Tokens the tokenizer adds to every text ([CLS] and [SEP] for BERT): not counted in usage.
    specials = int(model.tokenize([""])[1][-1])
    started = int(time.time())
    limiter: list = []  # the CapacityLimiter, made in the event loop on first use

    app = FastAPI(title="vocabert", version=_version(), summary="OpenAI-compatible embeddings from a vocabert model")

    def json_response(status: int, body: dict) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return json_response(exc.status, exc.body())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:  # unknown path, wrong method
        return json_response(
            exc.status_code, ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}").body()
        )

    def check_key(request: Request) -> None:
        sent = request.headers.get("authorization", "").encode()
        if api_key is not None and not hmac.compare_digest(sent, f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")

    def answer(texts: list[str], fmt: str) -> bytes:
        """Encode and write the JSON answer (in a worker thread)."""
        vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        _, offsets = model.tokenize(texts)
        tokens = int(offsets[-1]) - specials * len(texts)
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
        texts, fmt = parse_request(await request.body(), max_batch, max_chars, dim, name, strict_model)
        if not limiter:
            limiter.append(anyio.CapacityLimiter(threads))
        try:
            content = await anyio.to_thread.run_sync(partial(answer, texts, fmt), limiter=limiter[0])
        except Exception as e:  # answered here: an exception that leaves the app makes uvicorn drop the connection
            logging.getLogger("vocabert.serve").exception("encoding a request failed")
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


def _version() -> str:
    from vocabert import __version__

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
) -> None:
    """Load the model in ``model_dir`` and serve it with uvicorn until interrupted.

    ``name`` defaults to ``model_dir`` as given. ``workers`` > 1 runs that many processes, each with
    its own copy of the model (the entry vectors are memory-mapped, so the page cache shares them).
    """
    require_serve_dependencies()
    import uvicorn

    import vocabert

    if workers < 1:
        raise VocabertError("workers must be at least 1")
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
        f"http://{host}:{port}/v1/embeddings, {workers} worker(s)",
        flush=True,
    )
    options = {"host": host, "port": port, "access_log": access_log, "log_level": "info"}
    if workers == 1:
        _one_blas_thread()
        uvicorn.run(app, **options)
    else:
        os.environ[SETTINGS_ENV] = json.dumps({"model_dir": str(Path(model_dir).resolve()), **settings})
        uvicorn.run("vocabert.serve:create_app_from_environment", factory=True, workers=workers, **options)
