"""Command line of the GPU kit (``scripts/gpu_check.sh`` calls it after installing the wheelhouse); the runner is
:func:`seqmix.bench.gpu_check.run_check`. The CLI layer prints: progress lines, then the summary table last.

    python -m seqmix.bench.gpu_check_cli [--out DIR] [--stages a,b] [--dry-run] [--wheelhouse DIR] [--command STR]
                                         [--budget-scale X]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from seqmix.bench import gpu_kit
from seqmix.bench.gpu_check import NoCudaDevice, run_check, summary_table

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description="Run the GPU kit's stages (seqmix.bench.gpu_kit).")
    ap.add_argument("--out", default="runs/gpu-check", help="output directory (default runs/gpu-check)")
    ap.add_argument("--stages", default=",".join(s.name for s in gpu_kit.STAGES),
                    help=f"comma-separated subset of: {', '.join(s.name for s in gpu_kit.STAGES)}")
    ap.add_argument("--dry-run", action="store_true", help="CPU: check and smoke-run every stage")
    ap.add_argument("--wheelhouse", default=None, help="wheelhouse directory to check (default .gpu-wheels)")
    ap.add_argument("--command", default=None, help="the command line as typed (recorded)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every stage budget (e.g. 2 for a rerun)")
    args = ap.parse_args(argv)
    stages = gpu_kit.stage_by_name([s for s in args.stages.split(",") if s])
    out = Path(args.out)
    command = args.command or shlex.join([sys.executable, "-m", "seqmix.bench.gpu_check_cli",
                                          *(sys.argv[1:] if argv is None else argv)])
    try:
        kit = run_check(stages, out, dry_run=args.dry_run, command=command, budget_scale=args.budget_scale,
                        wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
                        progress=lambda line: print(line, flush=True))
    except NoCudaDevice as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))} (log: {out / 'log.txt'})\n")
    print(summary_table(kit))
    return 0 if kit["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
