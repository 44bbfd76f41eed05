"""``vocabert serve``: the OpenAI-compatible embedding server, called over loopback by a real HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
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
from vocabert.serve import create_app  # noqa: E402

MAX_BATCH, MAX_CHARS = 16, 200
TEXTS = ["the cat sat on the mat", "new york city", "", "a zebra in the park", "how long do cats live", "  "]
# The fixture tokenizer's tokens, [CLS] and [SEP] not counted; "zebra" is one [UNK].
TOKENS = {"the cat sat on the mat": 6, "new york city": 3, "": 0, "a zebra in the park": 5, "how long do cats live": 5}


@contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a background thread on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
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
    r = client.post("/v1/embeddings", content=body)
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


def test_cli_serve_without_the_serve_extra_says_what_to_install(model_dir):
    out = _cli("serve", "--model", str(model_dir), prelude="sys.modules['fastapi'] = None  # as if not installed\n")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing: fastapi" in lines[0] and "pip install 'vocabert[serve]'" in lines[0]
