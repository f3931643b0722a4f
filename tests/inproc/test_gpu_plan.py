"""What ``serve`` decides for a GPU, checked on a box without one.

- the pools leave SGLang what it allocates after them: the ``tiny`` model died at
  start-up on the project's H200 (SGLang's eager registry asked 2.02 GiB with 1.71 GiB
  free), because its 512-byte tokens filled the card with 270M slots whose per-slot
  buffers outgrew SGLang's fixed reserve;
- the triton decode split cap follows the GPU's SMs and the model's context;
- ``serve --dry-run --gpu H200`` prints the command and the pools for that GPU.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_mixkv import device, serve
from sglang_mixkv.sglang_seams import launch
from sglang_mixkv.sglang_seams.mixkv import pools
from tests.helpers.serving import REPO

H200 = device.known_gpu("H200")


def served_on(tmp_path, monkeypatch, *argv: str):
    """``serve``'s command for ``argv`` planned for an H200: (flags, env, model folder)."""
    monkeypatch.setenv("MIXKV_MODELS", str(tmp_path))
    args, rest = serve.parser().parse_known_args([*argv, "--gpu", "H200", "--dry-run"])
    cmd, env, model_dir = serve.build_command(args, rest)
    return cmd[cmd.index("--model-path") + 2:], env, model_dir


def test_tiny_pools_leave_sglang_its_reserve_on_an_h200(tmp_path, monkeypatch):
    flags, env, model_dir = served_on(tmp_path, monkeypatch, "--plan", "ma-offset", "--size", "tiny")
    ours = pools.plan_pools(model_dir, flags, H200, weight_bytes=0, env=env)
    # Pools plus what is allocated after them fit what SGLang offered: its reserve
    # (activations, graphs) is left whole.
    assert ours.kv_bytes + ours.after_pool_bytes <= ours.available_bytes
    assert ours.after_pool_bytes > 10 * 2**30  # ~16 GiB: the reason a KV-only split fails

    # The old formula put back: every offered byte to the KV pools.
    monkeypatch.setattr(pools, "slot_overhead", lambda: pools.kv_math.SlotOverhead())
    monkeypatch.setattr(pools, "graph_buffer_bytes", lambda sa, mc: 0)
    old = pools.plan_pools(model_dir, flags, H200, weight_bytes=0, env=env)
    monkeypatch.undo()
    # Its first token-axis buffer after the pools, int64 input_ids with one entry per
    # slot, is the 2.02 GiB the H200 run could not allocate (to the CUDA context's
    # ~0.5 GiB, which this plan counts as free).
    assert 8 * old.global_tokens / 2**30 == pytest.approx(2.02, abs=0.02)
    after_old = pools.slot_overhead().bytes(old.global_tokens, old.local_tokens)
    assert old.kv_bytes + after_old > old.available_bytes + old.reserve_bytes


def test_paper_pools_barely_change(tmp_path, monkeypatch):
    """A 48 KiB token (paper size, ``standard``) pays well under 1% for its slot."""
    flags, env, model_dir = served_on(tmp_path, monkeypatch, "--plan", "standard", "--size", "paper")
    plan = pools.plan_pools(model_dir, flags, H200, weight_bytes=0, env=env)
    assert plan.kv_bytes + plan.after_pool_bytes <= plan.available_bytes
    per_slot = pools.slot_overhead().bytes(plan.global_tokens, plan.local_tokens)
    assert per_slot < 0.005 * plan.kv_bytes
    # No local layers: the local pool SGLang's hybrid allocator still needs holds index
    # slots only, and the plan says so rather than offer them as tokens of KV.
    assert "index slots, no KV" in plan.describe()


@pytest.mark.parametrize("sms, context, splits", [
    (132, 32768, 256),  # paper size on an H100/H200: the SM count rounded up
    (132, 4096, 128),  # tiny: no more splits than blocks of 32 keys
    (132, 100, 8),  # never below SGLang's default
    (16, 32768, 16),
])
def test_decode_split_cap_follows_sms_and_context(sms, context, splits):
    assert launch.decode_kv_splits(sms, context) == splits


def test_split_flag_only_for_triton_decode_and_never_over_the_user():
    base = ["--attention-backend", "triton"]
    assert launch.flag_value(launch.triton_split_flags(base, 132, 32768),
                             "--triton-attention-num-kv-splits") == "256"
    mine = base + ["--triton-attention-num-kv-splits", "8"]
    assert launch.triton_split_flags(mine, 132, 32768) == mine
    fa3 = ["--attention-backend", "triton", "--decode-attention-backend", "fa3"]
    assert launch.triton_split_flags(fa3, 132, 32768) == fa3
    short = base + ["--context-length", "1024"]
    assert launch.flag_value(launch.triton_split_flags(short, 132, 32768),
                             "--triton-attention-num-kv-splits") == "32"


def test_dry_run_plans_an_h200_without_one(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "sglang_mixkv.serve", "--plan", "ma", "--size", "paper",
         "--adakv-budget", "2048", "--dry-run", "--gpu", "H200"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**__import__("os").environ, "MIXKV_MODELS": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    command = next(line for line in r.stderr.splitlines() if "sglang.launch_server" in line)
    assert "--attention-backend triton" in command
    assert "--triton-attention-num-kv-splits 256" in command
    assert "--disable-cuda-graph" not in command  # Ada-KV decodes in CUDA graphs
    assert "--disable-prefill-cuda-graph" in command
    assert "pools: NVIDIA H200" in r.stderr and "global" in r.stderr
    bad = subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", "--gpu", "H200"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "--dry-run" in bad.stderr


def test_gpu_check_dry_run_prints_every_command(tmp_path):
    """``make gpu-check DRY_RUN=1``: every step's command, each server through
    ``serve --dry-run --gpu H200`` (so the GPU flags are the ones a GPU host gets)."""
    r = subprocess.run(["make", "gpu-check", "DRY_RUN=1", f"GPU_OUT={tmp_path / 'gc'}"],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**__import__("os").environ, "MIXKV_MODELS": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for step in ("correctness ma-offset", "correctness ma", "paper standard", "paper ma",
                 "paper ma@adakv=2048", "peer stock-llama", "metadata"):
        assert f"gpu-check: {step}: ok" in out, step
    assert out.count("--triton-attention-num-kv-splits") >= 5  # every one of our servers
    assert out.count("mixkv_adakv") == 2  # the two Ada-KV servers (tiny ma, paper ma)
    assert "--disable-cuda-graph " not in out  # decode graphs everywhere, Ada-KV included
    assert "paper-llama --load-format dummy" in out  # the stock peer
    assert "harness run" in out and "adakv_decode_metadata.py" in out


def test_gpu_check_bounds_the_gpu_it_runs_on_and_keeps_to_its_deadline(tmp_path, monkeypatch):
    """A lent GPU may be an H100 or an H200: the roofline and ``serve``'s plan follow the
    GPU named (or found); ``--deadline-s`` skips what no longer fits, names it, exits 2."""
    from mixkv_bench import gpu_check

    assert gpu_check.which_gpu("h100", probe=False) == "H100"
    assert gpu_check.which_gpu(None, probe=False) == "H200"
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu_check.which_gpu("T4", probe=False)
    monkeypatch.setenv("MIXKV_MODELS", str(tmp_path))
    check = gpu_check.Check(tmp_path / "gc", "H100", dry=True)
    assert gpu_check.bound_of(check, "standard")["step_ms_1"] > gpu_check.bound_of(
        gpu_check.Check(tmp_path / "gc2", "H200", dry=True), "standard")["step_ms_1"]
    assert "pools: NVIDIA H100 80GB HBM3" in gpu_check.correctness(check, "ma-offset", [])["command"]
    # no time left for the peer: skipped before its server starts, and the report says how
    # to run it
    rc = gpu_check.main(["--rehearse", "--deadline-s", "1", "--part", "peer", "--out",
                         str(tmp_path / "late")])
    report = (tmp_path / "late" / "report.md").read_text()
    assert rc == 2 and "PART=peer" in report and "peer stock-llama: " in report


def test_gpu_check_script_end_to_end_on_a_cpu(tmp_path):
    """``scripts/gpu_check.sh`` as a GPU host runs it (install from a wheel folder with no
    index, the plugin's entry point, the check under a deadline, the packed files), at the
    rehearsal's scale: the one path a lent GPU's few minutes must not be the first to run."""
    import os

    wheels = tmp_path / "whl"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, timeout=300, capture_output=True)
    env = {**os.environ, "REHEARSE": "1", "PYTHON": sys.executable, "WHEELS": str(wheels),
           "OUT": str(tmp_path / "gc"), "PACK_TO": str(tmp_path / "back"), "DEADLINE": "109",
           "PART": "metadata,peer", "SITE": str(tmp_path / "site"), "MIXKV_COMMIT": "c0ffee",
           "MIXKV_MODELS": str(tmp_path / "models")}
    r = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, text=True,
                       capture_output=True, timeout=600)
    out = r.stdout + r.stderr
    # 109 s less 20 to pack leaves under the peer's 90 s minimum whatever the install took,
    # and the metadata's 30 s unless install and plugin load took 59 s
    assert r.returncode == 2, out[-3000:]  # the metadata ran; the peer did not fit
    assert "plugin loaded" in out and "gpu-check: metadata: ok" in out, out[-3000:]
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [
        "check.json", "logs.tar.gz", "report.md"]
    report = (tmp_path / "back" / "report.md").read_text()
    assert "`c0ffee`" in report and "rehearsed" in report and "PART=peer" in report
