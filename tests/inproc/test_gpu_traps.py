"""The traps between a user and an H100, each decided and checked on a CPU box.

- a GPU that ``nvidia-smi`` sees but torch cannot use (driver too old for torch 2.11's
  CUDA 13 build): ``setup.sh`` and ``serve`` refuse with the reason, never fall back
  to the CPU silently (a fake ``nvidia-smi`` on PATH stands in for the host);
- float32 on CUDA: our norm and activation never reach sgl_kernel's half-only ops;
- flashinfer with local layers: prefill is kept on the windowed paged path;
- CUDA graphs: a consumer's attention call runs its producer's RadixAttention object,
  so the two must agree on everything but the weights;
- tensor parallelism on a CPU: each rank gets its own cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglang_mixkv import device
from sglang_mixkv.plan import PRESET_NAMES, resolve
from sglang_mixkv.sglang_seams.launch import cpu_paged_env, cpu_tp_env, flashinfer_env
from sglang_mixkv.model_folder import SIZES, write_model_folder
from tests.helpers.serving import REPO


def fake_nvidia_smi(bin_dir: Path, driver: str | None) -> Path:
    """An ``nvidia-smi`` that lists one H100 with the given driver version; ``None``: one
    that finds no GPU (as on a host without one, so a real one on PATH is shadowed)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'  # setup.sh asks for the driver alone, device.py for all three
        f'  --query-gpu=driver_version) echo "{driver}";;\n'
        f'  *) echo "NVIDIA H100 80GB HBM3, 81559 MiB, {driver}";;\n'
        "esac\n"
        if driver else "#!/bin/sh\necho 'No devices were found'\nexit 6\n"
    )
    exe.chmod(0o755)
    return bin_dir


def host_env(bin_dir: Path | None) -> dict:
    """This process's environment as a GPU host with that nvidia-smi would have it
    (conftest pins the tests to the CPU with MIXKV_DEVICE; a user's host has none)."""
    env = {k: v for k, v in os.environ.items() if k != device.DEVICE_ENV}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


# ---- no silent CPU fallback -------------------------------------------------------------
@pytest.mark.parametrize("driver, reason", [
    ("550.54.15", "driver 550.54.15 is older than 580"),
    ("580.65.06", "check that the torch build matches CUDA driver 580.65.06"),
])
def test_device_refuses_a_gpu_torch_cannot_use(tmp_path, monkeypatch, driver, reason):
    assert not torch.cuda.is_available()  # CPU box, or a GPU host with GPUs hidden (conftest)
    monkeypatch.setenv("PATH", host_env(fake_nvidia_smi(tmp_path / "bin", driver))["PATH"])
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    with pytest.raises(device.DeviceError, match=reason) as e:
        device.resolve()
    assert "MIXKV_DEVICE=cpu" in str(e.value) and "H100" in str(e.value)
    monkeypatch.setenv(device.DEVICE_ENV, "cpu")
    assert device.resolve() == "cpu"


def test_device_without_any_gpu_is_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', None)}:/usr/bin:/bin")
    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    assert device.nvidia_smi() is None and device.resolve() == "cpu"
    monkeypatch.setenv(device.DEVICE_ENV, "tpu")
    with pytest.raises(device.DeviceError, match="use cpu or gpu"):
        device.resolve()


def test_serve_refuses_to_fall_back_to_cpu(tmp_path):
    env = host_env(fake_nvidia_smi(tmp_path / "bin", "535.104.05"))
    env["MIXKV_MODELS"] = str(tmp_path / "models")
    cmd = [sys.executable, "-m", "sglang_mixkv.serve", "--plan", "ma", "--dry-run"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "driver 535.104.05 is older than 580" in r.stderr
    r = subprocess.run(cmd, cwd=REPO, env={**env, device.DEVICE_ENV: "cpu"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--device cpu" in r.stderr, r.stderr


@pytest.mark.parametrize("driver, code, says", [
    ("550.54.15", 1, "error: NVIDIA driver 550.54.15"),
    ("580.65.06", 0, "setup: NVIDIA driver 580.65.06"),
    (None, 0, "setup: checks passed (cpu)"),
])
def test_setup_checks_the_driver_first(tmp_path, driver, code, says):
    env = host_env(fake_nvidia_smi(tmp_path / "bin", driver))
    env.update(MIXKV_SETUP_CHECK_ONLY="1", VENV=str(tmp_path / "venv"))
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stdout + r.stderr
    assert not (tmp_path / "venv").exists()  # refused or checked before installing anything


# ---- float32 on CUDA ---------------------------------------------------------------------
def test_float32_norm_and_act_never_reach_sgl_kernel(single_rank):
    """On CUDA, SGLang calls ``forward_cuda``; ours must answer float32 in plain torch
    (on this CPU box the sgl_kernel path would fail: it is not even installed)."""
    from sglang_mixkv.model import Act, Norm

    g = torch.Generator().manual_seed(0)
    norm = Norm(64, eps=1e-6)
    x, res = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    torch.testing.assert_close(norm.forward_cuda(x.clone()), norm.forward_native(x.clone()))
    got = norm.forward_cuda(x.clone(), res.clone())
    want = norm.forward_native(x.clone(), res.clone())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    act = Act()
    y = torch.randn(5, 128, generator=g)
    torch.testing.assert_close(act.forward_cuda(y), act.forward_native(y))


# ---- flashinfer ------------------------------------------------------------------------
def test_flashinfer_keeps_local_layers_on_the_windowed_paged_path(monkeypatch):
    monkeypatch.delenv("SGLANG_FLASHINFER_USE_PAGED", raising=False)
    ma, cla2 = resolve("ma", 12), resolve("cla2", 12)
    fi = ["--attention-backend", "flashinfer"]
    assert flashinfer_env(ma, fi) == {"SGLANG_FLASHINFER_USE_PAGED": "1"}
    assert flashinfer_env(ma, ["--prefill-attention-backend=flashinfer"]) == \
        {"SGLANG_FLASHINFER_USE_PAGED": "1"}
    assert flashinfer_env(cla2, fi) == {}  # no window, the ragged path is right
    assert flashinfer_env(ma, ["--attention-backend", "triton"]) == {}
    monkeypatch.setenv("SGLANG_FLASHINFER_USE_PAGED", "false")
    with pytest.raises(ValueError, match="ragged prefill ignores the window"):
        flashinfer_env(ma, fi)


def test_serve_passes_the_paged_switch(tmp_path):
    env = {**os.environ, "MIXKV_MODELS": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "sglang_mixkv.serve", "--plan", "ma", "--dry-run",
                        "--attention-backend", "flashinfer"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SGLANG_FLASHINFER_USE_PAGED=1" in r.stderr, r.stderr


# ---- tensor parallelism on a CPU ---------------------------------------------------------
def test_cpu_tp_binds_each_rank_to_its_cores(monkeypatch):
    monkeypatch.delenv("SGLANG_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert cpu_tp_env(["--tp-size", "2"]) == {"SGLANG_CPU_OMP_THREADS_BIND": "0-1|2-3"}
    assert cpu_tp_env(["--tp", "4"]) == {"SGLANG_CPU_OMP_THREADS_BIND": "0|1|2|3"}
    assert cpu_tp_env([]) == {}
    with pytest.raises(ValueError, match="needs at least 8 cores"):
        cpu_tp_env(["--tp-size=8"])


def test_cpu_pages_run_the_paged_allocator_in_tritons_interpreter(monkeypatch):
    """SGLang's paged allocator is Triton kernels: on a CPU they need the interpreter
    (tests/server/test_adakv.py serves 16-token pages this way against the reference)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cpu_paged_env(["--page-size", "16"]) == {"TRITON_INTERPRET": "1"}
    assert cpu_paged_env(["--page-size=1"]) == cpu_paged_env([]) == {}
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the user's own setting stands
    assert cpu_paged_env(["--page-size", "16"]) == {}


# ---- CUDA graphs: a consumer runs its producer's RadixAttention ----------------------------
@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    """SGLang's parallel groups for one CPU rank (gloo), so our model can be built here."""
    from sglang.srt.distributed import parallel_state as ps
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    model_dir = write_model_folder(tmp_path_factory.mktemp("m") / "ma", SIZES["tiny"], "ma")
    publish(ServerArgs(model_path=str(model_dir), device="cpu"), role="test")
    if not torch.distributed.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ps.init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                        distributed_init_method=f"tcp://127.0.0.1:{port}")
        ps.initialize_model_parallel(1, backend="gloo")


class RecordingBackend:
    """An attention backend that records which RadixAttention object each call got and
    answers with a function of the query and of every field a kernel reads from it."""

    FIELDS = ("layer_id", "tp_q_head_num", "tp_k_head_num", "tp_v_head_num", "head_dim",
              "qk_head_dim", "v_head_dim", "scaling", "sliding_window_size", "logit_cap")

    def __init__(self):
        self.calls: list[object] = []

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self.calls.append(layer)
        mix = sum((i + 1) * float(getattr(layer, f)) for i, f in enumerate(self.FIELDS))
        return (q * layer.scaling + 1e-3 * mix).reshape(q.shape[0], -1)


@pytest.mark.parametrize("spec", list(PRESET_NAMES) + ["LlLlLlLlLlLl", "GLlg0Ll1LlLlll"])
def test_prefill_graph_path_runs_each_consumer_as_its_producer(single_rank, tmp_path, spec,
                                                               monkeypatch):
    """Prefill CUDA graphs (breakable and piecewise) run attention through SGLang's
    ``unified_attention_with_output``, which calls the backend with
    ``attention_layers[layer_id]`` (``layers/radix_attention.py:311-371``), the list
    SGLang builds from each decoder layer's ``self_attn.attn`` by position
    (``model_executor/model_runner_components/layer_setup.py:21-69``). A consumer's
    RadixAttention carries its producer's layer id, so on that path the backend sees the
    producer's object. Run our model's layer stack both ways (eager, and inside SGLang's
    graph forward context) with a backend that answers from the object it is given: the
    graph path must hand the producer's object to every consumer and give the same
    hidden states as the eager path. (SGLang registers the op as a torch custom op for
    CUDA only; on this CPU the op's Python body, the part that looks the layer up, is
    called directly.)"""
    from types import SimpleNamespace

    import sglang.srt.layers.radix_attention as ra

    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
    from sglang.srt.model_executor.model_runner_components.layer_setup import (
        compute_attention_and_moe_layers,
    )
    from sglang.srt.model_executor.runner_backend_utils.tc_piecewise_cuda_graph.context_manager import (
        set_tc_piecewise_forward_context,
    )

    from sglang_mixkv.model import MixAttentionForCausalLM

    size = SIZES["tiny"]
    model = MixAttentionForCausalLM(
        ModelConfig(str(write_model_folder(tmp_path / "m", size, spec))).hf_config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    plan = resolve(spec, size.num_layers)
    layers = compute_attention_and_moe_layers(model.model)
    n = 6
    ids, pos = torch.arange(3, 3 + n), torch.arange(n)
    monkeypatch.setattr(ra, "unified_attention_with_output", lambda q, k, v, out, save, layer_id, **kw:
                        ra._unified_attention_with_output_impl(q, k, v, out, save, layer_id,
                                                               kw.pop("use_mha_companion"), False, **kw))
    fb = SimpleNamespace(forward_mode=ForwardMode.EXTEND, num_token_non_padded_cpu=n,
                         out_cache_loc=torch.arange(n), mha_return_lse=False, _attn_output=None)

    def run(graph: bool):
        backend = RecordingBackend()
        with forward_context(ForwardContext(attn_backend=backend)):
            if graph:
                with set_tc_piecewise_forward_context(fb, layers.attention_layers, None,
                                                      layers.moe_layers, layers.moe_fusions):
                    out = model.model(ids, pos, fb)
            else:
                out = model.model(ids, pos, fb)
        return out, backend.calls

    eager, eager_calls = run(graph=False)
    graphed, graph_calls = run(graph=True)
    own = [layer.self_attn.attn for layer in model.model.layers]
    assert eager_calls == own  # eager: every layer its own object
    assert graph_calls == [own[layer.source] for layer in plan.layers]  # graph: the producer's
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
