"""The benchmark result document (``results.json``): schema ``seqmix.bench/v2`` and its validator.

Human-readable description: ``benchmarks/SCHEMA.md`` (keep the two in sync; ``tests/test_bench.py`` checks that
every field named here is documented there). ``seqmix.bench/v1`` documents (the first layer benchmark) still
validate, against the v1 record fields.

Document::

    {"schema": "seqmix.bench/v2", "suite": "layers" | "dit" | "ttt-kernels" | "rollout",
     "meta": {command, argv, date, machine, versions, config, notes},
     "peaks": {"matmul": {...}, "copy": {...}, "quick": bool} | null,
     "gates": {entry: [pytest node ids]},
     "records": [ one object per measurement (RECORD_FIELDS) ],
     "summary": {...suite-specific derived numbers...}}
"""

from __future__ import annotations

import math
import numbers

__all__ = ["SCHEMA_VERSION", "SchemaError", "validate", "flat_records", "RECORD_FIELDS", "META_FIELDS", "MODES",
           "SUITES"]

SCHEMA_VERSION = "seqmix.bench/v2"
_V1 = "seqmix.bench/v1"

_num = (numbers.Real,)
_opt_num = (numbers.Real, type(None))
_opt_int = (int, type(None))
_opt_str = (str, type(None))

#: field -> (accepted types, description). Every record has every field.
RECORD_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "suite": ((str,), "suite that produced it: layers | dit | ttt-kernels | rollout"),
    "name": ((str,), "layer registry name (layers) or model variant (dit)"),
    "backend": ((str,), "backend requested (layers) / global-layer backend (dit)"),
    "backend_used": (_opt_str, "backend the timed calls actually ran on, where it can differ per call"),
    "mode": ((str,), "fwd | fwd+bwd | decode | decode-frame"),
    "T": ((int,), "sequence length; decode modes: context length before the timed steps"),
    "batch": ((int,), "batch size"),
    "status": ((str,), "ok | skipped | error"),
    "reason": (_opt_str, "why a point was skipped or failed (null when ok)"),
    "unit": ((str,), "what median_s times: call | token | frame"),
    "tokens_per_unit": (_opt_int, "tokens per sequence processed in one unit"),
    "times_s": ((list,), "every timed value, seconds per unit"),
    "median_s": (_opt_num, "median seconds per unit (null unless ok)"),
    "tokens_per_s": (_opt_num, "batch * tokens_per_unit / median_s"),
    "peak_bytes": (_opt_int, "peak memory of one call (see memory_method)"),
    "memory_method": ((str,), "tensor-accounting (CPU) | cuda-max-allocated (GPU)"),
    "flops": (_opt_num, "cost-model FLOPs of one unit (estimate, seqmix.bench.costs)"),
    "bytes": (_opt_num, "cost-model bytes moved by one unit (estimate)"),
    "achieved_flops_per_s": (_opt_num, "flops / median_s"),
    "frac_matmul_peak": (_opt_num, "achieved_flops_per_s / peaks.matmul.flops_per_s"),
    "achieved_bytes_per_s": (_opt_num, "bytes / median_s"),
    "frac_bandwidth": (_opt_num, "achieved_bytes_per_s / peaks.copy.bytes_per_s"),
    "frac_roofline": (_opt_num, "max(flops / peak, bytes / bandwidth) / median_s"),
    "dtype": ((str,), "parameter / activation dtype"),
    "device": ((str,), "torch device"),
    "gate": ((list,), "pytest node ids of the correctness tests that gate this entry"),
    "extra": ((dict,), "suite-specific details (sizes, configs, state size, params, layout)"),
}

META_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "command": ((str,), "the command line as typed (shell-quoted)"),
    "argv": ((list,), "sys.argv of the run"),
    "date": ((str,), "start time, ISO 8601 with time zone"),
    "duration_s": (_opt_num, "wall-clock seconds of the whole run"),
    "machine": ((dict,), "CPU model, cores, threads, memory, device / GPU, load average at start"),
    "versions": ((dict,), "python, torch, triton, fla, mamba-ssm, flash-attn, ... (null: not installed)"),
    "config": ((dict,), "the suite's full configuration"),
    "notes": ((list,), "free-text caveats (reduced scale, machine load, ...)"),
}

_V1_RECORD = ("suite", "name", "mode", "T", "batch", "median_s", "tokens_per_s", "peak_bytes", "backend", "dtype",
              "device", "extra")
_STATUSES = ("ok", "skipped", "error")
_UNITS = ("call", "token", "frame")
#: Modes and suites a v2 document may use; a new suite adds its name here (and a line in benchmarks/SCHEMA.md).
MODES = ("fwd", "fwd+bwd", "decode", "decode-frame")
SUITES = ("layers", "dit", "ttt-kernels", "rollout")
_MODES, _SUITES = MODES, SUITES


class SchemaError(ValueError):
    """A results document does not follow the schema; ``problems`` lists every violation found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(f"invalid benchmark document ({len(problems)} problem(s)):\n  {shown}")


def _type_name(types: tuple[type, ...]) -> str:
    return " | ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_fields(obj: dict, fields: dict, where: str, problems: list[str]) -> None:
    for k, (types, _) in fields.items():
        if k not in obj:
            problems.append(f"{where}: missing field {k!r}")
        elif isinstance(obj[k], bool) and bool not in types and int in types:
            problems.append(f"{where}.{k}: expected {_type_name(types)}, got bool")
        elif not isinstance(obj[k], types):
            problems.append(f"{where}.{k}: expected {_type_name(types)}, got {type(obj[k]).__name__}")


def _check_record(r: dict, i: int, problems: list[str]) -> None:
    where = f"records[{i}]"
    if not isinstance(r, dict):
        problems.append(f"{where}: not an object")
        return
    _check_fields(r, RECORD_FIELDS, where, problems)
    unknown = sorted(set(r) - set(RECORD_FIELDS))
    if unknown:
        problems.append(f"{where}: unknown field(s) {unknown} (put suite-specific data under 'extra')")
    st = r.get("status")
    if st not in _STATUSES:
        problems.append(f"{where}.status: {st!r} not in {_STATUSES}")
    if r.get("unit") not in _UNITS:
        problems.append(f"{where}.unit: {r.get('unit')!r} not in {_UNITS}")
    if r.get("mode") not in _MODES:
        problems.append(f"{where}.mode: {r.get('mode')!r} not in {_MODES}")
    if r.get("suite") not in _SUITES:
        problems.append(f"{where}.suite: {r.get('suite')!r} not in {_SUITES}")
    if isinstance(r.get("T"), int) and r["T"] < 1:
        problems.append(f"{where}.T: must be >= 1, got {r['T']}")
    if st == "ok":
        med = r.get("median_s")
        if not isinstance(med, _num) or not (med > 0 and math.isfinite(med)):
            problems.append(f"{where}: status ok needs a positive finite median_s, got {med!r}")
        ts = r.get("times_s")
        if isinstance(ts, list) and (not ts or not all(isinstance(t, _num) and t >= 0 for t in ts)):
            problems.append(f"{where}.times_s: status ok needs a non-empty list of non-negative numbers")
        if r.get("tokens_per_s") is None:
            problems.append(f"{where}: status ok needs tokens_per_s")
    elif st in ("skipped", "error"):
        if not r.get("reason"):
            problems.append(f"{where}: status {st} needs a reason")
        if r.get("median_s") is not None:
            problems.append(f"{where}: status {st} must have median_s null")
    for k in ("frac_matmul_peak", "frac_bandwidth", "frac_roofline", "flops", "bytes", "peak_bytes"):
        v = r.get(k)
        if isinstance(v, _num) and not isinstance(v, bool) and (v < 0 or not math.isfinite(v)):
            problems.append(f"{where}.{k}: must be finite and >= 0, got {v!r}")
    g = r.get("gate")
    if isinstance(g, list) and not all(isinstance(x, str) and x.startswith("tests/") for x in g):
        problems.append(f"{where}.gate: must be pytest node ids under tests/, got {g!r}")


def _validate_v1(doc: dict, problems: list[str]) -> None:
    if not isinstance(doc.get("meta"), dict):
        problems.append("meta: missing or not an object")
    recs = doc.get("records")
    if not isinstance(recs, list):
        problems.append("records: missing or not a list")
        return
    for i, r in enumerate(recs):
        missing = [k for k in _V1_RECORD if not isinstance(r, dict) or k not in r]
        if missing:
            problems.append(f"records[{i}]: missing v1 field(s) {missing}")


def validate(doc: dict) -> dict:
    """Check a results document against its schema; returns it unchanged or raises :class:`SchemaError`."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise SchemaError(["document is not a JSON object"])
    schema = doc.get("schema")
    if schema == _V1:
        _validate_v1(doc, problems)
    elif schema != SCHEMA_VERSION:
        problems.append(f"schema: expected {SCHEMA_VERSION!r} (or {_V1!r}), got {schema!r}")
    else:
        if doc.get("suite") not in _SUITES:
            problems.append(f"suite: {doc.get('suite')!r} not in {_SUITES}")
        meta = doc.get("meta")
        if not isinstance(meta, dict):
            problems.append("meta: missing or not an object")
        else:
            _check_fields(meta, META_FIELDS, "meta", problems)
        peaks = doc.get("peaks")
        if peaks is not None:
            if not isinstance(peaks, dict):
                problems.append("peaks: must be an object or null")
            else:
                for key, sub in (("matmul", "flops_per_s"), ("copy", "bytes_per_s")):
                    v = peaks.get(key, {}).get(sub) if isinstance(peaks.get(key), dict) else None
                    if not isinstance(v, _num) or not v > 0:
                        problems.append(f"peaks.{key}.{sub}: must be a positive number, got {v!r}")
        gates = doc.get("gates")
        if not isinstance(gates, dict):
            problems.append("gates: missing or not an object")
        recs = doc.get("records")
        if not isinstance(recs, list):
            problems.append("records: missing or not a list")
        else:
            if not recs:
                problems.append("records: empty")
            for i, r in enumerate(recs):
                _check_record(r, i, problems)
                if isinstance(r, dict) and r.get("suite") != doc.get("suite"):
                    problems.append(f"records[{i}].suite: {r.get('suite')!r} != document suite {doc.get('suite')!r}")
        if not isinstance(doc.get("summary"), dict):
            problems.append("summary: missing or not an object")
    if problems:
        raise SchemaError(problems)
    return doc


def flat_records(doc: dict) -> list[dict]:
    """The records of ``doc``, each merged with the run's command, date, machine and versions (one flat dict per
    measurement, e.g. to concatenate several runs into one table)."""
    meta = doc.get("meta", {})
    run = {"schema": doc.get("schema"), "command": meta.get("command"), "date": meta.get("date"),
           "machine": meta.get("machine"), "versions": meta.get("versions")}
    return [{**run, **r} for r in doc.get("records", [])]
