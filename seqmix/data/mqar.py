"""Multi-query associative recall (MQAR), written from the task's definition (Arora et al. 2023, "Zoology",
arXiv 2312.04927, Sec. 3) and held to Zoology's own generator (``zoology/data/multiquery_ar.py``).

A sequence starts with ``P`` key-value pairs ``k_1 v_1 k_2 v_2 ... k_P v_P``: keys distinct, drawn from the
lower half of the vocabulary ``[1, V/2)``, values distinct, drawn from the upper half ``[V/2, V)``. The rest of
the sequence holds every key once more, as a query; the query slots are two tokens wide and drawn with a power
law over the gap after the context (short key-query distances are more likely, ``p(g) ~ a g^(a-1)``). The model
reads ``inputs [N, T]`` and is scored only at query positions, where the target is the queried key's value:
``labels[t] = value`` there, ``-100`` elsewhere.

Two forms (``MQARConfig.form``):

* ``"zoology"`` (default): as Zoology. The slot after a query holds no answer (0, or a random token with
  ``random_non_queries``); every position that is neither context nor query key is 0 or a random token from
  ``[0, V)``. Zoology's checks: ``T`` even, ``V > T``, ``4P <= T``.
* ``"answer_in_input"``: seqmix's first form (used for results committed before it was renamed): each query is
  followed by its value in the input, values are drawn with replacement, random filler comes from ``[1, V)``.
  Kept so that those results can be reproduced.

Keys and values are never token 0. Shapes: ``inputs, labels: [N, T]`` (int64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MQARConfig", "make_mqar", "assemble_mqar", "IGNORE_INDEX", "FORMS"]

IGNORE_INDEX = -100
FORMS = ("zoology", "answer_in_input")


@dataclass(kw_only=True)
class MQARConfig:
    """MQAR settings.

    Attributes:
        vocab_size: V; keys come from ``[1, V // 2)``, values from ``[V // 2, V)``.
        seq_len: T, the model's input length.
        num_kv_pairs: P, the number of key-value pairs (all of them are queried).
        power_a: power-law exponent for the query gaps (Zoology: 0.01; 1.0 = uniform).
        random_non_queries: fill non-query positions with random tokens instead of 0.
        form: ``"zoology"`` (no answer after a query, values without replacement; default) or
            ``"answer_in_input"`` (the earlier seqmix form; see the module docstring).
    """

    vocab_size: int = 8192
    seq_len: int = 128
    num_kv_pairs: int = 8
    power_a: float = 0.01
    random_non_queries: bool = True
    form: str = "zoology"

    def validate(self) -> None:
        P, T, V = self.num_kv_pairs, self.seq_len, self.vocab_size
        if self.form not in FORMS:
            raise ValueError(f"unknown MQAR form {self.form!r}; valid: {', '.join(FORMS)}")
        if P < 1:
            raise ValueError(f"num_kv_pairs must be >= 1, got {P}")
        if T < 4 * P:
            raise ValueError(
                f"seq_len={T} is too short for num_kv_pairs={P}: the context takes 2P={2 * P} tokens and the "
                f"queries need P key-value slots after it, so seq_len must be >= 4P={4 * P}"
            )
        if V // 2 - 1 < P:
            raise ValueError(
                f"vocab_size={V} is too small: {P} distinct keys must come from [1, {V // 2}) "
                f"({V // 2 - 1} ids); use vocab_size >= {2 * (P + 1)}"
            )
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must lie in (0, 1], got {self.power_a}")
        if self.form == "zoology":
            if T % 2:
                raise ValueError(f"seq_len must be even in the zoology form (two-token query slots), got {T}")
            if V <= T:
                raise ValueError(f"vocab_size={V} must exceed seq_len={T} in the zoology form (Zoology's check)")
            if V - V // 2 < P:
                raise ValueError(
                    f"vocab_size={V} is too small: {P} distinct values must come from [{V // 2}, {V}); "
                    f"use vocab_size >= {2 * P}"
                )


def make_mqar(cfg: MQARConfig, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_examples`` MQAR sequences; the same (cfg, seed) always gives the same data.

    Returns ``(inputs [N, T], labels [N, T])`` as int64 tensors.
    """
    cfg.validate()
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if cfg.form == "answer_in_input":
        return _make_answer_in_input(cfg, num_examples, seed)
    rng = np.random.default_rng(seed)
    N, T, P, V = num_examples, cfg.seq_len, cfg.num_kv_pairs, cfg.vocab_size
    keys = np.stack([rng.choice(np.arange(1, V // 2), size=P, replace=False) for _ in range(N)])  # [N, P]
    values = np.stack([rng.choice(np.arange(V // 2, V), size=P, replace=False) for _ in range(N)])  # [N, P]
    gaps = _query_gaps(rng, N, P, space=(T - 2 * P) // 2, power_a=cfg.power_a)  # two-token slots after the context
    fill = rng.integers(0, V, size=(N, T)) if cfg.random_non_queries else None
    return assemble_mqar(keys, values, gaps, T, fill=fill)


def _query_gaps(rng: np.random.Generator, N: int, P: int, space: int, power_a: float) -> np.ndarray:
    """``[N, P]`` distinct query slots in ``[0, space)`` per example, power-law distributed (short gaps likelier)."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    p /= p.sum()
    return np.stack([rng.choice(space, size=P, replace=False, p=p) for _ in range(N)])


def assemble_mqar(
    keys: np.ndarray, values: np.ndarray, gaps: np.ndarray, seq_len: int, fill: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic part of the zoology form: place drawn keys, values and query gaps in a sequence.

    Args:
        keys, values: ``[N, P]`` token ids of the context pairs (in context order).
        gaps: ``[N, P]`` query slot of each pair: key ``i`` is queried at input position ``2P + 2 gaps[:, i]``.
        seq_len: T.
        fill: ``[N, T]`` tokens for every position that is neither context nor query key (``None``: zeros).

    Returns ``(inputs [N, T], labels [N, T])``; ``labels`` is the value at each query position, -100 elsewhere.
    """
    N, P = keys.shape
    ctx = 2 * P
    rows = np.arange(N)[:, None]
    inputs = np.zeros((N, seq_len), dtype=np.int64) if fill is None else np.array(fill, dtype=np.int64)
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    qpos = ctx + 2 * np.asarray(gaps)  # input position of each query key
    inputs[rows, qpos] = keys
    labels = np.full((N, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[rows, qpos] = values
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def _make_answer_in_input(cfg: MQARConfig, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``answer_in_input`` form, draw for draw as seqmix first generated it."""
    rng = np.random.default_rng(seed)
    N, T, P, V = num_examples, cfg.seq_len, cfg.num_kv_pairs, cfg.vocab_size
    ctx = 2 * P
    keys = np.stack([rng.choice(np.arange(1, V // 2), size=P, replace=False) for _ in range(N)])  # [N, P]
    values = rng.integers(V // 2, V, size=(N, P))
    # The full sequence has T + 1 tokens (inputs drop the last, labels drop the first).
    gaps = _query_gaps(rng, N, P, space=(T + 1 - ctx) // 2, power_a=cfg.power_a)

    if cfg.random_non_queries:
        seq = rng.integers(1, V, size=(N, T + 1))
    else:
        seq = np.zeros((N, T + 1), dtype=np.int64)
    seq[:, 0:ctx:2] = keys
    seq[:, 1:ctx:2] = values
    rows = np.arange(N)[:, None]
    qpos = ctx + 2 * gaps  # position of each query key in the full sequence
    seq[rows, qpos] = keys
    seq[rows, qpos + 1] = values
    labels = np.full((N, T + 1), IGNORE_INDEX, dtype=np.int64)
    labels[rows, qpos + 1] = values
    inputs = torch.from_numpy(seq[:, :-1].astype(np.int64))
    return inputs, torch.from_numpy(labels[:, 1:].copy())
