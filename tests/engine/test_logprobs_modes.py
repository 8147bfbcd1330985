"""Raw and processed logprobs with penalties and a grammar on (tiny random Llama with SmolLM2's
tokenizer, float32, two simulated chips).

Raw (the default): each generated token's logprob and top N are transformers' ``log_softmax`` of
the model's own logits, although the token was drawn from penalized, masked logits (so the top
entry need not be the token). Processed: those of the distribution the token was drawn from,
rebuilt on the host from the numpy reference of the penalties (``ttdist.mesh.penalties``) and the
grammar's own masks (llguidance, replayed over the output).
"""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.grammar import GrammarKind, StructuredOutput
from ttdist.engine.grammar.compiler import grammar_compiler
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.tokenizer import Tokenizer
from ttdist.mesh import penalties as pen

torch = pytest.importorskip("torch")
PAGE, N, TOL = 16, 3, 1e-4
PENALTIES = dict(repetition_penalty=1.8, presence_penalty=1.0, frequency_penalty=0.7, logit_bias={42: 3.0, 77: -50.0})
REGEX = StructuredOutput(GrammarKind.REGEX, "[a-z]{3,12}( [a-z]{2,8}){2}")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoints):
    from transformers import LlamaForCausalLM

    path = tiny_checkpoints(seed=3)
    return path, LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), Tokenizer.from_dir(path)


def _generate(path, tokenizer, mode: str, sampling: SamplingParams, prompt: list[int]):
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(path, mesh="1x2", dtype="float32", page_size=PAGE, num_pages=32, max_batch=4,
                                             max_context=256, logprobs_mode=mode)
    core = EngineCore(runner, tokenizer, EngineConfig(prefill_chunk=PAGE))
    core.add_request(GenerationRequest("r", prompt_token_ids=prompt, sampling=sampling))
    ids, logprobs = [], []
    while core.has_work():
        for out in core.step():
            ids += out.token_ids
            logprobs += out.logprobs or []
    return ids, logprobs


def _logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _check(rows: np.ndarray, ids, logprobs) -> None:
    """``rows[j]``: the log-distribution token ``j`` should be reported against."""
    assert [lp.token_id for lp in logprobs] == ids
    for row, lp in zip(rows, logprobs):
        assert abs(lp.logprob - row[lp.token_id]) < TOL
        allowed = min(N, int(np.isfinite(row).sum()))   # past those the grammar masks: ties at the mask value
        best = np.argsort(-row, kind="stable")[:allowed]
        assert [t for t, _ in lp.top[:allowed]] == best.tolist()
        assert max(abs(v - row[t]) for t, v in lp.top[:allowed]) < TOL
        assert all(v < -1e8 for _, v in lp.top[allowed:])


def _processed_rows(logits: np.ndarray, prompt, ids, vocab: int, masks=None) -> np.ndarray:
    """Greedy processed rows: the reference penalties over prompt + output so far, the grammar's mask."""
    width = logits.shape[-1]
    bias = np.zeros((1, width), np.float32)
    for t, b in PENALTIES["logit_bias"].items():
        bias[0, t] = b
    params = pen.penalty_params([PENALTIES["repetition_penalty"]], [PENALTIES["presence_penalty"]],
                                [PENALTIES["frequency_penalty"]], [False], [0.0])
    prompt_row = pen.token_rows(1, width, [prompt], count=False)
    rows = []
    for j in range(len(ids)):
        counts = pen.token_rows(1, width, [ids[:j]], count=True)
        x = pen.penalize(logits[len(prompt) - 1 + j][None].astype(np.float32), counts, prompt_row, bias,
                         np.zeros((1, width), np.float32), params)[0].astype(np.float64)
        if masks is not None:
            x = np.where(masks[j], x, -np.inf)
        rows.append(_log_softmax(x[:vocab]))
    return np.stack(rows)


def _grammar_masks(tokenizer, ids, vocab: int) -> list[np.ndarray]:
    state = grammar_compiler(tokenizer).start(REGEX)
    masks = []
    for token in ids:
        words = np.zeros(-(-vocab // 32), np.int32)
        state.mask_into(words, vocab)
        masks.append(((words.view(np.uint32)[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1)[:vocab])
        state.advance(token)
    return masks


@pytest.mark.parametrize("grammar", [False, True], ids=["penalties", "penalties+grammar"])
def test_raw_logprobs_are_the_models_and_processed_ones_what_was_drawn_from(model_and_tokenizer, grammar):
    path, model, tokenizer = model_and_tokenizer
    prompt = tokenizer.encode("the the the cat sat on the mat and the")
    sampling = SamplingParams(max_tokens=10, logprobs=N, ignore_eos=True, structured_output=REGEX if grammar else None,
                              **PENALTIES)
    got = {mode: _generate(path, tokenizer, mode, sampling, prompt) for mode in ("raw", "processed")}
    ids = got["raw"][0]
    assert got["processed"][0] == ids                       # the mode changes what is reported, never what is drawn
    vocab = model.config.vocab_size
    logits = _logits(model, prompt + ids)
    raw = np.stack([_log_softmax(logits[len(prompt) - 1 + j][:vocab]) for j in range(len(ids))])
    _check(raw, ids, got["raw"][1])
    # the features changed the draw: some token is not the raw distribution's best
    assert any(lp.top[0][0] != lp.token_id for lp in got["raw"][1])
    masks = _grammar_masks(tokenizer, ids, vocab) if grammar else None
    _check(_processed_rows(logits, prompt, ids, vocab, masks), ids, got["processed"][1])
    assert all(lp.top[0][0] == lp.token_id for lp in got["processed"][1])   # greedy: drawn = processed best
