"""The corpus layer: decoding policy, chunk borders, inputs, the encoded-id cache, named corpora."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import generated_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.data import catalog, corpus, sources
from charrnn.data.batches import StreamBatches, eval_batches, split
from charrnn.data.corpus import corpus_from_text, load_corpus
from charrnn.data.sources import Source, TextOptions, decode_chunks, read_chunks
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, InputError
from charrnn.model.scoring import by_character

KEEP = TextOptions(keep_newlines=True)
TINY = [
    "--hidden-size",
    "16",
    "--layers",
    "1",
    "--embedding-size",
    "4",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
]


def read_all(path, options=TextOptions(), chunk_bytes=None) -> str:
    source = Source(str(path))
    return "".join(decode_chunks(read_chunks(source, chunk_bytes), options, source.label))


def text_of(c: corpus.Corpus) -> str:
    return c.vocab.decode(np.asarray(c.ids).tolist())


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def invoke(*args: str, input: bytes | None = None):
    """The command in this process (fast); `sample` and `eval` turn autograd off globally, so restore it."""
    with torch.enable_grad():
        return CliRunner().invoke(app, list(args), input=input)


# ---------------------------------------------------------------------------------------------
# Decoding, chunk by chunk
# ---------------------------------------------------------------------------------------------

fixture_ok = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fixture_ok
@given(
    text=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])),
    chunk=st.integers(1, 9),
)
def test_decode_of_encode_is_identity_for_any_text_and_chunk_size(tmp_path, monkeypatch, text, chunk):
    path = write(tmp_path / "t.txt", text.encode("utf-8"))
    expected = text.removeprefix("\ufeff")  # a leading BOM is dropped by design
    assert read_all(path, KEEP, chunk) == expected
    normalised = expected.replace("\r\n", "\n").replace("\r", "\n")
    assert read_all(path, TextOptions(), chunk) == normalised
    if expected.strip():  # and through the vocabulary and the id file, with many chunks
        monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
        assert text_of(load_corpus([str(path)], KEEP)) == expected


@fixture_ok
@given(
    data=st.binary(max_size=64),
    chunk=st.integers(1, 9),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_arbitrary_bytes_give_valid_text_or_our_error(tmp_path, data, chunk, encoding, errors):
    path = write(tmp_path / "b.bin", data)
    try:
        text = read_all(path, TextOptions(encoding, errors), chunk)
    except CharRNNError as e:
        assert str(path) in str(e)
        return
    text.encode("utf-8")  # no lone surrogates
    assert "\x00" not in text and "\r" not in text and not text.startswith("\ufeff")


def test_bom_is_dropped_even_split_across_chunks(tmp_path):
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello \xef\xbb\xbf")
    for chunk in (1, 2, 3, 100):
        assert read_all(path, chunk_bytes=chunk) == "hello \ufeff"  # only the leading one is a BOM
    assert "\ufeff" not in load_corpus([str(write(tmp_path / "b2.txt", b"\xef\xbb\xbfab"))]).vocab.chars


def test_crlf_and_cr_become_newlines_also_across_chunk_borders(tmp_path):
    data = b"one\r\ntwo\rthree\r\n\r\nfour\r"
    path = write(tmp_path / "crlf.txt", data)
    for chunk in range(1, len(data) + 1):  # every possible border, including between \r and \n
        assert read_all(path, chunk_bytes=chunk) == "one\ntwo\nthree\n\nfour\n"
        assert read_all(path, KEEP, chunk) == data.decode()


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = write(tmp_path / "bad.txt", b"x" * 1000 + "é".encode() + b"\xff rest")
    for chunk in (7, 1 << 20):
        with pytest.raises(CharRNNError) as e:
            read_all(path, chunk_bytes=chunk)
        message = str(e.value)
        assert (
            "bad.txt" in message and "byte offset 1002" in message and "--encoding" in message and "--errors" in message
        )
    assert read_all(path, TextOptions(errors="replace")).endswith("é\ufffd rest")
    assert read_all(path, TextOptions(encoding="latin-1")).endswith("Ã©ÿ rest")
    # a file cut short inside a character: said so, at the offset of that character, in any chunking
    cut = write(tmp_path / "cut.txt", "ab✓".encode()[:-1])
    for chunk in (1, 2, 1 << 20):
        with pytest.raises(CharRNNError, match=r"cut.txt: ends in the middle of a utf-8 character \(byte offset 2\)"):
            read_all(cut, chunk_bytes=chunk)
    utf16 = write(tmp_path / "cut16.txt", "ab\n".encode("utf-16")[:-1])
    with pytest.raises(CharRNNError, match=r"ends in the middle of a utf-16 character \(byte offset 6\)"):
        read_all(utf16, TextOptions(encoding="utf-16"))


def test_errors_replace_proceeds_to_training(tmp_path):
    text = generated_text(800).encode() + b"\xff\xfe end\n"
    flags = [*TINY, "--max-steps", "1", "--sample-length", "0", "--val-fraction", "0"]
    result = invoke("train", "-", *flags, "-o", str(tmp_path / "strict"), input=text)
    assert result.exit_code == 1 and "standard input: invalid utf-8 at byte offset 801" in result.stderr  # 800 + "\n"
    result = invoke("train", "-", *flags, "--errors", "replace", "-o", str(tmp_path / "run"), input=text)
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["corpus"]["sources"][0]["path"] == "-"


def test_nul_after_the_first_megabyte_is_binary_unless_bytes(tmp_path):
    path = write(tmp_path / "data.bin", b"a" * (1 << 20) + b"bcd\x00efg")
    with pytest.raises(CharRNNError, match=r"data.bin: contains a NUL byte near byte offset 1048579.*--bytes"):
        load_corpus([str(path)])
    c = load_corpus([str(path)], TextOptions(bytes=True))
    assert c.vocab == Vocab.byte_level() and len(c) == (1 << 20) + 7
    assert bytes(np.asarray(c.ids[-7:])) == b"bcd\x00efg"


# ---------------------------------------------------------------------------------------------
# Too little text
# ---------------------------------------------------------------------------------------------


def test_empty_and_whitespace_only_inputs_are_clear_errors(tmp_path):
    with pytest.raises(CharRNNError, match="empty.txt: no text in it"):
        load_corpus([str(write(tmp_path / "empty.txt", b""))])
    with pytest.raises(CharRNNError, match="blank.txt: only whitespace"):
        load_corpus([str(write(tmp_path / "blank.txt", b" \n\t\r\n  \n"))])
    with pytest.raises(CharRNNError, match="no text"):
        load_corpus([str(write(tmp_path / "empty.bin", b""))], TextOptions(bytes=True))
    result = invoke("train", str(tmp_path / "empty.txt"))
    assert result.exit_code == 1 and "no text in it" in result.stderr


def test_too_short_text_says_how_much_is_needed(tmp_path):
    path = write(tmp_path / "short.txt", b"just a few words\n")
    result = invoke("train", str(path), "--seq-len", "128")
    assert result.exit_code == 1
    assert "short.txt" in result.stderr and "need at least 129" in result.stderr and "--seq-len" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Inputs: directories, stdin, gzip, bytes
# ---------------------------------------------------------------------------------------------


def test_directories_are_walked_sorted_and_filtered_by_glob(tmp_path):
    d = tmp_path / "notes"
    (d / "sub").mkdir(parents=True)
    write(d / "b.txt", b"bee\n")
    write(d / "a.txt", b"ay\n")
    write(d / "sub" / "c.txt", b"sea\n")
    write(d / "skip.md", b"markdown\n")
    write(d / ".hidden.txt", b"hidden\n")
    c = load_corpus([str(d)], glob="*.txt")
    assert text_of(c) == "ay\nbee\nsea\n"
    assert [os.path.basename(s["path"]) for s in c.describe()["sources"]] == ["a.txt", "b.txt", "c.txt"]
    assert text_of(load_corpus([str(d)])) == "ay\nbee\nmarkdown\nsea\n"  # no glob: every file but hidden ones
    with pytest.raises(CharRNNError, match="no files matching '\\*.rst'"):
        load_corpus([str(d)], glob="*.rst")


def test_stdin_is_spooled_hashed_and_cached(monkeypatch):
    data = "stdin text é\r\n".encode() * 10
    counted = count_reads(monkeypatch)
    for _ in range(2):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        c = load_corpus(["-"])
        assert text_of(c) == "stdin text é\n" * 10
    assert counted == ["read", "read"]  # two passes the first time; the same text again hits the cache
    source = c.describe()["sources"][0]
    assert source["path"] == "-" and source["size"] == len(data)
    assert source["sha256"] == c.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(CharRNNError, match="only once"):
        load_corpus(["-", "-"])


def test_eval_reads_stdin(trained_run, text_file):
    result = invoke("eval", str(trained_run), "-", "--json", input=text_file.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["file"] == "-"


def test_a_named_pipe_or_process_substitution_is_read_like_standard_input(trained_run, text_file, tmp_path):
    import subprocess
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(text_file.read_bytes()))
    writer.start()
    c = load_corpus([str(fifo)])
    writer.join()
    assert text_of(c) == text_file.read_text() and c.sha256 == hashlib.sha256(text_file.read_bytes()).hexdigest()
    # eval reads it once for every model: `charrnn eval RUN RUN <(zcat text.gz)`
    line = f"{sys.executable} -m charrnn eval {trained_run} {trained_run} <(cat {text_file}) --json"
    proc = subprocess.run(["bash", "-c", line], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 2 and results[0]["nats"] == results[1]["nats"]


def test_gzip_is_read_transparently_and_damage_is_an_error(tmp_path):
    text = generated_text(3000)
    plain = write(tmp_path / "a.txt", text.encode())
    packed = write(tmp_path / "a.txt.gz", gzip.compress(text.encode()))
    assert np.array_equal(load_corpus([str(packed)]).ids, load_corpus([str(plain)]).ids)
    broken = write(tmp_path / "broken.txt.gz", gzip.compress(text.encode())[:-20])
    with pytest.raises(CharRNNError, match="broken.txt.gz: cannot read"):
        load_corpus([str(broken)])


def test_gzip_progress_counts_compressed_bytes_against_the_compressed_size(tmp_path):
    packed = write(tmp_path / "big.txt.gz", gzip.compress(generated_text(3_000_000).encode()))
    seen = []
    load_corpus([str(packed)], progress=lambda what, done, total: seen.append((done, total)))
    size = packed.stat().st_size
    assert len(seen) >= 3 and all(total == size for _, total in seen)
    dones = [done for done, _ in seen]
    assert dones == sorted(dones) and dones[0] < size / 2 and dones[-1] == size


def test_byte_level_vocabulary_round_trips_and_old_vocabularies_still_load():
    v = Vocab.byte_level()
    assert len(v) == 256 and v.kind == "bytes" and Vocab.from_json(json.loads(json.dumps(v.to_json()))) == v
    assert v.to_bytes(v.from_user("é\n")) == "é\n".encode()
    old = Vocab.from_json({"chars": "abc"})  # checkpoints written before byte-level mode existed
    assert old.kind == "chars" and old == Vocab("cab") and old != v


def test_bytes_model_trains_on_any_file_and_samples_raw_bytes(tmp_path):
    rng = np.random.default_rng(0)
    path = write(tmp_path / "blob.bin", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    run = tmp_path / "run"
    result = invoke("train", str(path), "--bytes", *TINY, "--max-steps", "2", "--sample-length", "0", "-o", str(run))
    assert result.exit_code == 0, result.stderr
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["vocab"] == {"kind": "bytes"} and run_info["text_options"]["bytes"] is True
    result = invoke("sample", str(run), "-n", "200", "--prime", "é", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith("é".encode()) and len(result.stdout_bytes) == 202
    result = invoke("eval", str(run), str(path), "--json")  # a byte-level model reads any file as bytes
    assert result.exit_code == 0 and json.loads(result.stdout)["results"][0]["characters"] == 2999
    tuned = tmp_path / "tuned"
    result = invoke(
        "train", str(path), "--init-from", str(run), "--max-steps", "1", "--sample-length", "0", "-o", str(tuned)
    )  # fine-tuning follows the model: no --bytes needed
    assert result.exit_code == 0, result.stderr
    assert json.loads((tuned / "run.json").read_text())["text_options"]["bytes"] is True
    # surprise shows characters, not their bytes as Latin-1 ("hÃ©llo"), and a window cut inside a
    # character widens to hold it whole
    text = write(tmp_path / "accents.txt", "héllo — ✓ ok\n".encode() * 3)
    result = invoke("surprise", str(run), str(text), "--start", "2", "--length", "11")
    assert result.exit_code == 0, result.stderr
    assert "éllo — ✓" in result.stdout and "Ã" not in result.stdout and "\ufffd" not in result.stdout


def test_a_byte_level_models_losses_gather_into_characters():
    symbols = "hé✓".encode().decode("latin-1") + "\xff"  # 1 + 2 + 3 bytes, then one that starts no character
    losses = np.array([np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    chars, summed = by_character(symbols, losses, byte_level=True)
    assert chars == ["h", "é", "✓", "\ufffd"] and np.isnan(summed[0]) and summed[1:].tolist() == [3.0, 12.0, 6.0]
    assert by_character("ab", np.array([np.nan, 1.0]), byte_level=False)[0] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def count_reads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = sources.read_chunks

    def counting(*args, **kwargs):
        calls.append("read")
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "read_chunks", counting)
    return calls


def test_second_load_hits_the_cache_and_a_change_invalidates_it(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", b"hello world\n")
    calls = count_reads(monkeypatch)
    first = load_corpus([str(path)])
    assert len(calls) == 2  # vocabulary pass and id pass
    again = load_corpus([str(path)])  # one read to check the content: hashing, not decoding and encoding
    assert len(calls) == 3 and isinstance(again.ids, np.memmap) and text_of(again) == "hello world\n"
    write(path, b"hello there\n")  # same size: the modification time tells
    os.utime(path, ns=(1, 1))
    changed = load_corpus([str(path)])
    assert len(calls) == 5 and text_of(changed) == "hello there\n" and changed.sha256 != first.sha256
    load_corpus([str(path)], TextOptions(keep_newlines=True))  # decoding options are part of the key
    assert len(calls) == 7


# ---------------------------------------------------------------------------------------------
# Named corpora
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A catalog entry 'tinytest' whose file sits in a local mirror directory."""
    data = generated_text(2000).encode()
    folder = tmp_path / "mirror"
    folder.mkdir()
    write(folder / "tinytest.txt", data)
    entry = catalog.Entry(
        "tinytest",
        "test text",
        file="tinytest.txt",
        url="https://example.invalid/tinytest.txt",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    monkeypatch.setitem(catalog.CATALOG, "tinytest", entry)
    monkeypatch.setenv("CHARRNN_MIRROR", str(folder))
    return folder


def test_the_catalog_has_tinyshakespeare_and_the_builtin_corpus():
    e = catalog.CATALOG["tinyshakespeare"]
    assert e.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    assert e.size == 1115394 and e.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert "builtin" in catalog.CATALOG


def test_named_corpus_is_fetched_from_the_mirror_verified_and_described(mirror, private_cache):
    c = load_corpus(["tinytest"])
    local = private_cache / "corpora" / "tinytest.txt"
    assert local.read_bytes() == (mirror / "tinytest.txt").read_bytes()
    assert text_of(c) == generated_text(2000)
    source = c.describe()["sources"][0]
    assert source["path"] == "tinytest" and source["sha256"] == catalog.CATALOG["tinytest"].sha256
    (mirror / "tinytest.txt").unlink()  # fetched once: later uses need no mirror
    assert load_corpus(["tinytest"]).sha256 == c.sha256


def test_mirror_can_be_a_base_url(mirror, private_cache, monkeypatch):
    monkeypatch.setenv("CHARRNN_MIRROR", mirror.as_uri())
    assert sources.fetch_named("tinytest") == private_cache / "corpora" / "tinytest.txt"


def test_corrupted_download_fails_and_leaves_no_file(mirror, private_cache):
    write(mirror / "tinytest.txt", generated_text(2000).upper().encode())
    with pytest.raises(CharRNNError, match="tinytest: download from .* is damaged .*nothing was kept"):
        load_corpus(["tinytest"])
    assert list((private_cache / "corpora").iterdir()) == []
    (mirror / "tinytest.txt").unlink()
    with pytest.raises(CharRNNError, match="cannot download .*CHARRNN_MIRROR"):
        load_corpus(["tinytest"])


def test_a_real_path_wins_over_a_corpus_name(mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "tinytest", b"a local file\n")
    assert text_of(load_corpus(["tinytest"])) == "a local file\n"


def test_corpus_commands(mirror):
    listed = invoke("corpus", "list", "--json")
    assert listed.exit_code == 0
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["builtin"]["downloaded"] and not rows["tinytest"]["downloaded"]
    got = invoke("corpus", "get", "tinytest")
    assert got.exit_code == 0, got.stderr
    assert got.stdout.strip().endswith("tinytest.txt")
    assert json.loads(invoke("corpus", "list", "--json").stdout)[-1]["downloaded"]
    table = invoke("corpus", "list")
    assert table.stderr == "" and "tinyshakespeare" in table.stdout  # the result, for `| grep`
    assert invoke("corpus", "get", "nosuch").exit_code == 2


# ---------------------------------------------------------------------------------------------
# Streaming equals in-memory
# ---------------------------------------------------------------------------------------------


def test_streamed_corpus_gives_exactly_the_batches_of_the_in_memory_text(tmp_path, monkeypatch):
    text = generated_text(6000).replace("cat", "chat noir é").replace("dog", "犬🐕")
    path = write(tmp_path / "mixed.txt", text.encode())
    monkeypatch.setattr(sources, "CHUNK_BYTES", 37)  # ~200 chunks, borders inside multi-byte characters
    streamed, memory = load_corpus([str(path)]), corpus_from_text(text)
    assert streamed.vocab == memory.vocab and isinstance(streamed.ids, np.memmap)
    assert np.array_equal(streamed.ids, memory.ids)
    (train_s, val_s), (train_m, val_m) = split(streamed.ids, 0.1), split(memory.ids, 0.1)
    batches_s, batches_m = StreamBatches(train_s, 8, 32), StreamBatches(train_m, 8, 32)
    assert len(batches_s) == len(batches_m) > 10
    for i in range(len(batches_s)):
        for x, y in zip(batches_s.batch(i), batches_m.batch(i), strict=True):
            assert torch.equal(x, y)
    for (xs, ys), (xm, ym) in zip(eval_batches(val_s, 4, 16), eval_batches(val_m, 4, 16), strict=True):
        assert torch.equal(xs, xm) and torch.equal(ys, ym)


def test_a_file_changed_while_it_is_read_is_refused_not_half_trained_on(tmp_path, monkeypatch, private_cache):
    from charrnn.data import corpus as corpus_module

    path = tmp_path / "growing.txt"
    path.write_text("hello world\n" * 1_000, encoding="utf-8")
    real = corpus_module.symbol_chunks

    def appended_meanwhile(source, *args, **kwargs):  # another program writes to the file as it is read
        yield from real(source, *args, **kwargs)
        with open(path, "a", encoding="utf-8") as f:
            f.write("more\n")

    monkeypatch.setattr(corpus_module, "symbol_chunks", appended_meanwhile)
    with pytest.raises(InputError, match="changed while it was being read"):
        corpus_module.load_corpus([str(path)])
