"""``ttdist serve --backend ttnn`` end to end on the mocked system: coordinator, replica actor,
router and gRPC, all in the torch-free ttnn environment, serving a small random Llama.

One cluster per system (module scope), started with the environment's own ``ttdist`` console
script. Mocked chips compute zeros, so these tests assert the path and the accounting (token
counts, finish reasons, KV pages, the mesh and backend the cluster reports), never token values.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from tests.support.cli import ROOT, free_port, interrupt  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from ttdist.client import Client, DeadlineExceeded  # noqa: E402

TTDIST = Path(sys.executable).with_name("ttdist")   # the environment's console script
PROMPT = "The capital of France is"
START_TIMEOUT_S = 900


def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "TTDIST_CACHE": str(tmp)}


def _ttdist(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(TTDIST), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ttdist.model.testing import numpy_llama_checkpoint

    return numpy_llama_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama", seed=5)


@pytest.fixture(scope="module")
def served(checkpoint, system, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    address = f"127.0.0.1:{free_port()}"
    log_path = cache / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(TTDIST), "serve", "--backend", "ttnn", "--mesh", system, "--model", str(checkpoint),
             "--dtype", "bfloat8_b", "--port", address.rsplit(":", 1)[1],
             "--dashboard-port", "-1", "--no-restart"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(cache), cwd=ROOT)
        try:
            _wait_serving(server, address, log_path)
            yield address
        finally:
            interrupt(server)


def _wait_serving(server: subprocess.Popen, address: str, log_path: Path) -> None:
    def ready() -> bool:
        if server.poll() is not None:
            pytest.fail(f"ttdist serve --backend ttnn exited ({server.returncode}); its output:\n{_tail(log_path)}")
        try:
            client.wait_ready(timeout=5)
            return True
        except DeadlineExceeded:
            return False

    with Client(address) as client:
        wait_for(ready, START_TIMEOUT_S, lambda: f"ttdist serve --backend ttnn ready; its output:\n{_tail(log_path)}",
                 every=0)


def _tail(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if not ln.startswith(" --- ")]
    return "\n".join(lines[-60:])


def _replica(client: Client):
    (replica,) = client.cluster_status().replicas
    return replica


def _settled(client: Client, timeout_s: float = 60.0):
    """The replica's status once nothing runs and every KV page is free again."""
    seen = []

    def settled():
        seen[:] = [_replica(client)]
        replica = seen[0]
        return replica.running == 0 and replica.waiting == 0 and replica.kv_pages_free == replica.kv_pages_total and replica
    return wait_for(settled, timeout_s, lambda: f"the replica settled: {seen}", every=0.2)


def test_cluster_status_reports_the_ttnn_mesh_and_its_kv_pages(served, spec):
    with Client(served, timeout=60) as client:
        status = client.cluster_status()
        (replica,) = status.replicas
        assert (replica.state, replica.backend, replica.mesh) == ("ready", "ttnn", spec.shape_str)
        assert status.model == "tiny-llama"
        # on chips the cache takes the DRAM budget (no host-RAM cap): all of it free while idle
        assert replica.kv_pages_total == replica.kv_pages_budget > 0
        assert replica.kv_pages_free == replica.kv_pages_total
        # a Galaxy splits its users over its 4 column groups, each with its own equal pool of pages;
        # N300 and T3000 have one group, which holds every page
        groups = 1 if spec.rows == 1 else spec.cols
        assert replica.kv_user_groups == groups
        assert list(replica.kv_pages_free_per_group) == [replica.kv_pages_total // groups] * groups


def test_tokens_stream_through_the_public_api(served, checkpoint):
    from ttdist.engine.tokenizer import Tokenizer

    prompt_tokens = len(Tokenizer.from_dir(checkpoint).encode(PROMPT))
    with Client(served, timeout=300) as client:
        stream = client.stream(PROMPT, max_tokens=6, ignore_eos=True)
        chunks = list(stream)
        done = stream.completion
        assert sum(len(c.token_ids) for c in chunks) == 6 == len(done.token_ids)
        assert (done.finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens) == ("length", prompt_tokens, 6)
        unary = client.generate(list(range(3, 40)), max_tokens=4, ignore_eos=True)
        assert (len(unary.token_ids), unary.usage.prompt_tokens) == (4, 37)
        _settled(client)


def test_abort_mid_stream_frees_its_pages(served):
    # 70 tokens, three 32-token pages; its first page is the cached prefix of the unary request
    # above, so its prefill is a chunk that starts at 32 (chunked SDPA through the page table)
    prompt = list(range(3, 3 + 70))
    with Client(served, timeout=600) as client:
        total = _settled(client).kv_pages_total
        stream = client.stream(prompt, max_tokens=900, ignore_eos=True)
        seen = 0
        for chunk in stream:
            seen += len(chunk.token_ids)
            if seen >= 2:
                break
        replica = wait_for(lambda: (r := _replica(client)).kv_pages_free <= total - 3 and r, 60,   # heartbeats catch up
                           "the running stream's pages shown as used")
        assert replica.running == 1
        if replica.kv_user_groups > 1:   # the stream's pages (3 or more by now) lie in its own group only
            per_group = total // replica.kv_user_groups
            own, *others = sorted(replica.kv_pages_free_per_group)
            assert own <= per_group - 3 and others == [per_group] * (replica.kv_user_groups - 1)
        assert client.abort(stream.request_id) is True
        stream.close()
        after = _settled(client)
        assert after.kv_pages_free == after.kv_pages_total == total
        if after.kv_user_groups > 1:
            assert set(after.kv_pages_free_per_group) == {total // after.kv_user_groups}


def test_a_mesh_the_system_lacks_is_one_line_naming_the_fix(checkpoint, spec, system, tmp_path):
    bigger = "tg" if spec.num_chips < 32 else "8x8"
    proc = _ttdist("serve", "--backend", "ttnn", "--mesh", bigger, "--model", str(checkpoint), "--port", "0",
                   env=_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"but this host has {spec.num_chips}" in line and f"use --mesh {system}" in line


def test_a_checkpoint_whose_heads_cannot_be_laid_out_is_refused(system, tmp_path):
    from ttdist.model.testing import numpy_llama_checkpoint

    odd = numpy_llama_checkpoint(tmp_path / "odd", hidden_size=96, num_attention_heads=2, num_key_value_heads=1,
                                 head_dim=48, num_hidden_layers=1)
    proc = _ttdist("serve", "--backend", "ttnn", "--mesh", system, "--model", str(odd), "--port", "0",
                   env=_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "head_dim 48 is not a multiple of 32" in line and "--backend sim" in line
