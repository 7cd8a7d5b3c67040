"""The documentation: every example in README.md and docs/*.md runs, the site builds, the pages stay readable.

How the examples run
--------------------
Each fenced block tagged ``bash``, ``sh``, ``console`` or ``python`` is one test, in page order, and the
blocks of a page share one fresh directory, as a reader typing them one after another would: the
quick start's ``-o runs/builtin`` is there for the blocks after it. Python blocks run as scripts in
that directory. Blocks tagged ``text`` or ``json`` show output and are not run; each carries one of
these HTML comments on the line before it (invisible on the page):

- ``<!-- illustrative -->``: an example of what a command prints; the text around it says so;
- ``<!-- checked -->``: every line of it must appear in what the block before it printed.

``<!-- skip: REASON -->`` before a runnable block leaves it out, with the reason (``test_skips`` keeps
them few). A block that names a named corpus (``tinyshakespeare``) is skipped unless
``CHARRNN_MIRROR`` points at a copy of the corpora, and a block that calls ``curl`` or ``jq`` unless
the tool is installed.

What the runner changes, all in ``rewrite()``:

- training budgets: every ``charrnn train`` (and ``charrnn.train(...)`` in Python) runs
  ``--max-steps 20`` (``--max-steps 40`` when it resumes) instead of its ``--max-time``,
  ``--max-steps`` or ``--epochs``, and a new run (not ``--resume`` or ``--init-from``) gets a 1 x 64
  model (``--hidden-size 64 --embedding-size 16``), so that a page trains in seconds;
- ``charrnn serve`` listens on a free port instead of 8000, and ``localhost:8000`` in later blocks
  of the page follows it. A block that starts ``charrnn serve`` runs in the background until the
  page ends; the runner waits for ``/health`` before it goes on.

Every command runs with ``CHARRNN_THREADS=1`` (two test processes on two cores must not spin against
each other), a private ``CHARRNN_CACHE`` shared by the pages, and ``COLUMNS=100``.

Speed: starting torch takes a second or two, which fifty commands cannot afford. So ``charrnn`` and
``python`` in the examples are small launchers that ask one process, which has imported torch once,
to fork a copy that runs the real command (the console script's entry point, or the script) with
the block's arguments, directory, environment and standard streams; the copy's exit status, and a
signal sent to the launcher, are passed on. ``CHARRNN_DOCS_FORK=0`` runs the installed commands
themselves instead, slower but with nothing in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash", "sh", "console", "python"}
SHOWN = {"text", "json"}
STEPS = 20  # the training budget of every example that trains
TINY_MODEL = "--hidden-size 64 --embedding-size 16"
NAMED_CORPORA = ("tinyshakespeare",)
TOOLS = ("curl", "jq")
BLOCK_TIMEOUT = 120
MAX_SKIPS = 11
README_MAX_BYTES = 12 * 1024
PARAGRAPH_MAX_WORDS = 120


# --- reading the pages ------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marks: dict  # the HTML comments just before it: skip, illustrative, checked

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
MARK = re.compile(r"^<!--\s*(skip|illustrative|checked)\s*(?::\s*(.*?))?\s*-->$")


def blocks(page: Path) -> list[Block]:
    found, marks, lines = [], {}, page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if m := MARK.match(line):
            marks[m.group(1)] = m.group(2) or ""
        elif m := FENCE.match(line):
            fence, start, body = m.group(1), i, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            found.append(Block(page, start + 1, m.group(2).lower(), textwrap.dedent("\n".join(body)) + "\n", marks))
            marks = {}
        elif line:
            marks = {}
        i += 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN]


def paragraphs(page: Path) -> list[tuple[int, str]]:
    """Prose paragraphs (list items count one by one), without code, tables, headings or comments."""
    out, current, start, fence = [], [], 0, None

    def close():
        if current:
            out.append((start, " ".join(current)))
            current.clear()

    for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if fence:
            fence = None if line.startswith(fence) else fence
            continue
        if m := FENCE.match(line):
            close()
            fence = m.group(1)
            continue
        if not line or line.startswith(("#", "|", "<!--", "<img", "![")):
            close()
            continue
        if re.match(r"^([-*+]|\d+\.)\s", line):  # a list item starts a paragraph of its own
            close()
        if not current:
            start = number
        current.append(line)
    close()
    return out


# --- what the runner changes --------------------------------------------------------------------

SERVER = re.compile(r"\s*(\w+=\S*\s+)*charrnn serve\b")  # a block that starts a server
BUDGET = re.compile(r"\s--(max-time|max-steps|epochs)[ =]\S+")


def rewrite(code: str, lang: str, port: Callable[[int], int] = lambda p: p) -> str:
    """The example as the runner runs it: small training budgets and models, free ports."""
    if lang == "python":
        code = re.sub(r"max_time=[^,)]+", f"max_steps={STEPS}, hidden_size=64, embedding_size=16", code)
    else:

        def train(m: re.Match) -> str:
            command, comment = re.match(r"(.*?)(\s+#.*)?$", m.group(0), re.S).groups()
            command = BUDGET.sub("", command).rstrip()
            resumes = "--resume" in command
            extra = f" --max-steps {2 * STEPS if resumes else STEPS}"
            if not resumes and "--init-from" not in command:
                extra += " " + TINY_MODEL  # last, so that it wins over a model size the example gives
            return command + extra + (comment or "")

        # a command runs to the end of its line (a backslash continues it), or to | ; & or a comment
        code = re.sub(r"charrnn train(?:\\\n|[^\n|;&])*", train, code)
        code = "\n".join(map(default_port, code.split("\n")))
        # torchrun starts each rank as `charrnn` itself, through the launchers, instead of `python -m charrnn`
        code = re.sub(r"(torchrun\b[^\n]*?) -m charrnn\b", r"\1 --no-python charrnn", code)
    return re.sub(
        r"((?:localhost|127\.0\.0\.1):|--port[ =])(\d{4,5})\b", lambda m: m.group(1) + str(port(int(m.group(2)))), code
    )


def default_port(line: str) -> str:
    """`charrnn serve` listens on 8000 unless told: say so, for the port to be replaced."""
    if "charrnn serve" not in line or "--port" in line:
        return line
    command, comment = re.match(r"(.*?)(\s+#.*)?$", line).groups()
    return command.rstrip() + " --port 8000" + (comment or "")


# --- the launchers: one process imports torch, each command is a fork of it -------------------

FORKER = r"""
import importlib, json, os, select, signal, socket, sys
# the slow imports, once: torch, what its optimizers pull in, and the libraries the examples use
for name in ("numpy", "torch", "torch._dynamo", "torch.optim", "safetensors.torch", "typer", "rich",
             "starlette.applications", "uvicorn", "matplotlib.pyplot", "openai"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass

def serve(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-command forks reap themselves
    parent = os.getppid()
    print("ready", flush=True)
    while os.getppid() == parent:  # ends with the test run
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            command(conn)  # never returns
        conn.close()

def command(conn):
    conn.settimeout(None)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            os._exit(1)
        data += more
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = request["argv"]
        os._exit(run(request))
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())
    # readable when the command ends (Linux); elsewhere, look every 20 ms
    child = [os.pidfd_open(pid)] if hasattr(os, "pidfd_open") else []
    while True:  # pass signals on; a launcher that goes away takes its command with it
        ready, _, _ = select.select([conn, *child], [], [], None if child else 0.02)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if conn not in ready:
            continue
        news = conn.recv(64)
        if not news:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        for sig in news.split():
            os.kill(pid, int(sig))
    with __import__("contextlib").suppress(OSError):
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)

def run(request):
    # The command in this process, and its exit code. It ends as the interpreter would, but without
    # tearing down every module torch imported: that alone took a second per command.
    import atexit
    try:
        if request["mode"] == "python":  # python SCRIPT ARGS...
            import runpy
            sys.argv = sys.argv[1:]
            sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
            runpy.run_path(sys.argv[0], run_name="__main__")
        else:  # a console script: charrnn, torchrun
            from importlib.metadata import entry_points
            (script,) = entry_points(group="console_scripts", name=request["mode"])
            script.load()()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    return code

serve(sys.argv[1])
"""

LAUNCHER = r"""#!{python}
import json, os, signal, socket, sys
if {mode!r} == "python" and (len(sys.argv) < 2 or sys.argv[1].startswith("-")):  # python -c, -m: the real one
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect({path!r})
fds = []
for fd in (0, 1, 2):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:  # a closed stream stays closed
        fds.append(os.open(os.devnull, os.O_RDWR))
argv = [{argv0!r}, *sys.argv[1:]]
request = {{"mode": {mode!r}, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], fds)
replies = conn.makefile("rb")
pid = int(replies.readline())
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda s, f: conn.sendall(f"{{s}}\n".encode()))
line = replies.readline()
code = int(line) if line.strip() else 1
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


class Launchers:
    """A directory for PATH with `charrnn`, `torchrun` and `python` in it, and the process they fork from.
    Without forking it stays empty: the installed commands run as they are."""

    def __init__(self, where: Path):
        self.bin = where / "bin"
        self.bin.mkdir()
        self.process = None
        fork = os.environ.get("CHARRNN_DOCS_FORK", "1") != "0"
        if not fork:
            return
        path = str(where / "fork.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORKER, path], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout.readline().strip() == "ready", "the forking process did not start"
        for name in ("charrnn", "torchrun", "python"):
            real = shutil.which(name) or str(Path(sys.executable).with_name(name))
            self._script(name, LAUNCHER.format(python=sys.executable, path=path, argv0=real, mode=name))

    def _script(self, name: str, text: str) -> None:
        (self.bin / name).write_text(text)
        (self.bin / name).chmod(0o755)

    def close(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()


# --- running a page ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """End a block's process group: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


class Page:
    """One page's directory, environment, ports and servers, shared by its blocks in order."""

    def __init__(self, page: Path, root: Path, launchers: Launchers, cache: Path):
        self.dir = root / page.stem
        self.dir.mkdir()
        self.failed: str | None = None
        self.last_output = ""
        self.servers: list[subprocess.Popen] = []
        self.ports: dict[int, int] = {}  # the port an example names: the free one it gets
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "CHARRNN_API_KEY")},
            "PATH": f"{launchers.bin}{os.pathsep}{os.environ['PATH']}",
            "CHARRNN_CACHE": str(cache),
            "CHARRNN_THREADS": "1",
            "COLUMNS": "100",
            "PYTHONUNBUFFERED": "1",
        }

    def port(self, named: int) -> int:
        if named not in self.ports:
            self.ports[named] = free_port()
        return self.ports[named]

    def run(self, block: Block) -> None:
        code = rewrite(block.code, block.lang, self.port)
        if block.lang == "python":
            script = self.dir / f"block_{block.line}.py"
            script.write_text(code, encoding="utf-8")
            code = f"python {script.name}"
        elif block.lang == "console":
            code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
        if SERVER.match(code):
            return self.start_server(code, block)
        process = subprocess.Popen(
            ["bash", "-eu", "-c", code],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(process)
            pytest.fail(f"{block.name} ran for more than {BLOCK_TIMEOUT} s:\n{code}")
        self.last_output = out.decode("utf-8", "replace")
        print(f"$ {code}\n{self.last_output}")  # shown for a failed test, or with pytest -rP
        if process.returncode != 0:
            pytest.fail(f"{block.name} exited {process.returncode}:\n$ {code}\n{self.last_output[-4000:]}")

    def start_server(self, code: str, block: Block) -> None:
        """Start a block that serves in the background, and wait until it answers /health."""
        log_path = self.dir / f"server_{block.line}.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                ["bash", "-c", code],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.servers.append(server)
        port = int(re.findall(r"--port[ =](\d+)", code)[-1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"{block.name}: the server stopped ({server.returncode}):\n{log_path.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        self.last_output = ""
                        return
            time.sleep(0.1)
        pytest.fail(f"{block.name}: the server did not answer /health within 60 s:\n{log_path.read_text()}")

    def close(self) -> None:
        for server in self.servers:
            stop(server)
        self.servers.clear()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    launchers = Launchers(root)
    cache = root / "cache"
    opened: dict[Path, Page] = {}

    def page(path: Path) -> Page:
        if path not in opened:
            opened[path] = Page(path, root, launchers, cache)
        return opened[path]

    yield page
    for p in opened.values():
        p.close()
    launchers.close()


def skip_reason(block: Block) -> str | None:
    if "skip" in block.marks:
        return block.marks["skip"] or "marked skip without a reason"
    if not os.environ.get("CHARRNN_MIRROR"):
        for name in NAMED_CORPORA:
            if re.search(rf"\b{name}\b", block.code):
                return f"names the corpus {name}: set CHARRNN_MIRROR to a directory holding it to run this offline"
    for tool in TOOLS:
        if re.search(rf"(^|[|;&(]\s*){tool}\b", block.code, re.M) and not shutil.which(tool):
            return f"needs {tool}, which is not installed"
    return None


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_example(block: Block, pages):
    page = pages(block.page)
    try:
        if reason := skip_reason(block):
            pytest.skip(reason)
        if page.failed:
            pytest.skip(f"an earlier block of the page failed: {page.failed}")
        try:
            page.run(block)
        except BaseException:
            page.failed = block.name
            raise
        index = ALL_BLOCKS.index(block)
        shown = ALL_BLOCKS[index + 1] if index + 1 < len(ALL_BLOCKS) else None
        if shown and shown.page == block.page and "checked" in shown.marks:
            missing = [
                line for line in shown.code.splitlines() if line.strip() and line.strip() not in page.last_output
            ]
            assert not missing, f"{shown.name}: not in what {block.name} printed: {missing}\n{page.last_output[-3000:]}"
    finally:
        if block is [b for b in RUNNABLE if b.page == block.page][-1]:
            page.close()


# --- the pages themselves ---------------------------------------------------------------------


def test_every_block_is_run_or_marked():
    problems = []
    for b in ALL_BLOCKS:
        if b.lang not in RUN | SHOWN:
            problems.append(f"{b.name}: a block tagged {b.lang or 'nothing'!r}: tag it bash, python, text or json")
        elif b.lang in SHOWN and not {"illustrative", "checked"} & set(b.marks):
            problems.append(f"{b.name}: output shown without <!-- illustrative --> or <!-- checked --> before it")
        elif "checked" in b.marks and (i := ALL_BLOCKS.index(b)) and ALL_BLOCKS[i - 1].lang not in RUN:
            problems.append(f"{b.name}: <!-- checked --> needs a block that runs just before it")
    assert not problems, "\n".join(problems)


def test_skips_are_few_and_say_why():
    skipped = [b for b in RUNNABLE if "skip" in b.marks]
    assert all(b.marks["skip"] for b in skipped), [b.name for b in skipped if not b.marks["skip"]]
    assert len(skipped) <= MAX_SKIPS, [f"{b.name}: {b.marks['skip']}" for b in skipped]


def test_readme_is_short_and_paragraphs_are_readable():
    assert (ROOT / "README.md").stat().st_size <= README_MAX_BYTES
    long = [
        f"{page.relative_to(ROOT)}:{line}: {len(text.split())} words"
        for page in PAGES
        for line, text in paragraphs(page)
        if len(text.split()) > PARAGRAPH_MAX_WORDS
    ]
    assert not long, "\n".join(long)


WORDING = re.compile(
    r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|this|that|a later|an earlier|the last)"
    r" session|\bissues? [0-9]+|\bhelper\b|\breview(s|ed|er|ers)?\b|\bthe lead's\b",
    re.IGNORECASE,
)


def test_the_text_speaks_of_charrnn_not_of_the_work_that_made_it():
    """Every tracked text file: the code, the tests, the docs and the benchmarks."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    found = []
    for name in tracked:
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # pictures and other binary files
            continue
        found += [
            f"{name}:{number}: {m.group(0)!r}"
            for number, line in enumerate(text.splitlines(), 1)
            for m in WORDING.finditer(line)
        ]
    assert not found, "\n".join(found)


def test_links_from_the_readme_and_the_tests_the_docs_name_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
        if "://" not in target and not (ROOT / target).exists()
    ]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    tests = {}
    for page in PAGES:
        for file, name in re.findall(r"(test_\w+\.py)::(\w+)", page.read_text(encoding="utf-8")):
            path = ROOT / "tests" / file
            tests.setdefault(path, set()).add(name)
    gone = [
        f"{path.name}::{name}"
        for path, names in tests.items()
        for name in names
        if not path.exists() or not re.search(rf"def {name}\(", path.read_text(encoding="utf-8"))
    ]
    assert not gone, f"the docs name tests that do not exist: {gone}"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_docs_show_the_run_they_build_on_first():
    """A page's examples that use runs/builtin come after the block that trains it, as for a reader."""
    problems = []
    for page in PAGES:
        trained = set()
        for b in blocks(page):
            if b.lang not in RUN or "skip" in b.marks:
                continue
            for run in re.findall(r"\bruns/[\w.-]+", b.code):
                made = re.search(rf"(-o|--out|out=)\s*[\"']?{re.escape(run)}\b", b.code)
                if made:
                    trained.add(run)
                elif run not in trained and "no-such" not in run:
                    problems.append(f"{b.name}: uses {run} before the page trains it")
    assert not problems, "\n".join(problems)


def test_wording_check_catches_what_it_should():
    caught = [f"measured in the {n} {'session'}" for n in ("third", "tenth", "last")] + [f"see {'issue'} 20"]
    assert all(WORDING.search(text) for text in caught)
    assert not WORDING.search("a training session of charrnn") and not WORDING.search("the lead byte")
