"""``seqmix bench ...`` subcommands (registered in :data:`BENCH_COMMANDS`) and the GPU kit's command line
(:func:`gpu_check_main`, ``python -m seqmix.bench.cli``). The CLI layer prints results.

Each command's options are the fields of its suite's config class (a :class:`~seqmix.bench.driver.BenchConfig`
subclass, or :class:`~seqmix.bench.rollout.RolloutBenchConfig`): flag names, types and help (the class docstring's
``Attributes:`` section) come from there, so a new field is a new option with no edit here. An option left unset
takes the value of the preset the command picks (``--quick``: ``quick_config()``; ``--device cuda``: ``gpu()``
where the suite has one; otherwise the class defaults); its help lists those values. ``--out`` and the few options
that are not config fields (``--block_f``) are declared here.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from typing import Any, Callable

import docstring_parser

from seqmix.bench.dit import DiTBenchConfig
from seqmix.bench.layers import LayerBenchConfig
from seqmix.bench.rollout import RolloutBenchConfig
from seqmix.bench.ttt_kernels import TTTKernelBenchConfig

__all__ = ["BENCH_COMMANDS", "bench_layers", "bench_dit", "bench_ttt_kernels", "bench_rollout", "config_command",
           "gpu_check_main", "preset_config"]

_P = inspect.Parameter


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help from the ``Attributes:`` sections of ``cls`` and its bases (the class's own wins);
    a grouped entry (``dim, heads: ...``) documents each of its fields, prefixed with the group's names."""
    fields = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for p in docstring_parser.parse(klass.__dict__.get("__doc__") or "").params:
            names = [n.strip() for n in p.arg_name.split(",")]
            if p.args[0] != "attribute" or not p.description or not set(names) <= fields:
                continue
            text = " ".join(p.description.split())
            for name in names:
                docs[name] = f"({p.arg_name}) {text}" if len(names) > 1 else text
    return docs


def _fields(cls: type) -> list[dataclasses.Field]:
    """The suite's own fields first (what a user tunes most), then the shared ones."""
    own = cls.__dict__.get("__annotations__", {})
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def _presets(cls: type) -> dict[str, Any]:
    """The configs an unset option can take its value from, labelled as the help shows them."""
    presets = {"default": cls(), "--quick": cls.quick_config()}
    if hasattr(cls, "gpu"):
        presets["--device cuda"] = cls.gpu()
    return presets


def preset_config(cls: type, given: dict[str, Any], quick: bool):
    """``cls``'s preset (``quick_config``, ``gpu`` for a CUDA device where the suite has one, or the defaults)
    with the ``given`` fields replaced."""
    device = given.get("device", _default(cls, "device"))
    if quick:
        return cls.quick_config(**given)
    if device.split(":")[0] == "cuda" and hasattr(cls, "gpu"):
        return cls.gpu(**given)
    return cls(**given)


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _unset_help(name: str, presets: dict[str, Any]) -> str:
    values = {label: getattr(cfg, name) for label, cfg in presets.items()}
    default = values.pop("default")
    others = "; ".join(f"{label}: {v!r}" for label, v in values.items() if v != default)
    return f"Unset: {default!r}" + (f" ({others})" if others else "") + "."


def config_command(config_cls: type, run: Callable[..., None], summary: str, *,
                   extras: tuple[tuple[str, Any, Any, str], ...] = (), hidden: tuple[str, ...] = ()) -> Callable:
    """A command whose options are ``config_cls``'s fields (each ``None`` = unset) plus ``extras``
    (``(name, type, default, help)``, not config fields) and ``--quick``; it calls ``run(given, quick, **extras)``
    with ``given`` the config fields that were set. ``hidden``: fields that are no options (said why at the call)."""
    hints = typing.get_type_hints(config_cls)
    docs, presets = field_docs(config_cls), _presets(config_cls)
    fields = [f for f in _fields(config_cls) if f.name not in hidden and f.name != "quick"]
    params, helps = [], {}
    for f in fields:
        params.append(_P(f.name, _P.KEYWORD_ONLY, default=None, annotation=typing.Optional[hints[f.name]]))
        helps[f.name] = f"{docs.get(f.name, '')} {_unset_help(f.name, presets)}".strip()
    for name, annotation, default, text in extras:
        params.append(_P(name, _P.KEYWORD_ONLY, default=default, annotation=annotation))
        helps[name] = text
    params.append(_P("quick", _P.KEYWORD_ONLY, default=False, annotation=bool))
    helps["quick"] = docs.get("quick", "a smoke run: small sizes, numbers not meaningful.")
    extra_names = [e[0] for e in extras]

    def command(**kw) -> None:
        quick = bool(kw.pop("quick", False))
        extra = {n: kw.pop(n) for n in extra_names}
        run({k: v for k, v in kw.items() if v is not None}, quick, **extra)

    command.__signature__ = inspect.Signature(params, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary.strip() + "\n\nArgs:\n" + "".join(f"    {n}: {h}\n" for n, h in helps.items())
    return command


def _wrote(paths: dict) -> None:
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


_SMOKE = " -- QUICK SMOKE RUN, numbers not meaningful"


# --------------------------------------------------------------------------------------------------- layers
def _run_layers(given: dict, quick: bool, out: str | None) -> None:
    from seqmix.bench.layers import markdown_table, run_layer_bench, write_report

    cfg = preset_config(LayerBenchConfig, given, quick)
    kind = cfg.device.split(":")[0]
    res = run_layer_bench(cfg)
    paths = write_report(res, out or ("runs/bench/layers-quick" if quick else f"benchmarks/results/layers-{kind}"))
    print(f"Layer benchmark on {cfg.device} (width {cfg.dim}, {cfg.heads} heads, {cfg.dtype}, threads "
          f"{res.run.machine['torch_threads']})" + (_SMOKE if quick else ""))
    print(markdown_table(res))
    _wrote(paths)


bench_layers = config_command(LayerBenchConfig, _run_layers, """
Layer speed and memory: every registry layer and backend against sequence length T.

Time, tokens/s, peak memory, FLOP / byte estimates and roofline fractions of every registry layer and backend
against T, in modes fwd, fwd+bwd, decode (per token) and decode-frame (per frame).

Defaults by device: CPU width 256, T 512..16384, fp32; CUDA the paper scale (width 3072, 48 heads, bf16,
T 1024..341550, paper windows); --quick a seconds-long smoke run. Unset options take the preset's value.
""", extras=(("out", typing.Optional[str], None, "directory for results.json / results.md / results.png (default "
              "benchmarks/results/layers-<device>; quick: runs/bench/layers-quick)."),))


# ------------------------------------------------------------------------------------------------------ dit
def _run_dit(given: dict, quick: bool, out: str | None) -> None:
    from seqmix.bench.dit import markdown_table, run_dit_bench, write_report

    cfg = preset_config(DiTBenchConfig, given, quick)
    kind = cfg.device.split(":")[0]
    res = run_dit_bench(cfg)
    paths = write_report(res, out or ("runs/bench/dit-quick" if quick else f"benchmarks/results/dit-{kind}"))
    scale = ("REDUCED CPU SCALE" if cfg.reduced else "paper-like scale") + (_SMOKE if quick else "")
    print(f"SegmentedDiT efficiency on {cfg.device}, {scale}: {cfg.num_layers} block(s) of width {cfg.dim}, "
          f"{cfg.tokens_per_frame} tokens per latent frame (paper: 1350), {cfg.text_len} text tokens per segment, "
          f"{cfg.dtype}")
    print(markdown_table(res))
    _wrote(paths)


bench_dit = config_command(DiTBenchConfig, _run_dit, """
DiT efficiency: relative cost of each global layer in the segmented video DiT at 3 to 63 s.

The paper's efficiency study in kind: SegmentedDiT inference (fwd) and training (fwd+bwd) time at the
3/9/18/30/63 s layouts for local attention only, full attention (one window over the whole video, and local +
a full_attn global layer) and local + each global layer, relative to local attention only.

CPU default: REDUCED scale (2 blocks of width 64, 48 tokens per latent frame, fp32); CUDA: close to the paper
(width 3072, 1350 tokens per frame, 226 text tokens per segment, bf16, one block). Unset options take the
preset's value.
""", extras=(("out", typing.Optional[str], None, "output directory (default benchmarks/results/dit-<device>; "
              "quick: runs/bench/dit-quick)."),),
    hidden=("reduced",))  # a label the preset sets (said in every report), not a knob


# ------------------------------------------------------------------------------------------------ ttt-kernels
def _run_ttt_kernels(given: dict, quick: bool, out: str | None, block_f: int | None) -> None:
    from seqmix.utils.triton_compat import triton_interpreter

    if quick:  # a smoke run goes to the GPU if there is one, else to the CPU
        given.setdefault("device", "cuda")
        if given["device"] == "cuda" and not _cuda_available():
            given["device"] = "cpu"
    device = given.get("device", _default(TTTKernelBenchConfig, "device"))
    if device.split(":")[0] == "cpu":
        # The kernels run on CPU only under the interpreter, which must be on before they are first imported.
        if "seqmix.kernels.ttt_triton" in sys.modules and not triton_interpreter():
            raise RuntimeError("the TTT kernels were imported without TRITON_INTERPRET=1; cannot run them on CPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if given.get("num_warps") is not None:
        os.environ["SEQMIX_TTT_NUM_WARPS"] = str(given["num_warps"])
    if block_f is not None:
        os.environ["SEQMIX_TTT_BLOCK_F"] = str(block_f)
    from seqmix.bench.ttt_kernels import markdown_table, run_ttt_kernel_bench, write_report

    cfg = preset_config(TTTKernelBenchConfig, given, quick)
    kind = cfg.device.split(":")[0]
    res = run_ttt_kernel_bench(cfg)
    paths = write_report(res, out or ("runs/bench/ttt-kernels-quick" if quick
                                      else f"benchmarks/results/ttt-kernels-{kind}"))
    print(f"TTT kernel benchmark on {cfg.device} (B={cfg.batch}, H={cfg.heads}, K={cfg.head_dim}, {cfg.dtype})"
          + (_SMOKE if quick else ""))
    print(markdown_table(res))
    _wrote(paths)


bench_ttt_kernels = config_command(TTTKernelBenchConfig, _run_ttt_kernels, """
TTT kernels: the fused Triton scans against the PyTorch scan (and fla's chunk Gated DeltaNet).

The fused Triton scan (backend "triton") against the PyTorch dual-form scan (backend
"torch"), fwd and fwd+bwd over T: time, tokens/s, peak memory, scan matmul FLOPs and achieved TFLOP/s.

Default: the paper's shapes on one GPU (B=1, 48 heads, head dim 64, TTT-MLP hidden 256, T = 18,048 .. 341,550,
bf16 inputs, non-causal). --quick: a smoke run at toy sizes (on CPU through the Triton interpreter when there is
no GPU).
""", extras=(("out", typing.Optional[str], None, "output directory (default benchmarks/results/ttt-kernels-<device>;"
              " quick: runs/bench/ttt-kernels-quick)."),
             ("block_f", typing.Optional[int], None, "with num_warps, TTT-MLP's hidden chunk (default 32; 16 fits "
              "the causal backward at N = 64).")))


# ---------------------------------------------------------------------------------------------------- rollout
def _run_rollout(given: dict, quick: bool, out: str | None) -> None:
    from seqmix.bench.rollout import markdown_table, run_rollout_bench, write_report

    cfg = preset_config(RolloutBenchConfig, given, quick)
    kind = cfg.device.split(":")[0]
    if out is None:
        out = ("runs/bench/rollout-quick" if quick else f"runs/bench/rollout-{kind}-stand-in" if cfg.stand_ins
               else f"benchmarks/results/rollout-{kind}")
    res = run_rollout_bench(cfg)
    paths = write_report(res, out)
    print(f"World-model rollout on {cfg.device} (preset {cfg.size}, {cfg.frames} frames, {cfg.num_steps} DDIM steps "
          f"per frame)" + (_SMOKE if quick else "") + (f" -- STAND-INS {cfg.stand_ins}" if cfg.stand_ins else ""))
    print(markdown_table(res))
    _wrote(paths)


bench_rollout = config_command(RolloutBenchConfig, _run_rollout, """
World-model rollout: per-frame time and peak memory over 1,000 generated frames.

Per-frame time and peak memory over a rollout of 1,000 frames for ours (blockwise_ssm +
frame_local_attn), block-wise TTT (+ frame_local_attn), frame-local attention only and a full-context causal
Transformer; first-100 vs last-100 frame ratios. Models whose layers are not registered are recorded as skipped.
""", extras=(("out", typing.Optional[str], None, "output directory (default benchmarks/results/rollout-<device>; "
              "quick or stand-ins: runs/bench/...)."),))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


BENCH_COMMANDS = {"layers": bench_layers, "dit": bench_dit, "ttt-kernels": bench_ttt_kernels, "rollout": bench_rollout}


def gpu_check_main(argv: list[str] | None = None) -> int:
    """The GPU kit's command line (``scripts/gpu_check.sh`` calls it after installing the wheelhouse): run the
    stages of :mod:`seqmix.bench.gpu_kit` with :func:`seqmix.bench.gpu_check.run_check`, printing progress lines,
    then the summary table last. Returns the exit status (0: every stage passed, 1: one failed, 2: no GPU).

        python -m seqmix.bench.cli [--out DIR] [--stages a,b] [--dry-run] [--wheelhouse DIR] [--command STR]
                                   [--budget-scale X]
    """
    import argparse
    import shlex
    from pathlib import Path

    from seqmix.bench import gpu_kit
    from seqmix.bench.gpu_check import NoCudaDevice, run_check, summary_table

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
    command = args.command or shlex.join([sys.executable, "-m", "seqmix.bench.cli",
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



if __name__ == "__main__":  # python -m seqmix.bench.cli: the GPU kit (`seqmix bench ...` is seqmix.cli's)
    sys.exit(gpu_check_main())
