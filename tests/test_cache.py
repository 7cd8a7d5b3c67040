"""The cache: never stale, bounded, visible and cleanable."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from charrnn.data import cache, corpus
from charrnn.data.corpus import load_corpus
from charrnn.errors import CharRNNError


def text_of(c: corpus.Corpus) -> str:
    return c.vocab.decode(np.asarray(c.ids).tolist())


def encoded(private_cache) -> list[str]:
    folder = private_cache / "encoded"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_file_rewritten_with_the_same_size_and_mtime_is_read_again(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n")
    first = load_corpus([str(path)])
    stamp = path.stat().st_mtime_ns
    path.write_text("jello wyrld\n")  # same size
    os.utime(path, ns=(stamp, stamp))  # and the old modification time
    again = load_corpus([str(path)])
    assert text_of(again) == "jello wyrld\n" and again.sha256 != first.sha256
    assert again.describe()["sources"][0]["sha256"] == again.sha256  # the run records the text it trains on


def test_an_unreadable_file_is_not_served_from_the_cache(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "c.txt"
    path.write_text("hello world\n")
    load_corpus([str(path)])
    path.chmod(0)
    with pytest.raises(CharRNNError, match="c.txt: cannot read"):
        load_corpus([str(path)])


def test_a_failed_encode_leaves_nothing_behind(tmp_path, private_cache):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine text then \xff broken")
    with pytest.raises(CharRNNError, match="invalid utf-8"):
        load_corpus([str(path)])
    assert encoded(private_cache) == []


def test_the_cap_evicts_least_recently_used_but_never_an_entry_in_use(tmp_path, private_cache, monkeypatch):
    files = []
    for i in range(3):
        files.append(tmp_path / f"t{i}.txt")
        files[-1].write_text(f"text number {i} " * 1000)  # about 15 kB of ids each
    monkeypatch.setenv("CHARRNN_CACHE_MAX_SIZE", "40k")
    held = load_corpus([str(files[0])])  # kept alive: in use
    load_corpus([str(files[1])])
    gc.collect()  # the second is no longer referenced: free to go
    time.sleep(0.02)
    load_corpus([str(files[2])])
    kept = {
        json.loads((private_cache / "encoded" / k / "meta.json").read_text())["sources"][0]["path"]
        for k in encoded(private_cache)
    }
    assert kept == {str(files[0]), str(files[2])}
    assert text_of(held).startswith("text number 0")


def test_sizes_parse():
    assert cache.parse_size("10G") == 10 * 1024**3 and cache.parse_size("500m") == 500 * 1024**2
    assert cache.parse_size("1.5KB") == 1536 and cache.parse_size("123") == 123
    with pytest.raises(CharRNNError):
        cache.parse_size("lots")


def test_cache_command_lists_prunes_and_clears(tmp_path, private_cache):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 100)
    assert json.loads(run_cli("cache", "list", "--json", check=True).stdout)["entries"] == []
    load_corpus([str(path)])
    gc.collect()
    listing = json.loads(run_cli("cache", "list", "--json", check=True).stdout)
    assert [e["kind"] for e in listing["entries"]] == ["encoded"] and listing["entries"][0]["size"] > 1000
    assert listing["entries"][0]["text"] == str(path)  # which text an entry holds, to know what to prune
    human = run_cli("cache", "list", check=True)
    assert b"encoded" in human.stdout and b"1 entries" in human.stdout and b"c.txt" in human.stdout
    assert run_cli("cache", "prune").returncode == 2
    run_cli("cache", "prune", "--older-than", "1h", check=True)
    assert len(encoded(private_cache)) == 1  # used just now
    run_cli("cache", "prune", "--max-size", "0", check=True)
    assert encoded(private_cache) == []
    load_corpus([str(path)])
    gc.collect()
    proc = run_cli("cache", "clear", check=True)
    assert encoded(private_cache) == [] and b"removed 1 entries" in proc.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the folder named here is Linux's")
def test_the_cache_is_the_platforms_cache_folder_unless_charrnn_cache_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARRNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.root() == tmp_path / "xdg" / "charrnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.root() == Path.home() / ".cache" / "charrnn"
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "mine"))
    assert cache.root() == tmp_path / "mine"


def test_an_entry_that_vanishes_while_listed_is_skipped(private_cache, monkeypatch):
    # two processes (torchrun ranks) share the cache: one may remove or replace an entry while the
    # other lists it; the listing skips it instead of failing
    folder = private_cache / "encoded" / "gone"
    folder.mkdir(parents=True)
    real = cache._last_used
    monkeypatch.setattr(cache, "_last_used", lambda path: (path.rmdir() if path == folder else None, real(path))[1])
    assert [e.path for e in cache.entries(("encoded",))] == []


def test_a_read_only_cache_says_what_it_could_not_remove(tmp_path, private_cache, monkeypatch):
    """On a read-only cache `cache clear` said "removed 1 entries" with exit 0 and removed nothing."""
    import errno
    import shutil

    from conftest import run_here

    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 100)
    load_corpus([str(path)])
    gc.collect()

    def read_only(folder, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(shutil, "rmtree", read_only)
    for command in (["cache", "clear"], ["cache", "prune", "--max-size", "0"]):
        proc = run_here(*command)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "could not remove 1 entries" in err and "Read-only file system" in err
        assert "removed 1 entries" not in err and len(encoded(private_cache)) == 1
