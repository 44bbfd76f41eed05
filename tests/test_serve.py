"""``vocabert serve``: the OpenAI-compatible embedding server, called over loopback by a real HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("orjson")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fixtures import DIM, tiny_model  # noqa: E402

import vocabert  # noqa: E402
from vocabert.artifacts import VocabertError  # noqa: E402
from vocabert.serve import ServerLimits, create_app, uvicorn_options  # noqa: E402

MAX_BATCH, MAX_CHARS = 16, 200
TEXTS = ["the cat sat on the mat", "new york city", "", "a zebra in the park", "how long do cats live", "  "]
# The fixture tokenizer's tokens, [CLS] and [SEP] not counted; "zebra" is one [UNK].
TOKENS = {"the cat sat on the mat": 6, "new york city": 3, "": 0, "a zebra in the park": 5, "how long do cats live": 5}


@contextmanager
def running(app, limits: ServerLimits | None = None):
    """Serve ``app`` with uvicorn in a background thread on a free loopback port, with ``vocabert serve``'s
    protocol and limits; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    options = uvicorn_options(limits or ServerLimits())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model().save(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    return vocabert.load(model_dir)


@pytest.fixture(scope="module")
def url(model):
    with running(create_app(model, name="tiny", max_batch=MAX_BATCH, max_chars=MAX_CHARS, threads=2)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def embed(client, **body) -> dict:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def test_float_embeddings_are_exactly_encode(client, model):
    out = embed(client, input=TEXTS, model="tiny")
    assert list(out) == ["object", "data", "model", "usage"]
    assert out["object"] == "list" and out["model"] == "tiny"
    assert [d["object"] for d in out["data"]] == ["embedding"] * len(TEXTS)
    assert [d["index"] for d in out["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in out["data"]], dtype=np.float32)
    np.testing.assert_array_equal(got, model.encode(TEXTS))
    assert got.shape == (len(TEXTS), DIM)


def test_base64_embeddings_are_little_endian_float32(client, model):
    out = embed(client, input=TEXTS, encoding_format="base64")
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in out["data"]]
    np.testing.assert_array_equal(np.stack(rows), model.encode(TEXTS))


def test_a_single_string_is_one_embedding(client, model):
    out = embed(client, input="new york city")
    assert len(out["data"]) == 1
    np.testing.assert_array_equal(np.array(out["data"][0]["embedding"], np.float32), model.encode(["new york city"])[0])
    np.testing.assert_array_equal(
        np.array(embed(client, input=["new york city"])["data"][0]["embedding"], np.float32),
        np.array(out["data"][0]["embedding"], np.float32),
    )


def test_usage_counts_the_teachers_tokens_without_cls_and_sep(client, model):
    texts = list(TOKENS)
    assert embed(client, input=texts)["usage"] == {"prompt_tokens": 19, "total_tokens": 19}
    for text, n in TOKENS.items():
        assert embed(client, input=text)["usage"]["prompt_tokens"] == n
    # Truncated at the model's max_length (16 with [CLS] and [SEP]): 14 tokens read.
    assert embed(client, input="the cat " * 20)["usage"]["prompt_tokens"] == model.config["max_length"] - 2


def test_model_field_is_optional_and_any_value_is_answered_with_the_served_name(client):
    assert embed(client, input="cat")["model"] == "tiny"
    assert embed(client, input="cat", model="text-embedding-3-small")["model"] == "tiny"


def test_dimensions_equal_to_the_models_and_extra_fields_are_accepted(client):
    assert len(embed(client, input="cat", dimensions=DIM, user="someone")["data"][0]["embedding"]) == DIM


def test_lone_surrogates_and_the_largest_request_are_served(client, model):
    body = b'{"input": ["cat \\ud800 dog"]}'
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.array(r.json()["data"][0]["embedding"], np.float32), model.encode(["cat \ud800 dog"])[0]
    )
    texts = ["x" * MAX_CHARS] * MAX_BATCH
    assert len(embed(client, input=texts)["data"]) == MAX_BATCH


def test_health_and_models(client, model):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "tiny",
        "dim": DIM,
        "entries": model.config["entries"],
        "max_length": model.config["max_length"],
        "max_batch": MAX_BATCH,
        "max_chars": MAX_CHARS,
    }
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "vocabert" and isinstance(card["created"], int)
    assert client.get("/v1/models/tiny").json() == card
    r = client.get("/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


BAD_REQUESTS = [
    (b"not json", None, "not valid JSON"),
    (b"\xff\xfe{", None, "not valid JSON"),
    (b"", None, "not valid JSON"),
    (b'["cat"]', None, "must be a JSON object, not a array"),
    (b"{}", "input", "'input' is required"),
    (b'{"input": null}', "input", "'input' is required"),
    (b'{"input": 5}', "input", "not a number"),
    (b'{"input": {"text": "cat"}}', "input", "not a object"),
    (b'{"input": []}', "input", "must not be an empty list"),
    (b'{"input": [1, 2, 3]}', "input", "token-id inputs"),
    (b'{"input": [[1, 2], [3]]}', "input", "token-id inputs"),
    (b'{"input": [["cat"]]}', "input", "input[0] is a array"),
    (b'{"input": ["cat", 3]}', "input", "input[1] is a number"),
    (b'{"input": ["cat", null]}', "input", "input[1] is a null"),
    (b'{"input": [true]}', "input", "input[0] is a boolean"),
    (json.dumps({"input": ["cat"] * (MAX_BATCH + 1)}).encode(), "input", f"at most {MAX_BATCH} per request"),
    (json.dumps({"input": ["cat", "x" * (MAX_CHARS + 1)]}).encode(), "input", f"input[1] has {MAX_CHARS + 1} char"),
    (b'{"input": "cat", "encoding_format": "float16"}', "encoding_format", "'float' or 'base64'"),
    (b'{"input": "cat", "encoding_format": 1}', "encoding_format", "'float' or 'base64'"),
    (b'{"input": "cat", "dimensions": 4}', "dimensions", f"have {DIM} dimensions"),
    (b'{"input": "cat", "dimensions": "8"}', "dimensions", "must be an integer"),
    (b'{"input": "cat", "dimensions": true}', "dimensions", "must be an integer"),
    (b'{"input": "cat", "model": 5}', "model", "'model' must be a string"),
    (b'{"input": ' + b"[" * 1100 + b"]" * 1100 + b"}", None, "nested too deeply"),  # past orjson's 1,024 levels
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (b'{"input": ' + b"[" * 1000 + b"]" * 1000 + b"}", "input", "input[0] is a array"),  # within orjson's
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_REQUESTS)
def test_bad_requests_are_400_with_openais_error_body(client, body, param, message):
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] is None
    assert message in error["message"]


def test_unknown_paths_and_methods_are_4xx_with_openais_error_body(client):
    for method, path, status in (("POST", "/v1/embedding", 404), ("GET", "/v1/embeddings", 405)):
        r = client.request(method, path)
        assert r.status_code == status
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_strict_model_and_api_key(model):
    with running(create_app(model, name="tiny", strict_model=True, api_key="sesame")) as base:
        with httpx.Client(base_url=base) as c:
            auth = {"authorization": "Bearer sesame"}
            r = c.post("/v1/embeddings", json={"input": "cat", "model": "tiny"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/v1/models").status_code == 401
            assert c.get("/health").status_code == 200  # for probes
            r = c.post("/v1/embeddings", json={"input": "cat", "model": "other"}, headers=auth)
            assert r.status_code == 404 and r.json()["error"] == {
                "message": "the model 'other' does not exist; this server serves 'tiny'",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            assert c.post("/v1/embeddings", json={"input": "cat", "model": "tiny"}, headers=auth).status_code == 200
            assert c.post("/v1/embeddings", json={"input": "cat"}, headers=auth).status_code == 200
            # The interactive docs are off with a key (a browser cannot send it), with it or without.
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert c.get(path).status_code == 404 and c.get(path, headers=auth).status_code == 404
            # A header that is not ASCII is compared as sent, as bytes: refused, not a crash.
            r = c.post("/v1/embeddings", json={"input": "cat"}, headers={"authorization": "Bearer sésame".encode()})
            assert r.status_code == 401


def test_the_docs_answer_without_a_key_when_none_is_set(client):
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "vocabert"


@pytest.mark.parametrize("key", ["s\u00e9same", "", " sesame", "ses\name", "ses\x00ame"])
def test_an_api_key_clients_cannot_send_is_refused_at_start(model, key):
    with pytest.raises(VocabertError, match="printable ASCII") as e:
        create_app(model, api_key=key)
    assert key not in str(e.value) or not key


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("Application/JSON; charset=utf-8", 200),
        ("text/plain", 415),  # what a browser's cross-site form may send without asking first
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
    ],
)
def test_only_json_bodies_are_read(client, content_type, status):
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/v1/embeddings", content=b'{"input": "cat"}', headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and "application/json" in error["message"]


def test_worker_processes_build_the_app_from_the_environment(model_dir, model, monkeypatch):
    """What each process of ``vocabert serve --workers N`` runs (here in this process)."""
    from vocabert import serve

    settings = {"model_dir": str(model_dir), "name": "w", "max_batch": 3, "max_chars": 50, "threads": 1}
    monkeypatch.setenv(serve.SETTINGS_ENV, json.dumps(settings))
    monkeypatch.setattr(serve, "_one_blas_thread", lambda: None)  # process-wide: not in the test process
    with running(serve.create_app_from_environment()) as base, httpx.Client(base_url=base) as c:
        assert c.get("/health").json()["max_batch"] == 3
        out = c.post("/v1/embeddings", json={"input": ["cat", "dog"]}).json()
        assert out["model"] == "w"
        np.testing.assert_array_equal(
            np.array([d["embedding"] for d in out["data"]], np.float32), model.encode(["cat", "dog"])
        )
        assert c.post("/v1/embeddings", json={"input": ["cat"] * 4}).status_code == 400


def test_encoding_does_not_block_the_event_loop(model_dir):
    slow = vocabert.load(model_dir)
    fast_encode = slow.encode

    def encode(texts, batch_size=64, show_progress_bar=False):
        time.sleep(1.0)
        return fast_encode(texts, batch_size=batch_size)

    slow.encode = encode
    with running(create_app(slow, name="slow", threads=1)) as base, httpx.Client(base_url=base) as c:
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=c.post("/v1/embeddings", json={"input": "cat"})))
        thread.start()
        time.sleep(0.2)  # the request is encoding now
        started = time.perf_counter()
        assert c.get("/health").status_code == 200
        assert time.perf_counter() - started < 0.5
        thread.join(5)
        assert result["r"].status_code == 200


def test_a_failure_inside_the_server_is_a_500_in_openais_error_shape(model_dir):
    broken = vocabert.load(model_dir)

    def encode(texts, batch_size=64, show_progress_bar=False):
        raise RuntimeError("disk gone")

    broken.encode = encode
    with running(create_app(broken, name="broken")) as base, httpx.Client(base_url=base) as c:
        r = c.post("/v1/embeddings", json={"input": "cat"})
        assert r.status_code == 500
        assert r.json()["error"] == {
            "message": "internal error: RuntimeError: disk gone",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert c.get("/health").status_code == 200  # and it goes on serving


def test_concurrent_clients_all_succeed(url, model):
    texts = [f"the {a} {b} in new york city" for a in ("big", "small", "red") for b in ("cat", "dog", "car", "house")]

    async def one_client(k: int) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for j in range(10):
                i = (k * 10 + j) % len(texts)
                batch = texts[i : i + 1 + (j % 3) * 2]
                r = await c.post("/v1/embeddings", json={"input": batch})
                statuses.append(r.status_code)
                got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
                # Exactly what encode gives for the same batch (another batch can differ in the last bit).
                np.testing.assert_array_equal(got, model.encode(batch))
        return statuses

    async def burst():
        return await asyncio.gather(*(one_client(k) for k in range(8)))

    statuses = [s for client_statuses in asyncio.run(burst()) for s in client_statuses]
    assert statuses == [200] * 80


def _cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}from vocabert.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_cli_serve_without_a_model_folder_is_one_line(tmp_path):
    out = _cli("serve", "--model", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"vocabert: error: model directory {tmp_path / 'missing'} does not exist"
    ]


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_cli_serve_refuses_a_port_out_of_range_in_one_line(model_dir, port):
    out = _cli("serve", "--model", str(model_dir), "--port", port)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"vocabert: error: --port must be between 0 and 65535, got {port}"]


def test_cli_serve_refuses_an_api_key_clients_cannot_send_without_showing_it(model_dir):
    out = _cli("serve", "--model", str(model_dir), prelude="import os\nos.environ['VOCABERT_API_KEY'] = 'sésame'\n")
    assert out.returncode == 1 and "sésame" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "VOCABERT_API_KEY" in lines[0] and "printable ASCII" in lines[0]


def test_cli_serve_without_the_serve_extra_says_what_to_install(model_dir):
    out = _cli("serve", "--model", str(model_dir), prelude="sys.modules['fastapi'] = None  # as if not installed\n")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing: fastapi" in lines[0] and "pip install 'vocabert[serve]'" in lines[0]


def test_a_body_larger_than_any_valid_request_is_413_and_the_connection_closed(client):
    too_big = 1 + (1 << 20) + MAX_BATCH * MAX_CHARS * 12  # what MAX_BATCH texts of MAX_CHARS characters can take
    headers = {"content-type": "application/json"}
    r = client.post("/v1/embeddings", content=b" " * too_big, headers=headers)
    assert r.status_code == 413 and r.headers["connection"] == "close" and "larger" in r.json()["error"]["message"]

    def chunks():  # sent without a length
        for _ in range(too_big // 65536 + 1):
            yield b" " * 65536

    assert client.post("/v1/embeddings", content=chunks(), headers=headers).status_code == 413


# ------------------------------------------------------------------ hostile clients, over real sockets

SHORT = ServerLimits(header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=0.5, max_header_bytes=4096)


@pytest.fixture(scope="module")
def guarded(model):
    """A server with short timeouts: (host, port)."""
    with running(create_app(model, name="tiny", max_batch=MAX_BATCH, max_chars=MAX_CHARS), SHORT) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def _until_closed(sock: socket.socket, limit: float = 5.0) -> tuple[bytes, float | None]:
    """What the server sends until it closes the connection, and after how many seconds (None: still open)."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, None
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def _status(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with socket.create_connection(guarded) as sock:
        data, closed_after = _until_closed(sock)
    assert data == b"" and closed_after is not None and closed_after < 2


def test_headers_sent_a_byte_at_a_time_get_408_and_the_connection_closed(guarded):
    with socket.create_connection(guarded) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 3:  # a header byte every 50 ms until the server answers
            if select.select([sock], [], [], 0.05)[0]:
                break
            sock.sendall(b"x")
        data, closed_after = _until_closed(sock)
    assert closed_after is not None and time.monotonic() - started < 2
    assert _status(data) == 408 and b"headers did not arrive within 0.5 s" in data


def test_a_half_sent_body_gets_408_and_the_connection_closed(guarded):
    with socket.create_connection(guarded) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            b'{"input": "cat'
        )
        data, closed_after = _until_closed(sock)
    assert closed_after is not None and closed_after < 2
    assert _status(data) == 408 and b"body did not arrive within 0.5 s" in data


def test_an_idle_keep_alive_connection_is_closed(guarded):
    with socket.create_connection(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        data, closed_after = _until_closed(sock)
    assert _status(data) == 200 and closed_after is not None and closed_after < 2


def test_headers_too_large_get_431(guarded):
    with socket.create_connection(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8000)
        data, _ = _until_closed(sock)
    assert _status(data) == 431


def test_connections_beyond_the_cap_get_503_and_slow_clients_cannot_hold_the_server(model):
    limits = ServerLimits(header_timeout=1.0, max_connections=4)
    with running(create_app(model, name="tiny"), limits) as base:
        host, port = base.removeprefix("http://").split(":")
        socks = [socket.create_connection((host, int(port))) for _ in range(30)]
        for sock in socks:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost")  # and nothing more
        started = time.monotonic()
        answers = [_until_closed(sock) for sock in socks]
        for sock in socks:
            sock.close()
        assert time.monotonic() - started < 3 and all(after is not None for _, after in answers)
        assert sorted(_status(data) for data, _ in answers) == [408] * 4 + [503] * 26
        assert httpx.get(f"{base}/health").status_code == 200  # and it serves on


@contextmanager
def cli_server(model_dir: Path, log: Path, *args: str, env: dict | None = None):
    """``vocabert serve`` in a process of its own on a free loopback port: yield (process, base URL);
    its output goes to ``log``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "vocabert.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_sigterm_stops_the_server_within_its_shutdown_timeout_whatever_its_clients_are_doing(model_dir, tmp_path):
    log = tmp_path / "server.log"
    with cli_server(model_dir, log, "--shutdown-timeout", "1", "--max-chars", "10000") as (process, base):
        host, port = base.removeprefix("http://").split(":")
        half_body, idle, slow = (socket.create_connection((host, int(port))) for _ in range(3))
        half_body.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            b'{"input": "cat'
        )
        slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost")
        heavy = {}  # a request that takes seconds to encode: 200 texts of 10,000 one-character tokens

        def post_heavy() -> None:
            texts = [f"{i:03d}" + "a." * 4998 for i in range(200)]
            try:
                heavy["status"] = httpx.post(f"{base}/v1/embeddings", json={"input": texts}, timeout=30).status_code
            except httpx.HTTPError as e:
                heavy["status"] = type(e).__name__

        thread = threading.Thread(target=post_heavy)
        thread.start()
        time.sleep(0.5)  # the half-sent request is in the app, waiting for its body; the heavy one encoding
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop within 10 s of SIGTERM")
        assert time.monotonic() - started < 3  # --shutdown-timeout 1, and a margin
        thread.join(10)
        assert heavy["status"] in (503, "RemoteProtocolError")  # told, or cut off if still sending
        for sock in (half_body, idle, slow):
            sock.close()
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def cli(model_dir, tmp_path_factory):
    """``vocabert serve --max-chars 10000`` in a process of its own: (process, base URL, its log)."""
    log = tmp_path_factory.mktemp("cli") / "server.log"
    with cli_server(model_dir, log, "--max-chars", "10000") as (process, base):
        yield process, base, log


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_unique_long_words_leave_the_servers_memory_as_it_was(cli):
    """Words over 64 characters are never cached: 160 unique 10,000-character words (6.4 MB as Python
    strings, 0.65 MB a request) add nothing to the server's memory once its first requests are served."""
    process, base, _ = cli

    def send(k: int) -> None:
        texts = [f"{k:04d}{i:02d}" + "\U0001f600" * 9990 for i in range(16)]  # one [UNK] each: no ids to speak of
        httpx.post(f"{base}/v1/embeddings", json={"input": texts}, timeout=60).raise_for_status()

    for k in range(2):  # the allocator's working set for requests this size
        send(k)
    before = _rss_mb(process.pid)
    for k in range(2, 12):
        send(k)
    assert _rss_mb(process.pid) - before < 2.5


def test_clients_leaving_mid_body_are_one_log_line_not_a_traceback_each(cli):
    process, base, log = cli
    host, port = base.removeprefix("http://").split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 1000\r\n\r\n{"input": "cat'
            )
            time.sleep(0.02)  # the request is in the app, reading its body
    assert httpx.post(f"{base}/v1/embeddings", json={"input": "cat"}).status_code == 200
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text
    events = [line for line in text.splitlines() if "left before sending their whole request" in line]
    assert len(events) == 1 and "WARNING" in events[0]  # the first at once, the others in the next minute's line
