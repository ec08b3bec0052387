"""Results documents shared by every suite: build the ``seqmix.bench/v2`` JSON, the markdown header (command,
date, machine, peaks, notes) and matplotlib helpers. Library code: nothing here prints."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from .core import Measurement, machine_info, versions
from .schema import SCHEMA_VERSION, validate

logger = logging.getLogger(__name__)

__all__ = ["RunInfo", "start_run", "make_doc", "write_doc", "markdown_header"]


@dataclasses.dataclass
class RunInfo:
    """What is known about a run before any measurement: command line, start time, machine, versions."""

    command: str
    argv: list[str]
    date: str
    t0: float
    machine: dict
    versions: dict


def start_run(device: str, command: str | None = None) -> RunInfo:
    argv = list(sys.argv)
    cmd = command or " ".join(shlex.quote(a) for a in argv)
    return RunInfo(command=cmd, argv=argv, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), t0=time.perf_counter(),
                   machine=machine_info(device), versions=versions())


def _jsonable(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:  # NaN -> null (JSON has no NaN)
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def make_doc(suite: str, run: RunInfo, config, records: list[Measurement], summary: dict, peaks: dict | None,
             gates: dict, notes: list[str]) -> dict:
    """The validated results document of one run."""
    machine = dict(run.machine)
    try:
        import os

        machine["loadavg_end"] = list(os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover - non-POSIX
        pass
    doc = {
        "schema": SCHEMA_VERSION,
        "suite": suite,
        "meta": {"command": run.command, "argv": run.argv, "date": run.date,
                 "duration_s": time.perf_counter() - run.t0, "machine": machine, "versions": run.versions,
                 "config": _jsonable(config), "notes": list(notes)},
        "peaks": peaks,
        "gates": gates,
        "records": [_jsonable(m.to_dict()) for m in records],
        "summary": _jsonable(summary),
    }
    return validate(doc)


def write_doc(doc: dict, out_dir: str | Path, markdown: str, plot_fn=None) -> dict:
    """Write ``results.json`` and ``results.md`` (and ``results.png`` through ``plot_fn(path)``) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(markdown)
    png = plot_fn(out / "results.png") if plot_fn is not None else None
    return {"json": out / "results.json", "md": out / "results.md", "png": png}


def _fmt_rate(x: float, unit: str) -> str:
    for k, p in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= p:
            return f"{x / p:.1f} {k}{unit}"
    return f"{x:.0f} {unit}"


def markdown_header(title: str, doc: dict) -> str:
    meta, m = doc["meta"], doc["meta"]["machine"]
    v = meta["versions"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val and k not in ("python", "seqmix"))
    dev = m.get("gpu") or f"{m.get('cpu_model')}, {m.get('cpu_count')} cores ({m.get('torch_threads')} torch threads)"
    lines = [f"# {title}", "",
             f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']} (run took {meta['duration_s']:.0f} s)  ",
             f"Machine: {dev}, {(m.get('memory_bytes') or 0) / 2**30:.0f} GiB RAM, device `{m['device']}`; "
             f"load average at start {_loadavg(m.get('loadavg'))}, at end {_loadavg(m.get('loadavg_end'))}  ",
             f"Versions: python {v.get('python')}, {libs}  "]
    pk = doc.get("peaks")
    if pk:
        mm, cp = pk["matmul"], pk["copy"]
        lines.append(f"Measured ceilings (same run): matmul {_fmt_rate(mm['flops_per_s'], 'FLOP/s')} "
                     f"({mm['dtype']}, n={mm['n']}), copy {_fmt_rate(cp['bytes_per_s'], 'B/s')} "
                     f"({cp['buffer_bytes'] // 2**20} MiB buffer); best of {len(pk.get('samples', [1]))} samples "
                     "(start and end of the run)" + (" [quick: indicative only]" if pk.get("quick") else ""))
    lines.append("")
    if meta["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    return "\n".join(lines)


def _loadavg(x) -> str:
    return "?" if not x else "/".join(f"{v:.1f}" for v in x)
