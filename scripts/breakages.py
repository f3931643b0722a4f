"""Mutation check: every deliberate breakage listed when the layout changed still turns a
test red (the issue: ``make test`` must keep catching these).

Each entry of :data:`BREAKAGES` is one deliberate bug: an exact text replacement in one
file (the old text must occur there exactly once) and the fewest, fastest tests that
must fail because of it. For each breakage (all, or those named on the command line)
this script

1. adds a temporary detached worktree of ``--rev`` (HEAD) under /tmp
   (``git worktree add --detach``): the committed code, never the working tree;
2. applies the replacement there;
3. links the checkout's ``.venv`` and ``models/`` (``make setup``'s venv; model folders
   ``serve`` builds on demand), where they exist, into the worktree;
4. runs ``.venv/bin/python -m pytest -q -x -p no:cacheprovider <tests>`` in the worktree,
   with ``PYTHONPATH`` = the worktree: the venv installs this project in editable mode,
   pointing at the main checkout, so without it a server or a subprocess could import
   the unbroken code;
5. records the outcome and removes the worktree.

Outcomes: ``red`` (pytest exit 1 with at least one failed test: caught), ``green`` (every
test passed: NOT caught), ``broken harness`` (the old text is not there exactly once, a
named test is gone, collection or import errors, fixture errors only, no tests ran: the
check itself needs fixing), ``timeout``. The table at the end lists breakage, file,
tests, outcome and seconds; the exit status is 1 unless every breakage was red.

``--check-only`` runs no test: per breakage it adds the worktree, applies the
replacement, compiles the patched file (``python -m py_compile``), checks that the
patched module is the one the worktree imports and that every named test exists, and
removes the worktree (seconds in all).

    .venv/bin/python scripts/breakages.py                  # all seven (~5 min on 2 cores)
    .venv/bin/python scripts/breakages.py rope-halves server-window-plus1
    .venv/bin/python scripts/breakages.py --check-only
    .venv/bin/python scripts/breakages.py --list

Run it on an otherwise idle machine: the server breakage starts a real SGLang server.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: ignored paths of the checkout the tests may use, linked into each worktree if present
LINKS = (".venv", "models")


@dataclass(frozen=True)
class Breakage:
    key: str  # command-line name
    title: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest node ids, run in this order with -x
    why: str  # what the tests see


BREAKAGES: tuple[Breakage, ...] = (
    Breakage(
        key="pool-page",
        title="pool split off by a page",
        file="sglang_mixkv/kv_math.py",
        old="           + chunks_in_flight * chunk + page)\n",
        new="           + chunks_in_flight * chunk)\n",
        tests=("tests/unit/test_capacity.py::test_pool_split_window_bounded_and_rest_global",),
        why="local_pool_cap loses its page (281 -> 280 local slots in the hand-computed split; "
            "the global pool, the rest of the budget, moves with it)",
    ),
    Breakage(
        key="no-chunks",
        title="no chunks-in-flight term",
        file="sglang_mixkv/kv_math.py",
        old="           + chunks_in_flight * chunk + page)\n",
        new="           + page)\n",
        tests=("tests/unit/test_capacity.py::test_pool_split_window_bounded_and_rest_global",),
        why="local_pool_cap without the 2 x 64 prefill tokens in flight: 153 local slots, not 281",
    ),
    Breakage(
        key="ref-window-plus1",
        title="reference window W+1",
        file="mixkv_bench/reference.py",
        old="attention_mask(n, self.window if kind == plans.LOCAL else None)",
        new="attention_mask(n, self.window + 1 if kind == plans.LOCAL else None)",
        tests=("tests/inproc/test_oracles.py::test_local_plan_is_transformers_mistral_with_our_window",),
        why="the all-local reference no longer equals transformers' Mistral at sliding_window=W "
            "(its first case, [W-True])",
    ),
    Breakage(
        key="ref-window-minus1",
        title="reference window W-1",
        file="mixkv_bench/reference.py",
        old="attention_mask(n, self.window if kind == plans.LOCAL else None)",
        new="attention_mask(n, self.window - 1 if kind == plans.LOCAL else None)",
        tests=("tests/inproc/test_oracles.py::test_local_plan_is_transformers_mistral_with_our_window",),
        why="as W+1: the reference differs from Mistral at W from the first query past W-1 keys",
    ),
    Breakage(
        key="server-window-plus1",
        title="server window W+1",
        file="sglang_mixkv/model.py",
        old="sliding_window_size=sglang_window(config) if layer.kind == plans.LOCAL else -1,",
        new="sliding_window_size=sglang_window(config) + 1 if layer.kind == plans.LOCAL else -1,",
        tests=("tests/server/test_serving.py::"
               "test_prompt_of_several_windows_and_decode_past_window[GLlLlLlLlglg]",),
        why="the served model's local layers (RadixAttention's window, read by the attention "
            "backend) attend over W+1 keys; the server's prompt logprobs of a 3W+5-token "
            "prompt leave the reference's (the pools keep the model's window). The plan is "
            "test_serving's last, so no next server is pre-started",
    ),
    Breakage(
        key="rope-halves",
        title="swapped RoPE halves",
        file="sglang_mixkv/rope.py",
        old="        x1, x2 = x.chunk(2, dim=-1)\n",
        new="        x2, x1 = x.chunk(2, dim=-1)\n",
        tests=("tests/inproc/test_oracles.py::test_standard_plan_is_transformers_llama",),
        why="the halves enter the rotation swapped: q.k picks up sin(-(m-n)theta) for "
            "sin((m-n)theta), so attention changes (swapping the *output* halves would not: "
            "the same permutation of q and k leaves q.k unchanged). The server shares this "
            "Rope, so only the oracle against transformers' Llama can see it",
    ),
    Breakage(
        key="consumer-layer-id",
        title="a consumer keeping its own layer id",
        file="sglang_mixkv/model.py",
        old="layer_id=layer.source,  # a consumer reads its producer's KV buffer",
        new="layer_id=layer_id,  # a consumer reads its producer's KV buffer",
        tests=("tests/inproc/test_gpu_traps.py::"
               "test_prefill_graph_path_runs_each_consumer_as_its_producer[ma]",),
        why="a consumer's RadixAttention carries its own id: SGLang's graph path "
            "(attention_layers[layer_id]) hands the backend the consumer's object, not its "
            "producer's (in a server: a KV buffer the pool never allocated)",
    ),
)
BY_KEY = {b.key: b for b in BREAKAGES}


# ---- worktrees and patches --------------------------------------------------------------
def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], check=check,
                          capture_output=True, text=True)


@contextmanager
def worktree(repo: Path, rev: str, key: str):
    """A detached worktree of ``rev`` under /tmp with the checkout's LINKS linked in;
    removed (with the links, never their targets) on exit."""
    parent = Path(tempfile.mkdtemp(prefix=f"mixkv-breakage-{key}-", dir="/tmp"))
    wt = parent / "wt"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(wt), rev)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(parent, ignore_errors=True)
        raise RuntimeError(f"git worktree add failed: {e.stderr.strip()}") from e
    links = []
    try:
        for name in LINKS:
            target, link = repo / name, wt / name
            if target.exists() and not os.path.lexists(link):
                link.symlink_to(target.resolve(), target_is_directory=True)
                links.append(link)
        yield wt
    finally:
        for link in links:  # unlink first: nothing below may walk into .venv or models
            if link.is_symlink():
                link.unlink()
        removed = git(repo, "worktree", "remove", "--force", str(wt), check=False)
        shutil.rmtree(parent, ignore_errors=True)
        if removed.returncode != 0:
            git(repo, "worktree", "prune", check=False)


class HarnessError(Exception):
    """The check cannot run as written (not a verdict on the code)."""


def apply(b: Breakage, wt: Path) -> Path:
    """Replace ``b.old`` by ``b.new`` in the worktree's copy of ``b.file``."""
    path = wt / b.file
    if not path.is_file():
        raise HarnessError(f"{b.file} does not exist")
    if b.old == b.new:
        raise HarnessError("old and new text are the same")
    text = path.read_text()
    n = text.count(b.old)
    if n != 1:
        raise HarnessError(f"{b.file}: the old text occurs {n} times, not once: {b.old.strip()!r}")
    path.write_text(text.replace(b.old, b.new, 1))
    return path


def env_for(wt: Path) -> dict[str, str]:
    """The environment of every command in the worktree: its packages first on the path
    (before the venv's editable finder, which points at the main checkout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(wt), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_tests_exist(b: Breakage, wt: Path) -> None:
    """Every named test file exists in the worktree and defines the named function."""
    for node in b.tests:
        file, _, rest = node.partition("::")
        path = wt / file
        if not path.is_file():
            raise HarnessError(f"test file {file} does not exist")
        if not rest:
            continue
        func = rest.split("::")[-1].split("[")[0]
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if func not in names:
            raise HarnessError(f"{file} has no test {func}")


def check_imported_from_worktree(b: Breakage, wt: Path, python: str) -> None:
    """The patched file is what ``import`` finds in the worktree (find_spec: only the
    parent packages are imported, none of the module's own imports)."""
    if not b.file.endswith(".py"):
        return
    parts = list(Path(b.file).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    module = ".".join(parts)
    code = "import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).origin)"
    r = subprocess.run([python, "-c", code, module], cwd=wt, env=env_for(wt),
                       capture_output=True, text=True, timeout=120)
    origin = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or Path(origin).resolve() != (wt / b.file).resolve():
        raise HarnessError(f"{module} is imported from {origin or '?'}, not the worktree "
                           f"{r.stderr.strip()[-300:]}")


def compile_file(path: Path, wt: Path, python: str) -> None:
    r = subprocess.run([python, "-m", "py_compile", str(path)], cwd=wt, env=env_for(wt),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise HarnessError(f"the patched {path.relative_to(wt)} does not compile: "
                           f"{(r.stderr or r.stdout).strip()[-500:]}")


# ---- running the tests ------------------------------------------------------------------
@dataclass
class Outcome:
    result: str  # red, green, broken harness, timeout; check-only: ok, broken harness
    seconds: float
    detail: str = ""
    output: str = ""


def classify(rc: int, output: str) -> tuple[str, str]:
    """(result, detail) of a pytest run: red only with at least one *failed* test."""
    summary = next((line.strip("= ").strip() for line in reversed(output.splitlines())
                    if re.search(r"\b(passed|failed|errors?|skipped|no tests ran|xfailed)\b", line)),
                   "")
    failed = re.search(r"(\d+) failed", summary)
    errors = re.search(r"(\d+) errors?\b", summary)
    if rc == 0:
        return "green", summary
    if rc == 1 and failed and int(failed.group(1)) > 0:
        return "red", summary
    why = {2: "interrupted (collection or import errors)", 3: "pytest internal error",
           4: "usage error (a node id not found?)", 5: "no tests collected"}.get(rc)
    if rc == 1 and errors:
        why = "errors only (fixture/setup), no failed test"
    return "broken harness", f"exit {rc}: {why or 'unexpected'}; {summary}"


def run_tests(b: Breakage, wt: Path, python: str, timeout: float) -> Outcome:
    cmd = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *b.tests]
    start = time.monotonic()
    # Its own session (process group): on a timeout SIGINT lets pytest tear its fixtures
    # down (test servers run in groups of their own, stopped by those fixtures).
    proc = subprocess.Popen(cmd, cwd=wt, env=env_for(wt), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return Outcome("timeout", time.monotonic() - start, f"over {timeout:.0f} s", out or "")
    result, detail = classify(proc.returncode, out or "")
    return Outcome(result, time.monotonic() - start, detail, out or "")


def one(b: Breakage, args) -> Outcome:
    start = time.monotonic()
    try:
        with worktree(args.repo, args.rev, b.key) as wt:
            path = apply(b, wt)
            check_tests_exist(b, wt)
            if args.check_only:
                compile_file(path, wt, args.python)
                check_imported_from_worktree(b, wt, args.python)
                return Outcome("ok", time.monotonic() - start, "applies, compiles, imported")
            return run_tests(b, wt, args.python, args.timeout)
    except (HarnessError, RuntimeError, subprocess.TimeoutExpired) as e:
        return Outcome("broken harness", time.monotonic() - start, str(e))


def markdown(rows: list[dict]) -> str:
    """A GitHub markdown table of ``rows`` (dicts with the same keys)."""
    cols = list(rows[0])
    cells = [[str(r[c]).replace("|", "\\|") for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, width)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in width) + "|",
                      *(line(row) for row in cells)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Every deliberate breakage listed when the layout changed still turns a "
                    "test red: apply each in a temporary worktree, run its tests, expect red.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="breakages:\n" + "\n".join(f"  {b.key:20} {b.title}" for b in BREAKAGES))
    ap.add_argument("breakages", nargs="*", metavar="BREAKAGE",
                    help="keys of the breakages to check (default: all)")
    ap.add_argument("--check-only", action="store_true",
                    help="no tests: each replacement applies, compiles and is what the "
                         "worktree imports; each named test exists")
    ap.add_argument("--list", action="store_true", help="print the breakages and exit")
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds per breakage's pytest run (default 600)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout (default: this one)")
    ap.add_argument("--rev", default="HEAD", help="the commit to break (default HEAD)")
    ap.add_argument("--python", default=None, help="interpreter (default REPO/.venv/bin/python)")
    ap.add_argument("--log-dir", type=Path, default=None,
                    help="write each pytest run's whole output to LOG_DIR/<key>.log")
    args = ap.parse_args(argv)
    args.repo = args.repo.resolve()
    args.python = args.python or str(args.repo / ".venv" / "bin" / "python")

    unknown = [k for k in args.breakages if k not in BY_KEY]
    if unknown:
        ap.error(f"unknown breakage(s) {', '.join(unknown)}; known: {', '.join(BY_KEY)}")
    chosen = [BY_KEY[k] for k in args.breakages] or list(BREAKAGES)
    if args.list:
        for b in chosen:
            print(f"{b.key}: {b.title}\n  {b.file}: {b.old.strip()!r} -> {b.new.strip()!r}\n"
                  f"  tests: {' '.join(b.tests)}\n  {b.why}")
        return 0
    if not Path(args.python).exists():
        ap.error(f"no interpreter at {args.python} (make setup)")
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)

    rows, caught = [], True
    for b in chosen:
        print(f"[{b.key}] {b.title}: {b.file}", file=sys.stderr, flush=True)
        o = one(b, args)
        print(f"[{b.key}] {o.result} in {o.seconds:.0f} s  {o.detail}", file=sys.stderr, flush=True)
        if args.log_dir and o.output:
            (args.log_dir / f"{b.key}.log").write_text(o.output)
        if o.result not in ("red", "ok"):
            caught = False
            if o.output:  # enough to see why, without the log dir
                print("\n".join(o.output.splitlines()[-40:]), file=sys.stderr, flush=True)
        rows.append({"breakage": b.title, "file": b.file, "tests": " ".join(b.tests),
                     "result": o.result, "seconds": f"{o.seconds:.1f}", "detail": o.detail})
    print(markdown(rows))
    if not caught:
        bad = [r["breakage"] for r in rows if r["result"] not in ("red", "ok")]
        print(f"\n{len(bad)} of {len(rows)} not {'ok' if args.check_only else 'red'}: "
              f"{', '.join(bad)}", file=sys.stderr)
    return 0 if caught else 1


if __name__ == "__main__":
    sys.exit(main())
