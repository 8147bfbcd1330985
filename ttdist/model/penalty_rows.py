"""The decode slots' penalty state on the mesh (``ttdist.mesh.penalties``) and its host mirror.

``PenaltyRows`` keeps one row per decode slot of the persistent ``PenaltyState`` tensors
(placed on first use, so a replica whose requests never ask for penalties holds none). A slot
is seeded when a penalized user enters it — output token counts and prompt presence from the
user's history, its logit biases and banned ids — by rewriting the tensors in place from the
host mirror. From then on the device counts each step's sampled ids itself and the mirror
adds the same ids from the readback, so while the user stays in its slot a step uploads
nothing for it but the small ``[B, 8]`` parameter rows when they change (``min_tokens``
reached). A user is re-seeded whenever its history is not exactly one token longer than at its
previous step in that slot (it moved, was preempted and recomputed, or resumed elsewhere), so
counts always equal those rebuilt from prompt + tokens so far.
"""

from __future__ import annotations

import numpy as np

from ttdist.engine.runner import PenaltySpec, SamplingSpec
from ttdist.mesh import penalties as pen
from ttdist.mesh.placement import REPLICATED, Shard, with_axis


def penalty_arrays(spec: SamplingSpec, width: int) -> dict:
    """One user's host rows ``[1, width]`` (and ``params`` ``[1, 8]``) from its history."""
    p = spec.penalties
    history = list(spec.history)
    n = spec.num_prompt_tokens
    bias = np.zeros((1, width), np.float32)
    for token, value in p.logit_bias:
        bias[0, token] += np.float32(value)
    ban = np.zeros((1, width), np.float32)
    ban[0, list(p.banned_ids)] = 1.0
    return {"counts": pen.token_rows(1, width, [history[n:]], count=True),
            "prompt": pen.token_rows(1, width, [history[:n]], count=False), "bias": bias, "ban": ban,
            "params": params_rows([spec])}


def params_rows(specs: list[SamplingSpec]) -> np.ndarray:
    ps = [s.penalties or PenaltySpec() for s in specs]
    return pen.penalty_params([p.repetition_penalty for p in ps], [p.presence_penalty for p in ps],
                              [p.frequency_penalty for p in ps],
                              [s.penalties is not None and s.step < p.min_tokens for s, p in zip(specs, ps)],
                              [p.min_p for p in ps])


def place_state(be, arrays: dict, vocab_axis: int, name: str) -> pen.PenaltyState:
    """Device tensors for host ``arrays``: the ``[B, V]`` rows vocab-sharded like the logits."""
    sharded = with_axis(REPLICATED, vocab_axis, Shard(1))
    return pen.PenaltyState(**{k: be.input_tensor(arrays[k], sharded if k in pen.STATE else REPLICATED,
                                                  name=f"{name}.{k}") for k in (*pen.STATE, "params")})


class PenaltyRows:
    """Per-slot penalty state of a decode batch of ``rows`` slots over ``width`` (padded) vocab ids."""

    def __init__(self, be, rows: int, width: int, vocab_axis: int):
        self.be, self.rows, self.width, self.vocab_axis = be, rows, width, vocab_axis
        self.host = {k: np.zeros((rows, width), np.float32) for k in pen.STATE}
        self.host["params"] = pen.neutral_params(rows)
        self.state: pen.PenaltyState | None = None
        self._owner: list[tuple[str, int] | None] = [None] * rows   # (user, history length expected next step)
        self._biased = np.zeros(rows, bool)
        self._users: list[tuple[int, str, int]] = []

    @staticmethod
    def wanted(specs) -> bool:
        return any(s.penalties is not None for s in specs)

    def prepare(self, slots: list[int], specs: list[SamplingSpec], users: list[str]) -> pen.PenaltyState:
        """Seed the slots whose users are new to them; upload what changed; the device state."""
        dirty: set[str] = set()
        self._users = []
        for slot, spec, user in zip(slots, specs, users):
            if spec.penalties is None:
                if self._biased[slot]:
                    self.host["bias"][slot] = 0.0
                    self._biased[slot] = False
                    dirty.add("bias")
                self._owner[slot] = None
                continue
            length = len(spec.history)
            if self._owner[slot] != (user, length):
                rows = penalty_arrays(spec, self.width)
                for k in pen.STATE:
                    self.host[k][slot] = rows[k][0]
                self._biased[slot] = bool(spec.penalties.logit_bias)
                dirty.update(pen.STATE)
            self._users.append((slot, user, length))
        params = pen.neutral_params(self.rows)
        params[slots] = params_rows(specs)
        if self.state is None:
            self.host["params"] = params
            self.state = place_state(self.be, self.host, self.vocab_axis, "input.penalties")
            return self.state
        if not np.array_equal(params, self.host["params"]):
            self.host["params"] = params
            dirty.add("params")
        for k in sorted(dirty):
            self.be.write_input(getattr(self.state, k), self.host[k])
        return self.state

    def observe(self, ids: np.ndarray) -> None:
        """The step's sampled ids (every row): the mirror counts what the device counted."""
        for slot, user, length in self._users:
            self.host["counts"][slot, int(ids[slot])] += 1.0
            self._owner[slot] = (user, length + 1)
