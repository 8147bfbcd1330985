"""``ttdist serve`` in a subprocess: serves, then SIGTERM leaves no process behind (by PID); a
checkpoint without a tokenizer serves token ids and refuses text, naming the tokenizer."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from tests.support.generation import greedy, run, stub_for
from tests.support.serving import serve_addresses, serve_cli
from tests.support.waiting import wait_for
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow


def test_serve_then_sigterm_leaves_no_process(tiny_checkpoint, tmp_path):
    with serve_cli(tiny_checkpoint, tmp_path, "--replicas", "2", "--max-kv-pages", "32", "--policy", "least_load") as proc:
        address, http = serve_addresses(proc)
        import openai

        done = openai.OpenAI(base_url=http, api_key="none", max_retries=0).completions.create(
            model=Path(tiny_checkpoint).name, prompt=[1, 2, 3], max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5 and done.choices[0].finish_reason == "length"
        channel, stub = stub_for(address)
        with channel:
            ids, complete = run(stub, greedy([1, 2, 3], 5))
            assert len(ids) == 5
            st = stub.GetClusterStatus(pb.ClusterStatusRequest())
        assert st.policy == "least_load" and len(st.replicas) == 2
        started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
        replica_pids = {r.pid for r in st.replicas}
        assert replica_pids <= started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    def survivors() -> set[int]:
        return {pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
    wait_for(lambda: not survivors(), 30, lambda: f"no process left: {[psutil.Process(p).cmdline()[:3] for p in survivors()]}",
             every=0.2)


def test_checkpoint_without_tokenizer_serves_token_ids_and_refuses_text(tmp_path):
    import openai

    from ttdist.client import Client, InvalidRequest
    from ttdist.model.testing import tiny_llama_checkpoint

    checkpoint = tiny_llama_checkpoint(tmp_path / "no-tokenizer", seed=3, with_tokenizer=False)
    assert not (checkpoint / "tokenizer.json").exists()
    with serve_cli(checkpoint, tmp_path, "--mesh", "1x2", "--max-kv-pages", "32") as proc:
        address, http = serve_addresses(proc)
        with Client(address) as client:
            done = client.generate([1, 2, 3], max_tokens=4, temperature=0, ignore_eos=True)
            assert len(done.token_ids) == 4 and done.text == ""
            with pytest.raises(InvalidRequest, match="tokenizer"):
                client.generate("Hello", max_tokens=4)
            with pytest.raises(InvalidRequest, match="tokenizer"):
                client.chat([{"role": "user", "content": "Hello"}], max_tokens=4)
        api = openai.OpenAI(base_url=http, api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="tokenizer"):
            api.completions.create(model=checkpoint.name, prompt="Hello", max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="tokenizer"):
            api.chat.completions.create(model=checkpoint.name, messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=4)
        ids = api.completions.create(model=checkpoint.name, prompt=[1, 2, 3], max_tokens=4, temperature=0)
        assert ids.usage.completion_tokens == 4   # still up and serving after the refusals
        channel, stub = stub_for(address)
        with channel:
            got, complete = run(stub, greedy([1, 2, 3], 4))
        assert got == list(done.token_ids) and complete.finish_reason == pb.LENGTH
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
