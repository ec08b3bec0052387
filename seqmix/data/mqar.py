"""Multi-query associative recall (MQAR), written from the task's definition (Arora et al. 2023, "Zoology",
arXiv 2312.04927, Sec. 3).

A sequence starts with ``P`` key-value pairs ``k_1 v_1 k_2 v_2 ... k_P v_P`` (keys distinct, drawn from the
lower half of the vocabulary, values from the upper half). The rest of the sequence holds every key once more,
as a query, each immediately followed by its value; the query slots are drawn with a power law over the gap
after the context (short key-query distances are more likely, ``p(g) ~ a g^(a-1)``), and the positions that
are not part of a query are filled with random tokens (or zeros). The model reads ``inputs = seq[:-1]`` and is
scored only where the next token is a queried value: ``labels[t] = seq[t+1]`` at query positions, ``-100``
elsewhere.

Token 0 is never a key or a value. Shapes: ``inputs, labels: [N, T]`` (int64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MQARConfig", "make_mqar", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass(kw_only=True)
class MQARConfig:
    """MQAR settings.

    Attributes:
        vocab_size: V; keys come from ``[1, V // 2)``, values from ``[V // 2, V)``.
        seq_len: T, the model's input length.
        num_kv_pairs: P, the number of key-value pairs (all of them are queried).
        power_a: power-law exponent for the query gaps (Zoology: 0.01; 1.0 = uniform).
        random_non_queries: fill non-query positions with random tokens instead of 0.
    """

    vocab_size: int = 8192
    seq_len: int = 128
    num_kv_pairs: int = 8
    power_a: float = 0.01
    random_non_queries: bool = True

    def validate(self) -> None:
        P, T, V = self.num_kv_pairs, self.seq_len, self.vocab_size
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


def make_mqar(cfg: MQARConfig, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_examples`` MQAR sequences; the same (cfg, seed) always gives the same data.

    Returns ``(inputs [N, T], labels [N, T])`` as int64 tensors.
    """
    cfg.validate()
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    rng = np.random.default_rng(seed)
    N, T, P, V = num_examples, cfg.seq_len, cfg.num_kv_pairs, cfg.vocab_size
    ctx = 2 * P
    keys = np.stack([rng.choice(np.arange(1, V // 2), size=P, replace=False) for _ in range(N)])  # [N, P]
    values = rng.integers(V // 2, V, size=(N, P))
    # The full sequence has T + 1 tokens (inputs drop the last, labels drop the first).
    space = (T + 1 - ctx) // 2  # query slots of two tokens after the context
    gaps_p = cfg.power_a * np.arange(1, space + 1, dtype=np.float64) ** (cfg.power_a - 1)
    gaps_p /= gaps_p.sum()
    gaps = np.stack([rng.choice(space, size=P, replace=False, p=gaps_p) for _ in range(N)])  # [N, P]

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
