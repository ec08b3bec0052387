"""``seqmix bench ...`` subcommands (registered in :data:`BENCH_COMMANDS`). The CLI layer prints results."""

from __future__ import annotations

__all__ = ["BENCH_COMMANDS", "bench_layers", "bench_dit", "bench_ttt_kernels", "bench_rollout"]


def bench_layers(
    layers: list[str] | None = None,
    lengths: list[int] | None = None,
    modes: list[str] | None = None,
    backends: list[str] | None = None,
    dim: int | None = None,
    heads: int | None = None,
    batch: int = 1,
    repeats: int | None = None,
    max_call_seconds: float | None = None,
    frame_tokens: int | None = None,
    layer_configs: dict[str, dict] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    out: str | None = None,
    notes: list[str] | None = None,
    quick: bool = False,
) -> None:
    """Layer benchmark: time, tokens/s, peak memory, FLOP / byte estimates and roofline fractions of every registry
    layer and backend against T, in modes fwd, fwd+bwd, decode (per token) and decode-frame (per frame).

    Defaults by device: CPU width 256, T 512..16384, fp32; CUDA the paper scale (width 3072, 48 heads, bf16,
    T 1024..341550, paper windows); ``--quick`` a seconds-long smoke run. Unset options take the preset's value.

    Args:
        layers: registry names (default: all).
        lengths: sequence lengths T (decode modes: context lengths).
        modes: any of ``fwd``, ``fwd+bwd``, ``decode``, ``decode-frame`` (default: all).
        backends: ``all`` (default: every non-reference backend, side by side), ``auto``, ``reference`` (add the
            naive twins) and/or backend names; backends that cannot run here are recorded as skipped.
        dim: model width for every layer.
        heads: number of heads for every layer.
        batch: batch size.
        repeats: timed calls per point (median reported).
        max_call_seconds: skip points predicted to take longer per call (and the longer lengths).
        frame_tokens: tokens per decode-frame call (CPU 256, CUDA 1350 = one CogVideoX latent frame).
        layer_configs: per-layer config overrides, e.g. ``{"swa": {"window": 512}}`` (replaces the preset's).
        threads: torch CPU threads (1 gives steadier timings on a shared machine).
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16``, ... (default fp32 on CPU, bf16 on CUDA).
        out: directory for results.json / results.md / results.png (default benchmarks/results/layers-<device>;
            quick: runs/bench/layers-quick).
        notes: free-text caveats stored with the results.
        quick: small sizes for a smoke run (CI).
    """
    from seqmix.bench.layers import LayerBenchConfig, markdown_table, run_layer_bench, write_report

    kind = device.split(":")[0]
    over = {k: v for k, v in dict(layers=layers, lengths=lengths, modes=modes, backends=backends, dim=dim, heads=heads,
                                  repeats=repeats, max_call_seconds=max_call_seconds, frame_tokens=frame_tokens,
                                  layer_configs=layer_configs, threads=threads, dtype=dtype, notes=notes).items()
            if v is not None}
    over.update(batch=batch, device=device)
    if quick:
        cfg = LayerBenchConfig.quick_config(**over)
    elif kind == "cuda":
        cfg = LayerBenchConfig.gpu(**over)
    else:
        cfg = LayerBenchConfig(**over)
    out = out or ("runs/bench/layers-quick" if quick else f"benchmarks/results/layers-{kind}")
    res = run_layer_bench(cfg)
    paths = write_report(res, out)
    print(f"Layer benchmark on {device} (width {cfg.dim}, {cfg.heads} heads, {cfg.dtype}, threads "
          f"{res.run.machine['torch_threads']})" + (" -- QUICK SMOKE RUN, numbers not meaningful" if quick else ""))
    print(markdown_table(res))
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


def bench_dit(
    variants: list[str] | None = None,
    durations: list[int] | None = None,
    modes: list[str] | None = None,
    num_layers: int | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    latent_height: int | None = None,
    latent_width: int | None = None,
    text_len: int | None = None,
    mixer_configs: dict[str, dict] | None = None,
    gradient_checkpointing: bool = False,
    repeats: int | None = None,
    max_call_seconds: float | None = None,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    out: str | None = None,
    notes: list[str] | None = None,
    quick: bool = False,
) -> None:
    """The paper's efficiency study in kind: SegmentedDiT inference (fwd) and training (fwd+bwd) time at the
    3/9/18/30/63 s layouts for local attention only, full attention (one window over the whole video, and local +
    a full_attn global layer) and local + each global layer, relative to local attention only.

    CPU default: REDUCED scale (2 blocks of width 64, 48 tokens per latent frame, fp32); CUDA: close to the paper
    (width 3072, 1350 tokens per frame, 226 text tokens per segment, bf16, one block). Unset options take the
    preset's value.

    Args:
        variants: ``local``, ``full_window`` and any registry layer that mixes tokens (as a global layer; default:
            all, see ``seqmix.bench.dit.variants()``).
        durations: seconds among 3, 9, 18, 30, 63 (default: all).
        modes: ``fwd`` (inference) and / or ``fwd+bwd`` (training).
        num_layers: DiT blocks.
        heads: attention heads.
        head_dim: attention head dim (divisible by 16).
        latent_height: latent grid height per frame.
        latent_width: latent grid width per frame.
        text_len: text tokens per segment.
        mixer_configs: per-global-layer overrides, e.g. ``{"ttt_mlp": {"mini_batch_size": 16}}``.
        gradient_checkpointing: recompute blocks in backward.
        repeats: timed calls per point (median reported).
        max_call_seconds: skip points predicted to take longer per call (and the longer durations).
        threads: torch CPU threads (1 gives steadier timings on a shared machine).
        device: ``cpu`` or ``cuda``.
        dtype: default fp32 on CPU, bf16 on CUDA.
        out: output directory (default benchmarks/results/dit-<device>; quick: runs/bench/dit-quick).
        notes: free-text caveats stored with the results.
        quick: tiny sizes, 3 s and 9 s only (CI smoke run).
    """
    from seqmix.bench.dit import DiTBenchConfig, markdown_table, run_dit_bench, write_report

    kind = device.split(":")[0]
    over = {k: v for k, v in dict(variants=variants, durations=durations, modes=modes, num_layers=num_layers,
                                  heads=heads, head_dim=head_dim, latent_height=latent_height,
                                  latent_width=latent_width, text_len=text_len, mixer_configs=mixer_configs,
                                  repeats=repeats, max_call_seconds=max_call_seconds, threads=threads, dtype=dtype,
                                  notes=notes).items() if v is not None}
    over.update(device=device, gradient_checkpointing=gradient_checkpointing)
    if quick:
        cfg = DiTBenchConfig.quick_config(**over)
    elif kind == "cuda":
        cfg = DiTBenchConfig.gpu(**over)
    else:
        cfg = DiTBenchConfig(**over)
    out = out or ("runs/bench/dit-quick" if quick else f"benchmarks/results/dit-{kind}")
    res = run_dit_bench(cfg)
    paths = write_report(res, out)
    scale = ("REDUCED CPU SCALE" if cfg.reduced else "paper-like scale") + \
        (" -- QUICK SMOKE RUN, numbers not meaningful" if quick else "")
    print(f"SegmentedDiT efficiency on {device}, {scale}: {cfg.num_layers} block(s) of width {cfg.dim}, "
          f"{cfg.tokens_per_frame} tokens per latent frame (paper: 1350), {cfg.text_len} text tokens per segment, "
          f"{cfg.dtype}")
    print(markdown_table(res))
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


def bench_ttt_kernels(
    kinds: list[str] | None = None,
    lengths: list[int] | None = None,
    modes: list[str] | None = None,
    backends: list[str] | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    mini_batch: dict[str, int] | None = None,
    causal: bool = False,
    dtype: str | None = None,
    checkpoint_group: int = 0,
    num_warps: int | None = None,
    block_f: int | None = None,
    repeats: int | None = None,
    device: str = "cuda",
    out: str | None = None,
    notes: list[str] | None = None,
    quick: bool = False,
) -> None:
    """TTT kernel benchmark: the fused Triton scan (backend "triton") against the PyTorch dual-form scan (backend
    "torch"), fwd and fwd+bwd over T: time, tokens/s, peak memory, scan matmul FLOPs and achieved TFLOP/s.

    Default: the paper's shapes on one GPU (B=1, 48 heads, head dim 64, TTT-MLP hidden 256, T = 18,048 .. 341,550,
    bf16 inputs, non-causal). ``--quick``: a CPU smoke run through the Triton interpreter at toy sizes.

    Args:
        kinds: ``mlp`` and / or ``linear`` (default both).
        lengths: sequence lengths T.
        modes: ``fwd`` and / or ``fwd+bwd``.
        backends: ``triton``, ``torch`` (default both), ``fla_gdn`` (fla chunk Gated DeltaNet, same B, T, H, K).
        heads: number of heads H.
        head_dim: head dim K (16, 32, 64 or 128 for the kernels).
        mini_batch: tokens per inner step per kind, e.g. ``{"mlp": 64, "linear": 16}``.
        causal: causal (dual-form) instead of the video (non-causal) form.
        dtype: dtype of q, k, r, eta given to the kernels (default bf16 on GPU, fp32 for --quick).
        checkpoint_group: mini-batches per saved state for fwd+bwd (0: ~sqrt(#mini-batches)).
        num_warps: pin the kernels' launch config instead of autotuning (bounds compile time on a fresh machine:
            autotuning compiles 2 configs per TTT-Linear kernel and 4 per TTT-MLP kernel, up to ~1 min each).
        block_f: with ``num_warps``, TTT-MLP's hidden chunk (default 32; 16 fits the causal backward at N = 64).
        repeats: timed calls per point.
        device: ``cuda`` (``cpu`` only with --quick).
        out: output directory (default benchmarks/results/ttt-kernels-<device>; quick: runs/bench/ttt-kernels-quick).
        notes: free-text caveats stored with the results.
        quick: toy sizes on CPU through the Triton interpreter.
    """
    import os
    import sys

    from seqmix.utils.triton_compat import triton_interpreter

    if quick and device == "cuda" and not _cuda_available():
        device = "cpu"
    if device.split(":")[0] == "cpu":
        # The kernels run on CPU only under the interpreter, which must be on before they are first imported.
        if "seqmix.kernels.ttt_triton" in sys.modules and not triton_interpreter():
            raise RuntimeError("the TTT kernels were imported without TRITON_INTERPRET=1; cannot run them on CPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if num_warps is not None:
        os.environ["SEQMIX_TTT_NUM_WARPS"] = str(num_warps)
    if block_f is not None:
        os.environ["SEQMIX_TTT_BLOCK_F"] = str(block_f)
    from seqmix.bench.ttt_kernels import TTTKernelBenchConfig, markdown_table, run_ttt_kernel_bench, write_report

    over = {k: v for k, v in dict(kinds=kinds, lengths=lengths, modes=modes, backends=backends, heads=heads,
                                  head_dim=head_dim, mini_batch=mini_batch, dtype=dtype, repeats=repeats,
                                  notes=notes, num_warps=num_warps).items() if v is not None}
    over.update(causal=causal, checkpoint_group=checkpoint_group, device=device)
    cfg = TTTKernelBenchConfig.quick_config(**over) if quick else TTTKernelBenchConfig(**over)
    kind = device.split(":")[0]
    out = out or ("runs/bench/ttt-kernels-quick" if quick else f"benchmarks/results/ttt-kernels-{kind}")
    res = run_ttt_kernel_bench(cfg)
    paths = write_report(res, out)
    print(f"TTT kernel benchmark on {device} (B={cfg.batch}, H={cfg.heads}, K={cfg.head_dim}, {cfg.dtype})"
          + (" -- QUICK SMOKE RUN, numbers not meaningful" if quick else ""))
    print(markdown_table(res))
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


def bench_rollout(
    models: list[str] | None = None,
    frames: int | None = None,
    size: str | None = None,
    model_overrides: dict | None = None,
    mixer_configs: dict[str, dict] | None = None,
    num_steps: int | None = None,
    window: int | None = None,
    memory_every: int | None = None,
    stand_ins: dict[str, str] | None = None,
    batch: int = 1,
    threads: int | None = 1,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | None = None,
    notes: list[str] | None = None,
    quick: bool = False,
) -> None:
    """World-model rollout: per-frame time and peak memory over a rollout of 1,000 frames for ours (blockwise_ssm +
    frame_local_attn), block-wise TTT (+ frame_local_attn), frame-local attention only and a full-context causal
    Transformer; first-100 vs last-100 frame ratios. Models whose layers are not registered are recorded as skipped.

    Args:
        models: ours, blockwise_ttt, frame_local_attn, causal_transformer (default: all).
        frames: frames generated per model (default 1000).
        size: WorldModel size preset (default cpu-small: width 64, 2 layers, 4 x 4 latent grid).
        model_overrides: other WorldModelConfig fields, e.g. ``{"dim": 128, "grid": [8, 8]}``.
        mixer_configs: per registry name overrides, e.g. ``{"blockwise_ssm": {"d_state": 16}}``.
        num_steps: DDIM steps per generated frame (default 4).
        window: frames per record; the first and last windows give the ratios (default 100).
        memory_every: peak memory every this many frames (default 10).
        stand_ins: SMOKE ONLY: replace missing layers, e.g. ``{"frame_local_attn": "swa"}`` (labelled stand-in;
            written under runs/bench/ by default).
        batch: sequences rolled out together.
        threads: torch CPU threads (1 gives steadier timings on a shared machine).
        device: ``cpu`` or ``cuda``.
        dtype: parameter / activation dtype.
        out: output directory (default benchmarks/results/rollout-<device>; quick or stand-ins: runs/bench/...).
        notes: free-text caveats stored with the results.
        quick: tiny model, 6 frames (smoke run).
    """
    from seqmix.bench.rollout import RolloutBenchConfig, markdown_table, run_rollout_bench, write_report

    over = {k: v for k, v in dict(models=models, frames=frames, size=size, model_overrides=model_overrides,
                                  mixer_configs=mixer_configs, num_steps=num_steps, window=window,
                                  memory_every=memory_every, stand_ins=stand_ins, notes=notes).items()
            if v is not None}
    over.update(batch=batch, threads=threads, device=device, dtype=dtype)
    cfg = RolloutBenchConfig.quick_config(**over) if quick else RolloutBenchConfig(**over)
    kind = device.split(":")[0]
    if out is None:
        out = ("runs/bench/rollout-quick" if quick else f"runs/bench/rollout-{kind}-stand-in" if cfg.stand_ins
               else f"benchmarks/results/rollout-{kind}")
    res = run_rollout_bench(cfg)
    paths = write_report(res, out)
    print(f"World-model rollout on {device} (preset {cfg.size}, {cfg.frames} frames, {cfg.num_steps} DDIM steps per "
          f"frame)" + (" -- QUICK SMOKE RUN, numbers not meaningful" if quick else "")
          + (f" -- STAND-INS {cfg.stand_ins}" if cfg.stand_ins else ""))
    print(markdown_table(res))
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


BENCH_COMMANDS = {"layers": bench_layers, "dit": bench_dit, "ttt-kernels": bench_ttt_kernels, "rollout": bench_rollout}
