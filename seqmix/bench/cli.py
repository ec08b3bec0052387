"""``seqmix bench ...`` subcommands (registered in :data:`BENCH_COMMANDS`). The CLI layer prints results."""

from __future__ import annotations

__all__ = ["BENCH_COMMANDS", "bench_layers"]


def bench_layers(
    layers: list[str] | None = None,
    lengths: list[int] | None = None,
    modes: list[str] | None = None,
    dim: int = 256,
    heads: int = 4,
    batch: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    dtype: str = "float32",
    out: str = "benchmarks/results/layers-cpu",
    quick: bool = False,
) -> None:
    """Time forward and forward+backward and measure peak memory of registry layers against T.

    Args:
        layers: registry names (default: all).
        lengths: sequence lengths (default 256..4096; ``quick``: 128, 256, 512).
        modes: ``fwd`` and/or ``fwd+bwd``.
        dim: model width for every layer.
        heads: number of heads for every layer.
        batch: batch size.
        repeats: timed runs per point (median reported).
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16``, ...
        out: directory for results.json / results.md / results.png.
        quick: small sizes for a smoke run (CI).
    """
    from seqmix.bench.layers import LayerBenchConfig, markdown_table, run_layer_bench, write_report

    cfg = LayerBenchConfig(layers=layers, dim=dim, heads=heads, batch=batch, repeats=repeats, device=device,
                           dtype=dtype)
    if lengths:
        cfg.lengths = lengths
    elif quick:
        cfg.lengths = [128, 256, 512]
    if modes:
        cfg.modes = modes
    if quick:
        cfg.repeats, cfg.max_seconds_per_point = min(repeats, 2), 2.0
        cfg.dim, cfg.heads = min(dim, 64), min(heads, 2)
        cfg.layer_configs = {"ttt_mlp": {"mini_batch_size": 16}, "ttt_linear": {"mini_batch_size": 16}}
    ms = run_layer_bench(cfg)
    paths = write_report(ms, out, cfg)
    print(markdown_table(ms))
    print(f"\nwrote {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))


BENCH_COMMANDS = {"layers": bench_layers}
