"""Seeds in comparisons: which seeds a comparison runs, the recipe arguments that seed a run, and the aggregation of
per-seed records into table rows (mean and interval per metric, :mod:`seqmix.utils.stats`).

Every comparison (MQAR, text-to-video, world model) runs each configuration once per seed and keeps every seed's
record; :func:`aggregate` groups records that differ only in their seed and summarises each metric, so tables show
``mean [low, high]`` and rankings are stated only where intervals separate (:func:`ranking`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from seqmix.utils.stats import SeedSummary, separated, summarize

__all__ = ["aggregate", "interval_note", "parse_seeds", "ranking", "seed_args", "summary_of"]


def parse_seeds(seeds: int | Sequence[int]) -> list[int]:
    """``S`` (an int >= 1) -> seeds ``0 .. S-1``; a list of distinct ints -> itself."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a count >= 1 or a list of distinct ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a count >= 1 or a list of distinct ints, got {seeds}")
        return list(range(seeds))
    out = list(seeds)
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
        raise ValueError(f"seeds must be a count >= 1 or a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


def seed_args(seed: int, model_seed: bool = False) -> list[str]:
    """Recipe arguments that seed a run: Lightning's global seed (initialisation) and the data seed (examples and
    their order); ``model_seed``: also the task's own ``seed`` (per-example training noise of the video task).
    Seed 0 reproduces the recipes as committed (they all use 0)."""
    args = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    if model_seed:
        args.append(f"--model.init_args.seed={seed}")
    return args


def interval_note(n_seeds: int) -> str:
    """How a table's ``mean [low, high]`` cells read for ``n_seeds`` seeds."""
    if n_seeds <= 1:
        return "1 seed: single values, no interval (differences between rows are not tested)"
    if n_seeds == 2:
        return "mean [min, max] over 2 seeds (too few for a t interval)"
    return f"mean [95% Student-t interval of the mean] over {n_seeds} seeds"


def aggregate(records: list[dict], keys: Sequence[str], metrics: dict[str, Callable[[dict], float]]) -> list[dict]:
    """Group per-seed ``records`` by the values of ``keys`` and summarise each metric over the group.

    Args:
        records: one dict per run; each has ``"seed"`` and the fields named in ``keys``.
        keys: fields that identify a configuration (everything but the seed).
        metrics: ``{name: record -> value}``.

    Returns:
        One row per configuration, in first-seen order: the key fields, ``"seeds"`` (sorted), ``"n_seeds"``,
        ``"summary"`` ``{metric: SeedSummary.as_dict()}`` and ``"values"`` ``{metric: [value per seed]}`` (in the
        order of ``"seeds"``); also ``"records"``, the group's records sorted by seed.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(_hashable(r[k]) for k in keys), []).append(r)
    rows = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r["seed"])
        seeds = [r["seed"] for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"configuration {[(k, group[0][k]) for k in keys]} has repeated seeds {seeds}")
        values = {m: [float(f(r)) for r in group] for m, f in metrics.items()}
        row = {k: group[0][k] for k in keys}
        row.update(seeds=seeds, n_seeds=len(seeds), values=values, records=group,
                   summary={m: summarize(v).as_dict() for m, v in values.items()})
        rows.append(row)
    return rows


def summary_of(row: dict, metric: str) -> SeedSummary:
    """The :class:`SeedSummary` of ``metric`` in an :func:`aggregate` row."""
    return SeedSummary(**row["summary"][metric])


def ranking(rows: list[dict], metric: str, name: Callable[[dict], str], higher_is_better: bool = True) -> list[str]:
    """Pairwise statements ``"A > B"`` (A better on ``metric``) for the pairs of rows whose intervals separate
    (:func:`seqmix.utils.stats.separated`); pairs that do not separate get no statement."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            sa, sb = summary_of(a, metric), summary_of(b, metric)
            if not separated(sa, sb):
                continue
            a_better = (sa.mean > sb.mean) == higher_is_better
            hi, lo = (a, b) if a_better else (b, a)
            out.append(f"{name(hi)} > {name(lo)}")
    return out


def _hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v
