"""Run the GPU kit's stages (:func:`run_check`; its command line, which ``scripts/gpu_check.sh`` calls after
installing the wheelhouse, is :mod:`seqmix.bench.cli`):

    python -m seqmix.bench.cli [--out DIR] [--stages a,b] [--dry-run] [--wheelhouse DIR] [--command STR]

Each stage of :data:`seqmix.bench.gpu_kit.STAGES` runs as its own process group under its own wall-clock budget;
its output goes to one combined log. ``--out`` receives at most ``len(STAGES) + 3`` files, one folder level:

    kit.json      environment (GPU, driver, CUDA, torch / triton / library versions, commit), the exact command,
                  wheelhouse check, per-stage command / status / seconds / counts, notes
    summary.md    the same as a table (also printed last)
    log.txt       every stage's output, one after the other
    <stage>.json  the stage's result document (benchmark document, or the test summary)

``--dry-run`` (CPU, seconds): checks the wheelhouse (when ``--wheelhouse`` exists), resolves every stage and runs
its CPU smoke variant through the same code: argument parsing, documents, validation, summary.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from seqmix.bench import gpu_kit
from seqmix.bench.schema import SchemaError, validate

logger = logging.getLogger(__name__)

KIT_SCHEMA = "seqmix.gpu-check/v1"
TESTS_SCHEMA = "seqmix.gpu-check.tests/v1"
ROOT = Path(__file__).resolve().parents[2]
_KILL_GRACE_S = 10


# ------------------------------------------------------------------------------------------------ environment
def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def environment() -> dict:
    """GPU model / driver / memory (nvidia-smi), CUDA and library versions, the code's commit."""
    import torch

    gpus = []
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader,nounits"]) if shutil.which("nvidia-smi") else None
    for line in (smi or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mib": parts[2], "compute_capability": parts[3]})
    dists = ("torch", "triton", "fla-core", "flash-linear-attention", "mamba-ssm", "flash-attn", "flash-attn-4",
             "causal-conv1d", "jsonargparse", "lightning", "transformers", "numpy")
    versions = {"python": platform.python_version()}
    for d in dists:
        try:
            versions[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            versions[d] = None
    cuda = torch.cuda.is_available()
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "gpus": gpus,
        "gpu": gpus[0]["name"] if gpus else (torch.cuda.get_device_name(0) if cuda else None),
        "driver": gpus[0]["driver"] if gpus else None,
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "versions": versions,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "commit": commit,
        "dirty": bool(dirty) if commit else None,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }


def kit_notes(env: dict) -> list[str]:
    """Caveats every stage's results carry (passed to the benchmarks as ``--notes``)."""
    notes = []
    if importlib.util.find_spec("flash_attn") is None:
        notes.append("flash-attn is not installed: attention layers run on FlexAttention (flex) and sdpa; "
                     "flash_attn points are recorded as skipped")
    warps = os.environ.get("SEQMIX_TTT_NUM_WARPS", gpu_kit.PIN_TTT["SEQMIX_TTT_NUM_WARPS"])
    notes.append(f"TTT Triton kernels run one pinned launch config (SEQMIX_TTT_NUM_WARPS={warps}), not autotuned, "
                 "to keep compilation inside the time window")
    return notes


# ------------------------------------------------------------------------------------------------ documents
def junit_summary(path: Path) -> dict:
    """A pytest JUnit XML report as JSON: counts and one entry per test (outcome, seconds, message, properties)."""
    root = ET.parse(path).getroot()
    cases = []
    for tc in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or el.text or "")[:2000]
                break
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        for k, v in props.items():
            try:
                props[k] = json.loads(v)
            except (TypeError, ValueError):
                pass
        cases.append({"id": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                      "seconds": float(tc.get("time") or 0), "message": message, "properties": props})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"schema": TESTS_SCHEMA, "counts": counts, "cases": cases}


def validate_tests_doc(doc: dict) -> None:
    if doc.get("schema") != TESTS_SCHEMA or not isinstance(doc.get("cases"), list) or not isinstance(
            doc.get("counts"), dict):
        raise SchemaError([f"not a {TESTS_SCHEMA} document"])


def validate_any(doc: dict) -> str:
    """Validate a kept stage document; returns its kind: ``bench`` (a ``seqmix.bench/...`` document, checked against
    the benchmark schema), ``tests`` (the test summary) or ``other`` (a stage's own document with a ``schema`` name,
    kept as returned)."""
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == TESTS_SCHEMA:
        validate_tests_doc(doc)
        return "tests"
    if not isinstance(schema, str) or not schema:
        raise SchemaError(["document has no 'schema' name"])
    if schema.startswith("seqmix.bench/"):
        validate(doc)
        return "bench"
    return "other"


def counts_of(doc: dict) -> dict:
    if doc.get("schema") == TESTS_SCHEMA:
        return dict(doc["counts"])
    out: dict[str, int] = {}
    if not isinstance(doc.get("records"), list):
        return dict(doc["counts"]) if isinstance(doc.get("counts"), dict) else out
    for r in doc["records"]:
        out[r.get("status", "?")] = out.get(r.get("status", "?"), 0) + 1
    return out


def failures_of(doc: dict, limit: int = 12) -> list[str]:
    """Short lines naming what failed in a stage document (failed tests, benchmark points in error)."""
    if doc.get("schema") == TESTS_SCHEMA:
        bad = [c for c in doc["cases"] if c["outcome"] in ("failed", "error")]
        lines = [f"{c['id'].split('::')[-1]}: {(c['message'] or '').splitlines()[0][:200] if c['message'] else ''}"
                 for c in bad]
    else:
        lines = [f"{r.get('name')}/{r.get('backend_used') or r.get('backend')} {r.get('mode')} T={r.get('T')}: "
                 f"{(r.get('reason') or '')[:200]}" for r in doc.get("records", []) if r.get("status") == "error"]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


# ------------------------------------------------------------------------------------------------ running
def _stage_env(stage: gpu_kit.Stage, deadline: float) -> dict:
    env = dict(os.environ)
    for k, v in stage.env.items():
        env.setdefault(k, v)
    env["SEQMIX_BENCH_DEADLINE"] = f"{deadline:.0f}"
    env["SEQMIX_TEST_DEADLINE"] = f"{deadline:.0f}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # the stage imports seqmix from this checkout even when it is not installed
    pp = env.get("PYTHONPATH", "")
    if str(ROOT) not in pp.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join([p for p in (pp, str(ROOT)) if p])
    return env


def run_stage(stage: gpu_kit.Stage, out: Path, log, dry_run: bool, notes: list[str], budget_scale: float) -> dict:
    """Run one stage; returns its entry for kit.json (status ok / failed / timeout / invalid)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"gpu-check-{stage.name}-"))
    argv = [sys.executable] + [a.replace("{notes}", json.dumps(notes)) for a in stage.argv(str(scratch), dry_run)]
    budget = stage.budget_s * budget_scale
    reserve = max(20.0, 0.25 * budget)  # room for the last point or test (incl. its compile) and the report
    t0 = time.time()
    env = _stage_env(stage, t0 + budget - reserve)
    entry = {"name": stage.name, "command": shlex.join(argv), "budget_s": round(budget, 1), "status": "ok",
             "returncode": None, "seconds": None, "document": None, "counts": None, "failures": [], "problem": None}
    log.write(f"\n===== stage {stage.name} (budget {budget:.0f} s): {entry['command']}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        entry["status"] = "timeout"
    entry["returncode"] = rc
    entry["seconds"] = round(time.time() - t0, 1)
    if rc != 0 and entry["status"] == "ok":
        entry["status"] = "failed"
    if stage.document:
        src = scratch / stage.document
        if not src.exists():
            entry["problem"] = f"{stage.document} not written"
            if entry["status"] == "ok":
                entry["status"] = "invalid"
        else:
            try:
                doc = junit_summary(src) if src.suffix == ".xml" else json.loads(src.read_text())
                validate_any(doc)
            except (SchemaError, ValueError, ET.ParseError) as e:
                entry["problem"] = f"{stage.document}: {e}"[:2000]
                entry["status"] = "invalid" if entry["status"] == "ok" else entry["status"]
            else:
                dest = out / f"{stage.name}.json"
                _write_json(dest, doc)
                entry["document"] = dest.name
                entry["counts"] = counts_of(doc)
                entry["failures"] = failures_of(doc)
    log.write(f"===== stage {stage.name}: {entry['status']} (rc {rc}, {entry['seconds']} s)\n")
    log.flush()
    shutil.rmtree(scratch, ignore_errors=True)
    return entry


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def previous_stages(out: Path, dry_run: bool, rerun: list[str]) -> list[dict]:
    """Entries of an earlier run in ``out`` (same kind: dry or not) for the stages not run now, marked ``previous``:
    a second try of one stage (``--stages layers --budget-scale 1.5``) keeps the others' results and log."""
    try:
        old = json.loads((out / "kit.json").read_text())
    except (OSError, ValueError):
        return []
    if old.get("schema") != KIT_SCHEMA or old.get("dry_run") != dry_run:
        return []
    kept = []
    for e in old.get("stages", []):
        if e.get("name") not in rerun and (not e.get("document") or (out / e["document"]).is_file()):
            kept.append({**e, "previous": old.get("date")})
    return kept


def check_wheelhouse(path: Path | None) -> dict:
    """Completeness of the wheelhouse for the plan; ``present: false`` when there is none (then the packages must
    be installed already, as in CI and on a machine set up with ``pip install -e '.[gpu]'``)."""
    if path is None or not path.is_dir():
        return {"present": False, "path": str(path) if path else None, "problems": [],
                "note": "no wheelhouse: using the packages installed in this Python environment"}
    files = sorted(p.name for p in path.glob("*.whl"))
    size = sum(p.stat().st_size for p in path.glob("*.whl"))
    return {"present": True, "path": str(path), "wheels": files, "bytes": size,
            "problems": gpu_kit.wheelhouse_problems(files)}


def summary_table(kit: dict) -> str:
    env = kit["environment"]
    v = env["versions"]
    lines = [
        f"# GPU check{' (DRY RUN, CPU smoke variants)' if kit['dry_run'] else ''}: {kit['date']}",
        "",
        f"GPU: {env['gpu'] or 'none'}; driver {env['driver'] or '-'}; CUDA (torch) {env['torch_cuda'] or '-'}; "
        f"torch {v['torch']}; triton {v['triton']}; fla {v['fla-core']}; mamba-ssm {v['mamba-ssm']}; "
        f"flash-attn {v['flash-attn'] or 'not installed'}; commit {env['commit'] or 'unknown'}",
        f"command: `{kit['command']}`",
    ]
    wh = kit["wheelhouse"]
    lines.append("wheelhouse: " + (f"{len(wh['wheels'])} wheels, {wh['bytes'] / 2**20:.1f} MiB"
                                   + (f", PROBLEMS: {'; '.join(wh['problems'])}" if wh["problems"] else ", complete")
                                   if wh["present"] else wh["note"]))
    lines += [f"note: {n}" for n in kit["notes"]]
    lines += ["", "| stage | status | seconds | budget | counts | document | problem |",
              "|---|---|---|---|---|---|---|"]
    for s in kit["stages"]:
        counts = ", ".join(f"{k} {n}" for k, n in (s["counts"] or {}).items() if n)
        status = s["status"] + (" (earlier run)" if s.get("previous") else "")
        lines.append(f"| {s['name']} | {status} | {s['seconds']} | {s['budget_s']:.0f} | {counts or '-'} | "
                     f"{s['document'] or '-'} | {(s['problem'] or '-')[:160]} |")
    for s in kit["stages"]:
        if s.get("failures"):
            lines += ["", f"{s['name']}: failed / in error:"] + [f"- {f}" for f in s["failures"]]
    lines.append(f"\nall stages ok: {kit['ok']}")
    return "\n".join(lines)


class NoCudaDevice(RuntimeError):
    """A GPU run was asked for where torch sees no CUDA device."""


def run_check(stages: list[gpu_kit.Stage], out: Path, *, dry_run: bool = False, wheelhouse: Path | None = None,
              command: str = "", budget_scale: float = 1.0,
              progress: Callable[[str], None] = logger.info) -> dict:
    """Run ``stages`` into ``out`` (kit.json after every stage, log.txt, one <stage>.json each, summary.md) and
    return the kit document; ``progress`` receives one line when a stage starts and when it ends. Entries of an
    earlier run in ``out`` for stages not run now are kept (:func:`previous_stages`). Raises
    :class:`NoCudaDevice` for a GPU run (``dry_run=False``) where torch sees no CUDA device."""
    out.mkdir(parents=True, exist_ok=True)
    kept = previous_stages(out, dry_run, [s.name for s in stages])
    for old in [out / f"{s.name}.json" for s in stages] + [out / "summary.md"]:
        old.unlink(missing_ok=True)  # no stale document of a stage that runs now
    if not kept:
        for old in list(out.glob("*.json")) + [out / "log.txt"]:
            old.unlink(missing_ok=True)
    wheelhouse_doc = check_wheelhouse(wheelhouse if wheelhouse else ROOT / ".gpu-wheels")
    env = environment()
    if not dry_run and not env["cuda_available"]:
        raise NoCudaDevice("no CUDA device visible to torch; use --dry-run on a CPU machine")
    notes = kit_notes(env)
    kit = {"schema": KIT_SCHEMA, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "dry_run": dry_run, "environment": env, "wheelhouse": wheelhouse_doc, "notes": notes,
           "tolerances": gpu_kit.TOLERANCES, "contract_plan": gpu_kit.contract_plan(), "stages": kept, "ok": False}
    order = [s.name for s in gpu_kit.STAGES]
    t0 = time.time()
    with open(out / "log.txt", "a" if kept else "w") as log:
        log.write(f"gpu check: {kit['command']}\n{json.dumps(env, indent=1)}\n")
        for stage in stages:
            progress(f"[gpu-check] stage {stage.name} (budget {stage.budget_s * budget_scale:.0f} s) ...")
            entry = run_stage(stage, out, log, dry_run, notes, budget_scale)
            progress(f"[gpu-check] stage {stage.name}: {entry['status']} in {entry['seconds']} s")
            kit["stages"] = [e for e in kit["stages"] if e["name"] != stage.name] + [entry]
            kit["stages"].sort(key=lambda e: order.index(e["name"]) if e["name"] in order else len(order))
            kit["seconds"] = round(time.time() - t0, 1)
            kit["ok"] = all(s["status"] == "ok" for s in kit["stages"]) and not wheelhouse_doc["problems"]
            _write_json(out / "kit.json", kit)  # after every stage: a killed run still leaves what it did
    (out / "summary.md").write_text(summary_table(kit) + "\n")
    return kit
