#!/usr/bin/env python3
"""Store the output of a GPU check (``scripts/gpu_check.sh --out DIR``) under ``benchmarks/results/``.

    python scripts/gpu_import.py RESULTS_DIR [--dest benchmarks/results] [--name NAME] [--force] [--allow-dry-run]

Reads ``RESULTS_DIR/kit.json`` and every stage document it lists, validates each (benchmark documents against
``seqmix.bench.schema``, the test summary against its own shape) and writes, atomically, a new folder
``<dest>/gpu-<device>-<date>/`` (e.g. ``gpu-h200-2026-11-30``):

    README.md              GPU model, driver, CUDA, torch / triton / library versions, commit, the exact command of
                           the run and of each stage, the stage table and notes
    kit.json, tests.json   as returned
    <stage>/results.json   each benchmark document, with ``meta.gpu_check`` (GPU, driver, versions, commands) added
    <stage>/results.md     its records as a table
    log.txt                the combined log

A dry run (CPU) is refused unless ``--allow-dry-run`` (tests use it on the dry run's output).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, str(ROOT))

from seqmix.bench.gpu_check import KIT_SCHEMA, validate_any  # noqa: E402
from seqmix.bench.schema import SchemaError  # noqa: E402


def device_slug(kit: dict) -> str:
    """``NVIDIA H200`` -> ``h200``; a dry run -> ``cpu-dry-run``."""
    gpu = kit["environment"].get("gpu")
    if not gpu:
        return "cpu-dry-run"
    s = re.sub(r"^nvidia\s+", "", gpu.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"


def records_table(doc: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"# {doc['suite']}: {doc['meta'].get('command', '')}", "",
             "| name | backend | mode | T | status | median ms | tokens/s | frac matmul peak | frac bandwidth | "
             "reason |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        ms = None if r.get("median_s") is None else r["median_s"] * 1e3
        lines.append(f"| {r['name']} | {r.get('backend_used') or r['backend']} | {r['mode']} | {r['T']} | "
                     f"{r['status']} | {f(ms, '.4g')} | {f(r.get('tokens_per_s'), '.4g')} | "
                     f"{f(r.get('frac_matmul_peak'), '.3f')} | {f(r.get('frac_bandwidth'), '.3f')} | "
                     f"{(r.get('reason') or '').replace('|', '/')[:120]} |")
    return "\n".join(lines) + "\n"


def readme(kit: dict, summary: str | None) -> str:
    env, v = kit["environment"], kit["environment"]["versions"]
    gpus = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory_mib']} MiB, sm {g['compute_capability']})"
                     for g in env.get("gpus", [])) or "none"
    lines = [f"# GPU check {kit['date']}{' (dry run)' if kit['dry_run'] else ''}", "",
             f"- GPU: {gpus}", f"- CUDA (torch): {env.get('torch_cuda')}; cuDNN {env.get('cudnn')}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
             f"- commit: {env.get('commit')}{' (with local changes)' if env.get('dirty') else ''}",
             f"- command: `{kit['command']}`", ""]
    lines += ["## Stages", ""] + [f"- `{s['name']}`: `{s['command']}`" for s in kit["stages"]] + [""]
    if summary:
        lines += ["## Summary (as printed by the run)", "", summary.strip(), ""]
    return "\n".join(lines)


def import_results(src: Path, dest_root: Path, name: str | None = None, force: bool = False,
                   allow_dry_run: bool = False) -> Path:
    kit_path = src / "kit.json"
    if not kit_path.is_file():
        raise SystemExit(f"error: {kit_path} not found: RESULTS_DIR must be the --out folder of scripts/gpu_check.sh")
    kit = json.loads(kit_path.read_text())
    if kit.get("schema") != KIT_SCHEMA:
        raise SystemExit(f"error: {kit_path} is not a {KIT_SCHEMA} document (schema {kit.get('schema')!r})")
    if kit["dry_run"] and not allow_dry_run:
        raise SystemExit("error: this is a dry run (CPU smoke variants); pass --allow-dry-run to import it anyway")
    name = name or f"gpu-{device_slug(kit)}-{kit['date'][:10]}"
    dest = dest_root / name
    if dest.exists() and not force:
        raise SystemExit(f"error: {dest} exists (use --force to replace it or --name to choose another)")
    env = kit["environment"]
    stamp = {"gpu": env.get("gpu"), "driver": env.get("driver"), "torch_cuda": env.get("torch_cuda"),
             "torch": env["versions"].get("torch"), "triton": env["versions"].get("triton"),
             "commit": env.get("commit"), "kit_command": kit["command"]}
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_root))
    try:
        imported = []
        for stage in kit["stages"]:
            if not stage.get("document"):
                continue
            doc = json.loads((src / stage["document"]).read_text())
            try:
                kind = validate_any(doc)
                if kind == "bench":
                    doc["meta"]["gpu_check"] = {**stamp, "stage": stage["name"], "stage_command": stage["command"],
                                                "stage_status": stage["status"]}
                    validate_any(doc)
            except SchemaError as e:
                raise SystemExit(f"error: {stage['document']} is invalid: {e}") from None
            if kind == "bench":
                (tmp / stage["name"]).mkdir()
                (tmp / stage["name"] / "results.json").write_text(json.dumps(doc, indent=1))
                (tmp / stage["name"] / "results.md").write_text(records_table(doc))
            else:
                (tmp / f"{stage['name']}.json").write_text(json.dumps(doc, indent=1))
            imported.append(stage["name"])
        shutil.copy2(kit_path, tmp / "kit.json")
        if (src / "log.txt").is_file():
            shutil.copy2(src / "log.txt", tmp / "log.txt")
        summary = (src / "summary.md").read_text() if (src / "summary.md").is_file() else None
        (tmp / "README.md").write_text(readme(kit, summary))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"imported {', '.join(imported) or 'no documents'} into {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path, help="the --out folder of scripts/gpu_check.sh")
    ap.add_argument("--dest", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default=None, help="folder name (default gpu-<device>-<date>)")
    ap.add_argument("--force", action="store_true", help="replace an existing folder of that name")
    ap.add_argument("--allow-dry-run", action="store_true", help="import a CPU dry run (for tests)")
    a = ap.parse_args(argv)
    import_results(a.results_dir, a.dest, a.name, a.force, a.allow_dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
