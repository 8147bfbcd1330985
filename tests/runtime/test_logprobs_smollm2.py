"""Logprobs of SmolLM2 served through the router, against transformers' ``log_softmax``.

Real engines over the float32 simulator on a 1x2 mesh (the vocab split over two chips) behind a
router with both public listeners, in this process: the official ``openai`` client (completions
with ``logprobs`` and ``echo``, chat with ``top_logprobs``, streamed and not, vLLM's
``prompt_logprobs``) and the gRPC client see every generated and prompt token's logprob within
1e-4 of transformers' and the same top-N ids; a bad N is a 400 / INVALID_ARGUMENT naming the
field; vLLM's tokenizer endpoints answer as lm-eval's remote tokenizer expects.
"""

from __future__ import annotations

import aiohttp
import grpc
import openai
import pytest

from tests.support.stack import make_stack
from ttdist.client import AsyncClient
from ttdist.engine.config import EngineConfig
from ttdist.engine.engine import AsyncEngine
from ttdist.engine.tokenizer import Tokenizer
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.request_checks import ModelCard

pytestmark = pytest.mark.slow

TOL = 1e-4
PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def smollm2():
    from ttdist.model.smollm2 import materialize

    return materialize()


@pytest.fixture(scope="module")
def reference(smollm2):
    """``log_softmax`` of transformers' float32 SmolLM2 over a sequence of ids (every position)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()

    def log_softmax(ids: list[int]):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return log_softmax


@pytest.fixture
async def stack(smollm2):
    from ttdist.model.runner import MeshModelRunner

    tokenizer = Tokenizer.from_dir(smollm2)
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh="1x2", dtype="float32", num_pages=32, max_batch=4,
                                             max_context=512)
    card = ModelCard("smollm2", vocab_size=runner.info.vocab_size, max_context=512)
    built = await make_stack(lambda i: AsyncEngine(runner, tokenizer, EngineConfig(max_batch=4, prefill_chunk=32)),
                             card=card, tokenizer=tokenizer, public_api=ApiConfig(http_port=0), model_dir=str(smollm2))
    yield built, tokenizer
    await built.close()


def _openai(stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.server.http_port}/v1", api_key="none")


def _check_position(ref_row, token: int, logprob: float, top_ids: list[int], top_logprobs: list[float]) -> None:
    assert abs(logprob - ref_row[token].item()) < TOL
    want = ref_row.topk(len(top_ids))
    assert top_ids == want.indices.tolist()
    assert max(abs(a - b) for a, b in zip(top_logprobs, want.values.tolist())) < TOL


async def test_completions_logprobs_with_echo_equal_transformers(stack, reference):
    stack, tokenizer = stack
    prompt = tokenizer.encode(PROMPT)
    async with _openai(stack) as client:
        answer = await client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, logprobs=5, echo=True,
                                                  temperature=0)
    choice = answer.choices[0]
    lp = choice.logprobs
    ids = _greedy(reference, prompt, 4)
    ref = reference(ids)
    assert choice.text == tokenizer.decode(prompt, skip_special_tokens=False) + tokenizer.decode(ids[len(prompt):])
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.tokens == [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    for i in range(1, len(ids)):
        want = ref[i - 1].topk(5)
        assert abs(lp.token_logprobs[i] - ref[i - 1, ids[i]].item()) < TOL, i
        top = lp.top_logprobs[i]
        assert list(top)[:5] == [tokenizer.decode([t], skip_special_tokens=False) for t in want.indices.tolist()]
        assert max(abs(top[k] - v) for k, v in zip(list(top)[:5], want.values.tolist())) < TOL
    assert lp.text_offset[1] == len(lp.tokens[0]) and answer.usage.completion_tokens == 4


async def test_chat_logprobs_stream_with_their_tokens_and_equal_transformers(stack, reference):
    stack, tokenizer = stack
    messages = [{"role": "user", "content": "Name a color."}]
    async with _openai(stack) as client:
        whole = await client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6, logprobs=True,
                                                     top_logprobs=3, temperature=0)
        streamed = []
        async for event in await client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6,
                                                                logprobs=True, top_logprobs=3, stream=True, temperature=0):
            if event.choices and event.choices[0].logprobs is not None:
                streamed.extend(event.choices[0].logprobs.content)
    content = whole.choices[0].logprobs.content
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]
    assert "".join(c.token for c in content).startswith(whole.choices[0].message.content)
    prompt = _render(messages)
    ids = _greedy(reference, prompt, len(content))
    ref = reference(ids)
    for j, c in enumerate(content):
        best = ref[len(prompt) - 1 + j].topk(3)
        assert c.token == tokenizer.decode([ids[len(prompt) + j]], skip_special_tokens=False)
        assert [t.token for t in c.top_logprobs] == [tokenizer.decode([t], skip_special_tokens=False)
                                                    for t in best.indices.tolist()]
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(best.values.tolist(), abs=TOL)
        assert c.logprob == pytest.approx(best.values[0].item(), abs=TOL)   # greedy: the best token


def _greedy(reference, prompt: list[int], n: int) -> list[int]:
    """``prompt`` followed by transformers' ``n`` greedy tokens."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(reference(ids)[-1].argmax()))
    return ids


def _render(messages) -> list[int]:
    from ttdist.engine.chat_template import ChatTemplate
    from ttdist.model.smollm2 import materialize

    path = materialize()
    text = ChatTemplate.from_dir(path).render(messages, add_generation_prompt=True)
    return Tokenizer.from_dir(path).encode(text, add_special_tokens=False)


async def test_grpc_client_logprobs_and_prompt_logprobs_equal_transformers(stack, reference):
    stack, tokenizer = stack
    prompt = tokenizer.encode(PROMPT)
    port = stack.server.port
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        done = await client.generate(token_ids=prompt, max_tokens=5, logprobs=4, prompt_logprobs=2)
        chunks = [c async for c in client.stream(token_ids=prompt, max_tokens=5, logprobs=4)]
    ids = prompt + list(done.token_ids)
    ref = reference(ids)
    assert [lp.token_id for lp in done.logprobs] == list(done.token_ids)
    for j, lp in enumerate(done.logprobs):
        _check_position(ref[len(prompt) - 1 + j], lp.token_id, lp.logprob, [t for t, _ in lp.top], [v for _, v in lp.top])
    assert [lp.token_id for lp in done.prompt_logprobs] == prompt[1:]
    for i, lp in enumerate(done.prompt_logprobs):
        _check_position(ref[i], lp.token_id, lp.logprob, [t for t, _ in lp.top], [v for _, v in lp.top])
    assert [lp for c in chunks for lp in c.logprobs] == list(done.logprobs)   # streamed with their tokens


async def test_bad_logprob_counts_are_refused_naming_the_field(stack):
    stack, tokenizer = stack
    async with _openai(stack) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}],
                                                 logprobs=True, top_logprobs=21)
        assert info.value.body["param"] == "top_logprobs"
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="smollm2", prompt="hi", logprobs=25)
        assert info.value.body["param"] == "logprobs"
    from ttdist.v1 import generation_pb2 as pb
    from ttdist.v1 import generation_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.server.port}") as channel:
        for name in ("logprobs", "prompt_logprobs"):
            request = pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(**{name: 21}))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in pb_grpc.GenerationStub(channel).Generate(request):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"sampling.{name}" in err.value.details()


async def test_tokenizer_endpoints_answer_as_vllm(stack):
    stack, tokenizer = stack
    base = f"http://127.0.0.1:{stack.server.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/tokenizer_info") as r:
            info = await r.json()
        async with s.post(base + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}) as r:
            tokens = await r.json()
        async with s.post(base + "/detokenize", json={"tokens": tokens["tokens"]}) as r:
            text = await r.json()
        async with s.post(base + "/detokenize", json={"tokens": [10**7]}) as r:
            bad = r.status, (await r.json())["error"]["param"]
    assert info["eos_token"] == "<|im_end|>" and "{%" in info["chat_template"]
    assert tokens["tokens"] == tokenizer.encode(PROMPT, add_special_tokens=False) and tokens["count"] == len(tokens["tokens"])
    assert text["prompt"] == PROMPT and bad == (400, "tokens")


DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "London", "Rome"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten", "four"], "answer": 1},
    {"question": "What color is the sky on a clear day?", "choices": ["green", "red", "blue"], "answer": 2},
    {"question": "Which animal says moo?", "choices": ["a cow", "a cat", "a dog"], "answer": 0},
]
TASK = """task: ttdist_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


GEN_DOCS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is 2 + 3?", "answer": "5"},
    {"question": "What color is grass?", "answer": "Green"},
    {"question": "Who wrote Hamlet?", "answer": "William Shakespeare"},
    {"question": "What is the largest planet in the solar system?", "answer": "Jupiter"},
]
GEN_TASK = """task: ttdist_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 10
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
"""


async def _lm_eval(tmp_path, name: str, model: str, model_args: str, task: str = "ttdist_mc") -> list[dict]:
    """lm-eval's own CLI (unmodified) on the task; its per-sample records."""
    import asyncio
    import json
    import os
    import sys

    out = tmp_path / name
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", model_args, "--tasks", task,
        "--include_path", str(tmp_path), "--log_samples", "--output_path", str(out), "--batch_size", "1",
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    log, _ = await proc.communicate()
    assert proc.returncode == 0, log.decode()[-3000:]
    [samples] = list(out.rglob(f"samples_{task}_*.jsonl"))
    return sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])


async def _served_and_hf(stack, smollm2, tmp_path, task: str, yaml: str, docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """lm-eval's samples of ``task`` (its YAML over ``docs``) from ``local-completions`` on the
    served stack, and from its ``hf`` backend on the same checkpoint."""
    import json

    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a test dependency (lm-eval[api])")
    pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra")
    stack, _ = stack
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / f"{task}.yaml").write_text(yaml.format(docs=path))
    base = f"http://127.0.0.1:{stack.server.http_port}/v1/completions"
    served = await _lm_eval(tmp_path, f"served-{task}", "local-completions", f"model=smollm2,base_url={base},num_concurrent=1",
                            task)
    return served, await _lm_eval(tmp_path, f"hf-{task}", "hf", f"pretrained={smollm2},dtype=float32", task)


async def test_lm_eval_local_completions_loglikelihoods_equal_its_hf_backend(stack, smollm2, tmp_path):
    served, hf = await _served_and_hf(stack, smollm2, tmp_path, "ttdist_mc", TASK, DOCS)
    assert len(served) == len(hf) == len(DOCS)
    for a, b in zip(served, hf):
        assert len(a["resps"]) == len(DOCS[a["doc_id"]]["choices"])
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip([_pair(r) for r in a["resps"]], [_pair(r) for r in b["resps"]]):
            assert float(ll_a) == pytest.approx(float(ll_b), abs=1e-4)
            assert str(greedy_a) == str(greedy_b)
        assert a["acc"] == b["acc"]


def _pair(resp):
    """One choice's (loglikelihood, is_greedy) from a sample's ``resps`` entry."""
    first = resp[0] if isinstance(resp, list) and resp and isinstance(resp[0], (list, tuple)) else resp
    return first[0], first[1]


async def test_lm_eval_local_completions_generation_equals_its_hf_backend(stack, smollm2, tmp_path):
    """A small ``generate_until`` task (greedy, stop at a newline or a period): every answer and the
    exact-match score of ``local-completions`` on ttdist equal lm-eval's ``hf`` backend's."""
    served, hf = await _served_and_hf(stack, smollm2, tmp_path, "ttdist_gen", GEN_TASK, GEN_DOCS)
    assert len(served) == len(hf) == len(GEN_DOCS)
    answers = [(a["resps"], b["resps"]) for a, b in zip(served, hf)]
    assert all(a == b for a, b in answers), answers
    assert [a["exact_match"] for a in served] == [b["exact_match"] for b in hf]
    assert any(str(a[0]).strip() for a, _ in answers)   # the model answered something, not only stops
