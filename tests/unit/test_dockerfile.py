"""No Docker engine here: parse the Dockerfile and check what it promises."""

import subprocess
import sys
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sglang_mixkv", "mixkv_bench", "harness")  # the Dockerfile's COPY lines


def parsed():
    return {c.cmd.upper(): c for c in dockerfile.parse_file(str(REPO / "Dockerfile"))}, \
        dockerfile.parse_file(str(REPO / "Dockerfile"))


def test_base_image_is_sglang_0_5_17():
    _, cmds = parsed()
    arg = next(c for c in cmds if c.cmd.upper() == "ARG")
    assert arg.value[0].startswith("SGLANG_IMAGE=lmsysorg/sglang:v0.5.17")
    assert next(c for c in cmds if c.cmd.upper() == "FROM").value[0] == "${SGLANG_IMAGE}"


def test_copies_only_what_exists_and_the_context_allows():
    _, cmds = parsed()
    allowed = {line.strip().lstrip("!").rstrip("/") for line in
               (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for c in cmds:
        if c.cmd.upper() == "COPY":
            for src in c.value[:-1]:
                assert (REPO / src).exists(), src
                assert src in allowed, f"{src} is excluded by .dockerignore"


def test_entrypoint_serves_on_all_interfaces_with_healthcheck():
    by, _ = parsed()
    ep = list(by["ENTRYPOINT"].value)
    assert ep[:3] == ["python3", "-m", "sglang_mixkv.serve"]
    assert ep[ep.index("--host") + 1] == "0.0.0.0" and ep[ep.index("--port") + 1] == "30000"
    assert "30000" in by["EXPOSE"].value
    assert "/health" in " ".join(by["HEALTHCHECK"].value)


def test_default_command_resolves(tmp_path):
    """`docker run IMAGE --plan ma-offset` = serve's CLI with the image's env."""
    by, _ = parsed()
    env = dict(zip(by["ENV"].value[0::2], by["ENV"].value[1::2]))
    args = list(by["ENTRYPOINT"].value[3:]) + list(by["CMD"].value) + ["--dry-run"]
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", *args], capture_output=True,
                       text=True, env={**env, "MIXKV_MODELS": str(tmp_path), "PATH": "/usr/bin:/bin",
                                       "MIXKV_API_KEY": "k" * 32},  # 0.0.0.0 needs a key
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "paper-ma-offset-dummy" in r.stderr and "--load-format dummy" in r.stderr


def test_wheel_ships_every_module(tmp_path):
    """The image installs the package non-editable (`pip install .`): every module of
    ours must be in the wheel (a subpackage missing from pyproject's list would only
    fail inside the image)."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # what the Dockerfile copies, without a stale build/ folder
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("sglang_mixkv-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    ours = {str(p.relative_to(REPO)) for d in PACKAGES
            for p in (REPO / d).rglob("*.py")}
    assert ours <= shipped, sorted(ours - shipped)
