"""`charrnn serve`: the real command on a free loopback port, spoken to by the official `openai` client,
by raw HTTP for the error cases, and by a headless browser for the page."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import TINY, run_cli, run_here

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="charrnn serve needs the serve extra: pip install -e '.[serve]'")

from charrnn.serving import transport  # noqa: E402

JSON = {"Content-Type": "application/json"}


class Served:
    """A `charrnn serve` subprocess; its stderr is collected to check that no traceback ever shows."""

    def __init__(self, *args: str, env: dict | None = None, preexec_fn=None):
        full_env = {k: v for k, v in os.environ.items() if k != "CHARRNN_API_KEY"}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "serve", *args, "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline().decode()
            if not line:
                raise AssertionError("the server did not start:\n" + "".join(self.lines))
            self.lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                self.port = int(found.group(1))
                break
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
        """A request with a JSON body by default (a header given as None is left out), and its reply."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {name: value for name, value in {**JSON, **(headers or {})}.items() if value is not None}
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        status, text = response.status, response.read()
        conn.close()
        return status, json.loads(text)

    def stop(self, sig=signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trained_run):
    s = Served(str(trained_run), "--max-tokens", "100000", "--max-n", "4", "--max-streams", "4", "--max-prompt", "200")
    yield s
    assert s.stop(signal.SIGINT) == 130  # Ctrl-C: a clean shutdown and the usual exit code
    assert "Traceback" not in s.stderr and "socket.send" not in s.stderr, s.stderr  # clients hung up meanwhile


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def sample_cli(run, *args: str) -> str:
    return run_here("sample", str(run), "--no-echo", *args, check=True).stdout.decode()


def test_models_list_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["run"]
    status, body = server.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["models"] == ["run"]


def test_completion_equals_charrnn_sample_for_the_same_seed(server, client, trained_run):
    settings = {"temperature": 0.7, "top_p": 0.9, "seed": 11}
    reply = client.completions.create(
        model="run", prompt="BEN: the", max_tokens=300, extra_body={"top_k": 5}, **settings
    )
    expected = sample_cli(
        trained_run, "--prime", "BEN: the", "-n", "300", "-t", "0.7", "--top-p", "0.9", "--top-k", "5", "--seed", "11"
    )
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (8, 300)


def test_streaming_gives_the_same_text_in_pieces_then_done(server, client):
    whole = client.completions.create(model="run", prompt="ANNA:", max_tokens=400, seed=3).choices[0].text
    chunks = list(client.completions.create(model="run", prompt="ANNA:", max_tokens=400, seed=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "A", "max_tokens": 5, "stream": True}), JSON)
    raw = conn.getresponse().read().decode()
    assert raw.startswith("data: {") and raw.endswith("data: [DONE]\n\n")


def test_seed_reproduces_and_different_seeds_differ(client):
    def text(seed):
        return client.completions.create(model="run", prompt="ANNA:", max_tokens=100, seed=seed).choices[0].text

    assert text(1) == text(1) != text(2)


@pytest.mark.parametrize("stop", [".", "e "])
def test_stop_ends_the_sample_without_the_stop_string(client, trained_run, stop):
    for stream in (False, True):  # streaming holds back what may be the start of the stop string
        reply = client.completions.create(
            model="run", prompt="ANNA:", max_tokens=500, seed=1, stop=[stop], stream=stream
        )
        chunks = list(reply) if stream else [reply]
        text = "".join(c.choices[0].text for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
        # charrnn sample prints the stop string; OpenAI's API leaves it out
        assert text + stop == sample_cli(trained_run, "--prime", "ANNA:", "-n", "500", "--seed", "1", "--stop", stop)


def test_n_samples_equal_sample_count_with_the_same_seed(client, trained_run):
    reply = client.completions.create(model="run", prompt="BEN:", max_tokens=80, n=3, seed=5, stop=["the"])
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    lines = (
        run_here(
            "sample",
            str(trained_run),
            "--prime",
            "BEN:",
            "-n",
            "80",
            "--count",
            "3",
            "--seed",
            "5",
            "--stop",
            "the",
            "--jsonl",
            check=True,
        )
        .stdout.decode()
        .splitlines()
    )
    expected = [json.loads(line)["continuation"] for line in lines]
    got = [c.text + ("the" if c.finish_reason == "stop" else "") for c in sorted(reply.choices, key=lambda c: c.index)]
    assert got == expected and len(set(got)) == 3


def test_concurrent_requests_with_different_settings_do_not_affect_each_other(client):
    settings = [
        {"temperature": 1.0, "seed": 1},
        {"temperature": 0.0},
        {"temperature": 1.5, "top_p": 0.8, "seed": 2},
        {"temperature": 0.5, "seed": 3, "extra_body": {"top_k": 3}},
    ]

    def one(s, stream):
        reply = client.completions.create(model="run", prompt="ANNA: the", max_tokens=3000, stream=stream, **s)
        return "".join(c.choices[0].text for c in reply) if stream else reply.choices[0].text

    alone = [one(s, False) for s in settings]
    together = [None] * len(settings)
    threads = [
        threading.Thread(target=lambda i=i, s=s: together.__setitem__(i, one(s, True))) for i, s in enumerate(settings)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"prompt": 3}, 400, "prompt"),
    ({"prompt": "A", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "A", "max_tokens": 100001}, 400, "max_tokens"),
    ({"prompt": "A", "temperature": -1}, 400, "temperature"),
    ({"prompt": "A", "top_p": 0}, 400, "top_p"),
    ({"prompt": "A", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "A", "n": 5}, 400, "n"),
    ({"prompt": "A", "n": True}, 400, "n"),
    ({"prompt": "A", "stream": "yes"}, 400, "stream"),
    ({"prompt": "A", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "A", "logprobs": 2}, 400, "logprobs"),
    ({"prompt": "A", "logprobs": 0}, 400, "logprobs"),  # the chosen token's own: not supported either
    ({"prompt": "A" * 201}, 400, "prompt"),
    ({"prompt": "Ä€"}, 400, "prompt"),
    ({"prompt": "A", "model": "gpt-4"}, 404, "model"),
    (b"[" * 5000 + b"]" * 5000, 400, None),  # nested deeper than Python's JSON reader goes
    (b"x" * 70_000, 413, None),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_requests_get_their_4xx_in_openai_shape(server, body, status, param):
    got, reply = server.request("POST", "/v1/completions", body)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["param"] == param
    assert reply["error"]["message"]


def test_wrong_route_and_method_and_client_errors_never_500(server, client):
    assert server.request("GET", "/v1/nothing")[0] == 404
    assert server.request("GET", "/v1/completions")[0] == 405
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="run", prompt="A", temperature=-2)
    assert "Traceback" not in server.stderr


def test_with_several_models_a_request_must_name_one(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "second")
    s = Served(str(trained_run), str(tmp_path / "second"))
    try:
        status, reply = s.request("POST", "/v1/completions", {"prompt": "A", "max_tokens": 5})
        assert status == 400 and reply["error"]["param"] == "model"
        assert reply["error"]["message"] == "'model' is required: this server has run, second"
        status, reply = s.request("POST", "/v1/completions", {"model": "second", "prompt": "A", "max_tokens": 5})
        assert status == 200 and reply["model"] == "second"
    finally:
        assert s.stop(signal.SIGTERM) == -signal.SIGTERM  # what a shell shows as 143


def test_unknown_characters_follow_the_requested_policy(client):
    skipped = client.completions.create(
        model="run", prompt="ANNA:Ä", max_tokens=20, seed=1, extra_body={"unknown": "skip"}
    )
    plain = client.completions.create(model="run", prompt="ANNA:", max_tokens=20, seed=1)
    assert skipped.choices[0].text == plain.choices[0].text


def wait_until_idle(server, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = server.request("GET", "/health")[1]
        if body["streams"] == 0 and body["generating"] == 0 or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_its_slots(server, client, stream):
    assert wait_until_idle(server)["streams"] == 0
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"prompt": "A", "max_tokens": 100000, "n": 4, "stream": stream}
    conn.request("POST", "/v1/completions", json.dumps(body), JSON)
    if stream:
        response = conn.getresponse()
        assert response.read(20).startswith(b"data: ")
        response.close()
    else:  # the reply comes whole at the end: wait until the samples are being made
        deadline = time.monotonic() + 10
        while server.request("GET", "/health")[1]["generating"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    with pytest.raises(openai.RateLimitError):  # all 4 slots are taken
        client.completions.create(model="run", prompt="A", max_tokens=5)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    idle = wait_until_idle(server, seconds=3)
    assert idle["streams"] == 0 and idle["generating"] == 0, idle  # long before 4 x 100,000 characters
    assert client.completions.create(model="run", prompt="A", max_tokens=5).choices[0].text


def test_score_matches_charrnn_eval(server, trained_run, tmp_path):
    text = "ANNA: the cat sat on a mat.\nBEN: the dog ran.\n"
    status, body = server.request("POST", "/v1/score", {"text": text, "per_char": True})
    assert status == 200
    # line ends read as eval reads them in a file: "\r\n" and "\r" are "\n"
    windows = server.request("POST", "/v1/score", {"text": text.replace("\n", "\r\n")})[1]
    assert (windows["nats"], windows["characters"]) == (body["nats"], body["characters"])
    path = tmp_path / "t.txt"
    path.write_text(text)
    out = run_here("eval", str(trained_run), str(path), "--json", "--streams", "1", check=True)
    expected = json.loads(out.stdout)["results"][0]
    assert body["nats"] == pytest.approx(expected["nats"], rel=1e-5)
    assert body["characters"] == expected["characters"] == len(text) - 1
    assert len(body["surprisal"]) == len(text) and body["surprisal"][0] is None
    # the per-character figures add up to the total (they came from another precision before)
    for short in ("AN", "the cat"):
        status, body = server.request("POST", "/v1/score", {"text": short, "per_char": True})
        assert sum(body["surprisal"][1:]) / body["characters"] == pytest.approx(body["nats"], abs=1e-4)


def test_ctrl_c_with_requests_in_flight_answers_them_with_an_error_and_no_traceback(trained_run):
    s = Served(str(trained_run), "--max-tokens", "100000000")
    replies = {}

    def ask(stream: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        body = json.dumps({"prompt": "A", "max_tokens": 100000000, "stream": stream})
        conn.request("POST", "/v1/completions", body, JSON)
        response = conn.getresponse()
        replies[stream] = (response.status, response.getheader("content-type"), response.read().decode())

    askers = [threading.Thread(target=ask, args=(stream,)) for stream in (False, True)]
    for asker in askers:
        asker.start()
    deadline = time.monotonic() + 10
    while s.request("GET", "/health")[1]["generating"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.request("GET", "/health")[1]["generating"] == 2
    assert s.stop(signal.SIGINT) == 130, s.stderr
    for asker in askers:
        asker.join(timeout=30)
    status, kind, body = replies[False]
    assert (status, kind) == (503, "application/json") and "shutting down" in body, (replies, s.stderr)
    status, kind, body = replies[True]
    assert status == 200 and '"error"' in body and "shutting down" in body, (replies, s.stderr)  # the last event
    assert "Traceback" not in s.stderr and "ERROR" not in s.stderr, s.stderr


def test_ctrl_c_says_130_also_where_the_server_started_with_sigint_ignored(trained_run):
    # A background job of a shell script starts with SIGINT ignored. The server still stops on it,
    # gracefully, and uvicorn's raising it again then did nothing: the exit code was 0.
    s = Served(str(trained_run), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert s.request("GET", "/health")[0] == 200
    assert s.stop(signal.SIGINT) == 130 and "Traceback" not in s.stderr, s.stderr


def test_api_key_is_required_when_set_and_sigterm_stops_cleanly(trained_run):
    s = Served(str(trained_run), env={"CHARRNN_API_KEY": "sesame"})
    try:
        assert s.request("GET", "/v1/models")[0] == 401
        assert s.request("POST", "/v1/completions", {"prompt": "A"}, {"Authorization": "Bearer wrong"})[0] == 401
        assert s.request("GET", "/health")[0] == 200
        keyed = openai.OpenAI(base_url=s.url + "/v1", api_key="sesame", max_retries=0)
        assert keyed.completions.create(model="run", prompt="A", max_tokens=7).usage.completion_tokens == 7
    finally:
        code = s.stop(signal.SIGTERM)
    assert code == -signal.SIGTERM and "Traceback" not in s.stderr, s.stderr
    # a key no request could send (header bytes are read as Latin-1) is refused before serving
    proc = run_here("serve", str(trained_run), "--port", "0", "--api-key", "clé")
    assert proc.returncode == 2 and b"ASCII" in proc.stderr
    proc = run_here("serve", str(trained_run), str(trained_run), "--port", "0")
    assert proc.returncode == 2 and b"given twice" in proc.stderr


def test_port_in_use_and_missing_extra_are_one_clear_line(trained_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_cli("serve", str(trained_run), "--port", str(taken.getsockname()[1]))
    assert proc.returncode == 1 and "--port" in proc.stderr.decode() and b"Traceback" not in proc.stderr
    shim = tmp_path / "shim" / "starlette"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named starlette', name='starlette')\n")
    proc = run_cli("serve", str(trained_run), env={"PYTHONPATH": str(shim.parent)})
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "pip install 'charrnn[serve]'" in err and len(err.strip().splitlines()) == 1


def browser(profile):
    """A headless Chromium driven by Selenium, or None when either is missing. Its profile lives in
    `profile` (without one Chromium leaves an empty folder in /tmp on every run)."""
    try:
        from selenium import webdriver
    except ImportError:
        return None
    driver_path = shutil.which("chromedriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not driver_path or not binary:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


def test_the_page_streams_text_into_a_real_browser(server, tmp_path):
    driver = browser(tmp_path / "chromium")
    if driver is None:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver, and pip install selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "run")
        driver.find_element(By.ID, "prompt").send_keys("ANNA:")
        length = driver.find_element(By.ID, "max-tokens")
        length.clear()
        length.send_keys("300")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "done")
        output = driver.find_element(By.ID, "output").text
        assert output.startswith("ANNA:") and len(output) > 200
        driver.find_element(By.ID, "score-text").send_keys("BEN: the cat sat.")
        driver.find_element(By.ID, "score").click()
        wait.until(lambda d: "bits per character" in d.find_element(By.ID, "score-summary").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#surprisal span")) == len("BEN: the cat sat.")
    finally:
        driver.quit()


def test_an_empty_api_key_on_a_public_host_is_warned_about_as_no_key(trained_run):
    """An empty --api-key checks nothing: a server open to the network says so, as without one."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "serve",
            str(trained_run),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--api-key",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "CHARRNN_API_KEY"},
    )
    try:
        first = proc.stderr.readline().decode()
        serving = proc.stderr.readline().decode()
        port = int(re.search(r":(\d+)/v1", serving).group(1))
        for _ in range(600):  # up: a signal before uvicorn's handlers is lost where SIGINT was ignored at start
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()  # never left running, whatever happened
    assert "without --api-key" in first, first


SCORED = ("ANNA: the cat sat on a mat.\nBEN: the dog ran.\n" * 400)[:16_384]  # --max-prompt's default


def open_stream(port: int, body: dict) -> http.client.HTTPResponse:
    """A streaming completion, once its first event has come."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), JSON)
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: {")
    return response


def test_a_maximum_size_score_lets_streams_go_on_and_takes_a_place_in_flight(trained_run):
    """A text to score is read a slice at a time between the streams' steps: a stream of 250
    characters, under way when a 16,384-character score (256 slices) comes, has ended by the time
    the score is answered. A score takes one of --max-streams' places, and a client that hangs up
    gives it back."""
    s = Served(str(trained_run), "--max-streams", "2")
    try:
        stream = open_stream(s.port, {"prompt": "ANNA:", "max_tokens": 250})
        status, scored = s.request("POST", "/v1/score", {"text": SCORED, "per_char": True})
        assert status == 200 and scored["characters"] == len(SCORED) - 1 and len(scored["surprisal"]) == len(SCORED)
        assert s.request("GET", "/health")[1]["generating"] == 0  # the stream ended meanwhile
        rest = stream.read().decode()
        assert rest.endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in rest

        both = open_stream(s.port, {"prompt": "A", "max_tokens": 4096, "n": 2})  # every place taken
        status, reply = s.request("POST", "/v1/score", {"text": "ANNA: the cat"})
        assert status == 429 and reply["error"]["type"] == "rate_limit_error"
        both.close()
        assert wait_until_idle(s)["streams"] == 0

        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/score", json.dumps({"text": SCORED}), JSON)
        deadline = time.monotonic() + 10
        while s.request("GET", "/health")[1]["streams"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.request("GET", "/health")[1]["streams"] == 1  # the score in flight
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert wait_until_idle(s)["streams"] == 0
    finally:
        assert s.stop() == 130
    assert "Traceback" not in s.stderr, s.stderr


def raw(port: int, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of a request without a body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    reply = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return reply


def test_a_web_page_cannot_reach_the_server_by_another_name_or_without_json(server, trained_run):
    """Any page the user opens may send a text/plain POST without asking the server first, and a
    page whose own name resolves to 127.0.0.1 (DNS rebinding) sends that name as Host: both are
    refused, and no page may read a reply (no CORS) unless --cors names its origin."""
    body = {"prompt": "A", "max_tokens": 3}
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        for path in ("/v1/completions", "/v1/score"):
            status, reply = server.request("POST", path, {**body, "text": "AB"}, {"Content-Type": kind})
            assert status == 415 and "application/json" in reply["error"]["message"], reply
    for path in ("/", "/health", "/v1/models"):
        status, _, reply = raw(server.port, "GET", path, {"Host": f"rebound.example:{server.port}"})
        assert status == 403 and json.loads(reply)["error"]["code"] == "host_not_allowed"
    status, reply = server.request("POST", "/v1/completions", body, {"Host": "rebound.example"})
    assert status == 403 and "--allow-host rebound.example" in reply["error"]["message"]
    for host in (f"localhost:{server.port}", f"[::1]:{server.port}", f"127.0.0.1:{server.port}"):
        assert raw(server.port, "GET", "/v1/models", {"Host": host})[0] == 200
    preflight = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = raw(server.port, "OPTIONS", "/v1/completions", preflight)
    assert status != 200 and "access-control-allow-origin" not in headers
    assert "access-control-allow-origin" not in raw(server.port, "GET", "/v1/models", preflight)[1]

    s = Served(str(trained_run), "--allow-host", "box.lan", "--cors", "http://page.example")
    try:
        assert raw(s.port, "GET", "/v1/models", {"Host": f"box.lan:{s.port}"})[0] == 200
        preflight["Access-Control-Request-Headers"] = "content-type"
        status, headers, _ = raw(s.port, "OPTIONS", "/v1/completions", preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://page.example"
        status, headers, _ = raw(s.port, "OPTIONS", "/v1/completions", {**preflight, "Origin": "http://other.example"})
        assert status != 200 and "access-control-allow-origin" not in headers
        assert raw(s.port, "GET", "/v1/models", {"Host": "other.lan"})[0] == 403
    finally:
        assert s.stop() == 130
    proc = run_here("serve", str(trained_run), "--port", "0", "--cors", "localhost:3000")
    assert proc.returncode == 2 and b"origin" in proc.stderr


POST_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_and_vanishing_clients_are_timed_out_and_counted_on_a_line(trained_run):
    """A client that never finishes its headers or its body is disconnected after --request-timeout
    (a 408 for the body), and clients that hang up mid-body are counted on one line, not a
    traceback each."""
    s = Served(str(trained_run), "--request-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as slow:
            slow.sendall(POST_HEAD)  # and never the blank line that ends the headers
            assert read_until_closed(slow) == b""
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as slow:
            slow.sendall(POST_HEAD + b'Content-Length: 100\r\n\r\n{"prompt": ')
            reply = read_until_closed(slow)
        assert reply.startswith(b"HTTP/1.1 408 ") and b'"code":"timeout"' in reply, reply
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", s.port), timeout=30) as gone:
                gone.sendall(POST_HEAD + b'Content-Length: 60000\r\n\r\n{"prompt": "' + b"a" * 1000)
        assert s.request("GET", "/health")[0] == 200
    finally:
        assert s.stop() == 130
    assert "Traceback" not in s.stderr and "ClientDisconnect" not in s.stderr, s.stderr
    lines = [line for line in s.lines if "hung up before sending a whole request" in line]
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("WARNING:  while serving"), s.stderr  # one, then the summary


def few_files() -> None:
    """A file limit of 100 for the server's process (run there before it starts)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))


def test_connections_beyond_the_file_limit_are_refused_not_tracebacks(trained_run):
    """Below its file limit the server refuses connections (503, or closed) instead of running out
    of file descriptors, where every accept() failed with a traceback."""
    s = Served(str(trained_run), "--request-timeout", "60", preexec_fn=few_files)
    socks = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(120)]
    try:
        statuses = []
        for sock in socks:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = sock.recv(100)
            except OSError:  # refused: reset before our request arrived
                head = b""
            statuses.append(int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None)
        assert statuses.count(200) == 100 - transport.RESERVED_FILES  # the first ones; the rest refused
        assert set(statuses) <= {200, 503, None}
    finally:
        for sock in socks:
            sock.close()
    try:
        deadline = time.monotonic() + 10
        while s.request("GET", "/health")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.request("GET", "/health")[0] == 200  # served again once they are closed
    finally:
        assert s.stop() == 130
    assert "Traceback" not in s.stderr and "out of system resource" not in s.stderr, s.stderr
    assert sum("connections refused" in line for line in s.lines) <= 3, s.stderr


def test_a_tally_reports_a_flood_on_a_line_every_few_seconds_and_sums_it_up():
    clock, lines = [0.0], []
    tally = transport.Tally(lines.append, clock=lambda: clock[0])
    for second in range(12):
        clock[0] = float(second)
        for _ in range(100):
            tally.add(transport.HUNG_UP)
    tally.add(transport.TOO_MANY)
    assert lines == [f"{transport.HUNG_UP}: 1 so far", f"{transport.HUNG_UP}: 501 so far"] + [
        f"{transport.HUNG_UP}: 1,001 so far",
        f"{transport.TOO_MANY}: 1 so far",
    ]
    assert tally.summary() == f"while serving, {transport.HUNG_UP}: 1,200; {transport.TOO_MANY}: 1"


LONE_SURROGATES = [
    (b'{"model": "\\ud800", "prompt": "A"}', "/v1/completions", "model"),
    (b'{"prompt": "A\\udfff"}', "/v1/completions", "prompt"),
    (b'{"prompt": "A", "stop": ["\\ud800"]}', "/v1/completions", "stop"),
    (b'{"text": "AB\\ud800"}', "/v1/score", "text"),
    (b'{"\\ud800": 1, "prompt": "A"}', "/v1/completions", None),
]


def test_lone_surrogates_are_a_400_on_character_and_byte_models(server, trained_run, tmp_path):
    """JSON can spell half a UTF-16 pair ("\\ud800"), which is no character: on a byte-level model
    it could not be encoded, and an error naming it could not be written back (a 500 each)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ANNA: the cat. BEN: a dog.\n" * 50)
    run = tmp_path / "bytes"
    run_here(
        "train", str(corpus), "--bytes", *TINY, "--max-steps", "2", "--sample-length", "0", "-o", str(run), check=True
    )
    s = Served(str(run))
    try:
        for served in (server, s):
            for body, path, param in LONE_SURROGATES:
                status, reply = served.request("POST", path, body)
                assert status == 400 and reply["error"]["param"] == param and "surrogate" in reply["error"]["message"]
        assert s.request("POST", "/v1/completions", {"prompt": "é", "max_tokens": 3, "stop": "ü"})[0] == 200
    finally:
        assert s.stop() == 130
    assert "Traceback" not in s.stderr + server.stderr, s.stderr


def test_a_prompt_with_windows_line_ends_is_read_as_the_training_text_was(server):
    """/v1/score read "\\r\\n" as "\\n", but a completion prompt holding it was refused as outside the
    vocabulary: one rule for every text a model reads, as `charrnn sample` reads a prime."""
    texts = {}
    for prompt in ("ANNA: the cat.\nBEN:", "ANNA: the cat.\r\nBEN:"):
        status, body = server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 30, "seed": 4})
        assert status == 200, body
        texts[prompt] = body["choices"][0]["text"]
    assert len(set(texts.values())) == 1
