"""The stage protocol: a manifest written last marks an artifact complete for one key."""

from __future__ import annotations

import pytest

from vocabert.artifacts import VocabertError, write_json
from vocabert.distill.workspace import MANIFEST, begin, digest, finish, is_current, read_manifest


def test_manifest_round_trip(tmp_path):
    key = {"provenance": {"tokenizer": "t1", "teacher": "m1"}, "settings": {"a": 1}}
    finish(tmp_path, "corpus", key, extra_field=[1, 2])
    m = read_manifest(tmp_path, "corpus")
    assert m["artifact"] == "corpus" and m["key"] == key
    assert m["extra_field"] == [1, 2]
    assert is_current(tmp_path, "corpus", key)
    assert not is_current(tmp_path, "corpus", {**key, "settings": {"a": 2}})
    assert not is_current(tmp_path, "corpus", {**key, "provenance": {"tokenizer": "t1", "teacher": "m2"}})
    assert not is_current(tmp_path, "vocabulary", key)
    with pytest.raises(VocabertError, match="expected 'vocabulary'"):
        read_manifest(tmp_path, "vocabulary")


def test_begin_withdraws_the_manifest(tmp_path):
    key = {"settings": {}}
    finish(tmp_path, "corpus", key)
    before = digest(tmp_path)
    begin(tmp_path)
    assert not is_current(tmp_path, "corpus", key)
    finish(tmp_path, "corpus", {"settings": {"b": 2}})
    assert digest(tmp_path) != before


def test_read_manifest_errors(tmp_path):
    with pytest.raises(VocabertError, match="interrupted"):
        read_manifest(tmp_path, "corpus")
    with pytest.raises(VocabertError, match="does not exist"):
        read_manifest(tmp_path / "nowhere", "corpus")
    (tmp_path / MANIFEST).write_text("{half")
    with pytest.raises(VocabertError, match="not valid JSON"):
        read_manifest(tmp_path, "corpus")
    write_json(tmp_path / MANIFEST, {"artifact": "corpus"})
    assert read_manifest(tmp_path, "corpus") == {"artifact": "corpus"}
