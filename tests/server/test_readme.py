"""Every command in the README's ```bash blocks runs here, or is skipped by a rule that
pytest reports (``-rs``): the README cannot drift from what works.

How a block runs (the rules, in the order they apply):

- ``export`` lines set the environment of the block's later commands;
- a command matching a :data:`SKIP` rule is skipped with that rule's reason;
- ``[--flag ...]`` groups are the README's notation for optional arguments: dropped; so is
  a trailing ``&`` (a command meant for the background);
- the block's server is its last server command (``sglang_mixkv.serve``,
  ``scripts/serve.sh``, ``sglang_mixkv.router``) that client commands (``curl``, ``harness``) follow; it starts in
  the background on a free port instead of 30000, the clients talk to that port, and it
  stops after the block. Any other server command runs with ``--dry-run`` (it must build
  its SGLang command line and exit 0);
- every other command must exit 0; ``curl`` runs with a ``.curlrc`` that makes an HTTP
  error a failure (``--fail-with-body``), and ``--out P`` writes under a temporary folder,
  as do model folders (``MIXKV_MODELS``).

A block whose server was started with an API key (``MIXKV_API_KEY``) is also checked to
refuse a request without the key.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness.server import free_port, kill_group, start
from tests.helpers.serving import REPO

README = REPO / "README.md"

#: (pattern on the command without comments, why it cannot run on this CPU box)
SKIP = [
    (r"^docker\b", "no Docker engine on a CPU box; tests/unit/test_dockerfile.py parse-checks "
                   "the Dockerfile and resolves its default command"),
    (r"^make (bench|capacity)\b", "the full bench / capacity run takes tens of minutes; "
                                  "tests/server/test_bench.py runs it scaled down"),
    (r"^make test\b", "is this test suite"),
    (r"(--size|--model) paper\b.*sglang_mixkv\.serve|sglang_mixkv\.serve.*(--size|--model) paper\b",
     "the paper size (2B parameters) is served on a GPU only"),
    (r"\bnvidia-smi\b|--gpus\b", "needs a GPU"),
    (r"\bmixkv_bench\.train\b", "trains for up to 20 minutes; tests/server/test_train.py "
     "trains a few dozen steps and serves the folder"),
    (r"sglang_mixkv\.serve\b.*models/recall-", "needs a trained folder (the command above)"),
    (r"^make quality\b", "serves every trained checkpoint for minutes; tests/server/test_train.py "
     "runs its path on a folder trained a few dozen steps"),
    (r"scripts/quality_models(_mixed|_long)?\.sh\b", "trains every checkpoint (hours on 2 cores)"),
    (r"scripts/gpu/wheels\.sh\b", "downloads and trims SGLang's wheels for a GPU host (55 MiB); "
     "tests/inproc/test_gpu_plan.py runs scripts/gpu_check.sh end to end from a wheel folder"),
    (r"^mv (results|/tmp/mixkv-results)\b", "moves the checkout's committed reports aside for "
     "a lent GPU's call"),
    (r"^hf download\b", "downloads a gated checkpoint (the Gemma license) from Hugging Face"),
    (r"sglang_mixkv\.(gemma|serve)\b.*gemma-[34]-", "needs a downloaded Gemma checkpoint; "
     "tests/server/test_gemma.py serves tiny ones written by transformers"),
]
SERVER = re.compile(r"sglang_mixkv\.(serve|router)\b|scripts/serve\.sh\b")
CLIENT = re.compile(r"^(curl|\S*python\S* -m harness)\b")
OPTIONAL = re.compile(r"\s\[--[^\]]*\]|\s+&\s*(?=#|$)")


@dataclass
class Command:
    block: int
    index: int
    text: str  # as in the README, continuation lines joined
    exports: list[str]  # the block's export lines before it
    role: str  # "export", "server", "dry-run", "client", "run"
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"b{self.block}-{self.index}:{self.text[:60]}"


def _bare(text: str) -> str:
    """The command without its comment and optional groups."""
    words = shlex.split(OPTIONAL.sub("", text), comments=True)
    return shlex.join(words)


def readme_commands(path: Path = README) -> list[Command]:
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", path.read_text(), re.M | re.S)
    out: list[Command] = []
    for b, body in enumerate(blocks):
        lines = re.sub(r"\\\n\s*", " ", body).splitlines()
        texts = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        cmds: list[Command] = []
        exports: list[str] = []
        for i, text in enumerate(texts):
            bare = _bare(text)
            skip = next((why for pat, why in SKIP if re.search(pat, bare)), None)
            if text.startswith("export "):
                role = "export"
            elif SERVER.search(bare):
                role = "dry-run"
            elif CLIENT.search(bare):
                role = "client"
            else:
                role = "run"
            cmds.append(Command(b, i, text, list(exports), role, skip))
            if role == "export":
                exports.append(text)
        # the block's server: the last server command that clients follow
        last_client = max((c.index for c in cmds if c.role == "client"), default=-1)
        servers = [c for c in cmds if c.role == "dry-run" and c.index < last_client and not c.skip]
        if servers:
            servers[-1].role = "server"
        out += cmds
    return out


COMMANDS = readme_commands()


def test_readme_has_the_commands_the_issue_names():
    roles = {c.role for c in COMMANDS}
    assert {"server", "client", "run", "dry-run"} <= roles, roles
    text = " ".join(c.text for c in COMMANDS)
    for needed in ("sglang_mixkv.serve", "curl", "sglang_mixkv.capacity", "sglang_mixkv.sizes",
                   "-m harness", "Content-Type: application/json"):
        assert needed in text, needed


class _State:
    """The block being run: its exported variables and at most one server."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        (tmp / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\nmax-time = 300\n")
        self.base_env = {**os.environ, "CURL_HOME": str(tmp), "MIXKV_MODELS": str(tmp / "models")}
        self.block: int | None = None
        self.exports: dict[str, str] = {}  # export line -> value, evaluated once per block
        self.values: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def enter(self, block: int) -> None:
        if self.block != block:
            self.stop()
            self.block, self.exports, self.values = block, {}, {}

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
        self.proc = self.port = None

    @property
    def env(self) -> dict[str, str]:
        return {**self.base_env, **self.values}

    def export(self, line: str) -> None:
        """Evaluate ``export NAME=VALUE`` once (``$(...)`` runs once per block)."""
        if line in self.exports:
            return
        name = re.match(r"export\s+(\w+)=", line).group(1)
        r = subprocess.run(["bash", "-c", f'set -euo pipefail\n{line}\nprintf %s "${name}"'],
                           cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{line}: {r.stderr}"
        self.exports[line] = self.values[name] = r.stdout

    def redirect(self, text: str) -> str:
        """30000 -> the block server's port; ``--out P`` -> under the temporary folder."""
        if self.port is not None:
            text = re.sub(r"\b30000\b", str(self.port), text)
        return re.sub(r"--out\s+(\S+)", lambda m: f"--out {self.tmp / 'out' / m.group(1)}", text)

    def run(self, text: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", "set -euo pipefail\n" + text], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def start_server(self, cmd: Command) -> None:
        self.port = free_port()
        text = self.redirect(OPTIONAL.sub("", cmd.text))
        self.proc = start(["bash", "-c", "exec " + text], f"http://127.0.0.1:{self.port}",
                          self.tmp / f"server-b{cmd.block}.log", timeout=300,
                          env={**self.env, "PORT": str(self.port)}, cwd=REPO).proc


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    st = _State(tmp_path_factory.mktemp("readme"))
    yield st
    st.stop()


def _param(c: Command):
    marks = [pytest.mark.server] if c.role in ("server", "client") else []
    return pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_readme_command(cmd: Command, state):
    state.enter(cmd.block)
    if cmd.skip:
        pytest.skip(f"rule: {cmd.skip}")
    for line in cmd.exports:
        state.export(line)
    if cmd.role == "export":
        state.export(cmd.text)
        return
    text = OPTIONAL.sub("", cmd.text)
    if cmd.role in ("server", "client") and state.proc is None:
        state.start_server(next(c for c in COMMANDS if c.block == cmd.block and c.role == "server"))
    if cmd.role == "server":
        key = state.values.get("MIXKV_API_KEY")
        if key:  # a server with a key refuses a request without it, serves one with it
            url = f"http://127.0.0.1:{state.port}/v1/models"
            assert requests.get(url, timeout=30).status_code == 401
            assert requests.get(url, headers={"Authorization": "Bearer wrong"},
                                timeout=30).status_code == 401
            ok = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert ok.status_code == 200, ok.text
        return
    if cmd.role == "dry-run":
        if "scripts/serve.sh" in text and subprocess.run(
                ["make", "-q", "setup"], cwd=REPO, capture_output=True).returncode != 0:
            pytest.skip("rule: `make setup` is out of date here (it is fresh under `make test`), "
                        "and scripts/serve.sh would re-install .venv first")
        text = re.sub(r"\s+#.*$", "", text) + " --dry-run"
    r = state.run(state.redirect(text))
    assert r.returncode == 0, \
        f"{cmd.text}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
