"""The ``seqmix`` command line.

    seqmix fit|validate|test|predict --config RECIPE.yaml [--key value ...]   Lightning CLI over a recipe
    seqmix compare video [--quick] [--layers [..]] [--max_steps N]             t2v baselines, equal budgets (main job)
    seqmix compare mqar [--quick] [--widths [..]] [--lrs [..]] [--jobs N]     MQAR accuracy vs state size
    seqmix compare worldmodel [--quick] [--models [..]] [--seeds S]           world-model memory beyond the window
    seqmix bench layers [--quick] [--lengths [..]] [--layers [..]]             layer speed / memory vs T
    seqmix bench rollout [--quick] [--frames N] [--models [..]]               world-model per-frame rollout cost
    seqmix prepare storyboards|videos ...                                      write latent shard datasets
    seqmix prepare mazes OUT [--num_trajectories N] [--source procedural|memory-maze] [--preview]
                                                                               world-model maze trajectories
    seqmix layers [--dim 256] [--num_heads 4] [--seq_len 1024]                 registry layers: params, state, config
    seqmix --version

The CLI layer prints results for people; library code only logs.
"""

from __future__ import annotations

import logging
import os
import sys

from seqmix.utils.errors import seqmix_input_error
from seqmix.utils.extras import missing_extra

__all__ = ["main"]

_LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_DESCRIPTION = """seqmix: interchangeable global-context sequence layers, recipes and benchmarks.

recipes (Lightning CLI; `seqmix fit --help` lists every option):
  fit                 train a recipe: seqmix fit --config recipes/mqar/ttt_mlp.yaml [--key value ...]
  validate            evaluate a model on the validation set (--ckpt_path to load a checkpoint)
  test                evaluate a model on the test set
  predict             run a model's predict step
"""
# Boolean options that may be given bare (``--quick``) as well as with a value (``--quick true``).
_BARE_FLAGS = ("--quick", "--preview", "--resume", "--json", "--measure")
# The Lightning CLI lives in seqmix.lightning_cli (seqmix.compare builds runs with it); these names were
# importable from here and still are.
_LIGHTNING_NAMES = ("RecipeError", "SeqmixCLI", "run_lightning")


def __getattr__(name: str):
    if name in _LIGHTNING_NAMES:
        from seqmix import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_layers(dim: int = 256, num_heads: int = 4, seq_len: int = 1024) -> None:
    """List registry layers: parameters and state size per sequence at a width, and their config defaults.

    Args:
        dim: model width D the layers are built at.
        num_heads: heads H.
        seq_len: tokens seen, for state that grows with the sequence (full attention's KV cache).
    """
    import dataclasses

    from seqmix import layers as L

    bad = {k: v for k, v in (("dim", dim), ("num_heads", num_heads), ("seq_len", seq_len))
           if not isinstance(v, int) or v < 1}
    if bad:  # no layer could be built: say so once instead of a table of failures
        print(f"seqmix layers: error: {', '.join(f'--{k} {v}' for k, v in bad.items())}: must be a positive int",
              file=sys.stderr)
        raise SystemExit(2)
    print(f"{'layer':16s} {'params':>10s} {'state/seq':>10s}  config defaults  (dim={dim}, heads={num_heads}, "
          f"state after {seq_len} tokens)")
    for name in L.available():
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(L.config_class(name))
                           if f.default is not dataclasses.MISSING)
        # Fields without a default (a frame layer's grid / block) come from the layer's small test configuration.
        required = {f.name for f in dataclasses.fields(L.config_class(name)) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        given = {k: v for k, v in L.mixer_class(name).Tooling.small_config.items() if k in required}
        if given:
            fields = ", ".join([*(f"{k}={v!r} (example)" for k, v in given.items()), fields])
        try:
            layer = L.build(name, dim=dim, num_heads=num_heads, **given)
            params, state = f"{sum(p.numel() for p in layer.parameters()):,}", f"{layer.state_size(seq_len):,}"
        except (ValueError, TypeError) as e:  # e.g. a width this layer cannot be built at
            params, state, fields = "-", "-", f"not buildable here: {e}"
        print(f"{name:16s} {params:>10s} {state:>10s}  {fields}")


def prepare_storyboards(out: str, num_examples: int = 1024, num_segments: int = 3, seed: int = 0,
                        shard_size: int = 256, char_size: int = 6, num_appearances: int = 4) -> None:
    """Write procedural storyboard latents as a shard dataset (see seqmix.data.shards); the defaults are the
    storyboards of the t2v recipes (recipes/t2v/*.yaml).

    Args:
        out: output directory (must not hold a dataset yet).
        num_examples: number of videos.
        num_segments: 3 s segments per video.
        seed: dataset seed.
        shard_size: examples per shard file.
        char_size: side of the square character in latent pixels.
        num_appearances: palette of character appearances.
    """
    from seqmix.data.prepare import write_storyboards
    from seqmix.data.storyboard import StoryboardConfig

    cfg = StoryboardConfig(num_segments=num_segments, char_size=char_size, num_appearances=num_appearances)
    path = write_storyboards(out, cfg, num_examples, seed, shard_size)
    print(f"wrote {num_examples} storyboards to {path}")


def prepare_mazes(out: str, num_trajectories: int = 64, source: str = "procedural", maze_size: int = 7,
                  frame_size: int = 32, explore_frames: int = 192, return_frames: int = 96,
                  return_mode: str = "reverse", seed: int = 0, shard_size: int | None = None,
                  preview: bool = False) -> None:
    """Write maze trajectories (exploration, then a return to places seen earlier) for the world-model task
    (see seqmix.data.maze_data).

    Args:
        out: output directory (must not hold a dataset yet).
        num_trajectories: number of trajectories (one maze each).
        source: "procedural" (numpy ray caster, always available) or "memory-maze" (MuJoCo; optional extra
            seqmix[memory-maze], MUJOCO_GL=egl).
        maze_size: cells per side (memory-maze: 9, 11, 13 or 15).
        frame_size: frame height = width in pixels.
        explore_frames: frames of the exploration phase.
        return_frames: frames of the return phase.
        return_mode: procedural return path, "reverse" (walk the exploration back exactly) or "revisit" (walk
            forward to early poses).
        seed: dataset seed.
        shard_size: trajectories per shard file (default: as many as fit in about 256 MB, at most 64).
        preview: also write preview.gif of the first trajectory.
    """
    from seqmix.data.maze_data import MazeDataConfig, write_mazes

    cfg = MazeDataConfig(maze_size=maze_size, frame_size=frame_size, explore_frames=explore_frames,
                         return_frames=return_frames, return_mode=return_mode, seed=seed)
    path = write_mazes(out, cfg, num_trajectories, source=source, shard_size=shard_size, preview=preview)
    print(f"wrote {num_trajectories} maze trajectories ({source}) of {cfg.num_frames} frames to {path}"
          + (f" (preview: {path / 'preview.gif'})" if preview else ""))


def prepare_videos(manifest: str, out: str, vae: str, text_encoder: str, height: int = 480, width: int = 720,
                   frames_per_segment: int = 48, text_tokens: int = 226, device: str = "cpu") -> None:
    """Encode real videos (JSON-lines manifest) with a local CogVideoX VAE and T5 encoder into shards.

    Args:
        manifest: JSON-lines file, one {"frames": path, "captions": [...]} per video.
        out: output directory.
        vae: local diffusers AutoencoderKLCogVideoX directory (never downloaded).
        text_encoder: local transformers T5 encoder + tokenizer directory (never downloaded).
        height: frame height before encoding.
        width: frame width before encoding.
        frames_per_segment: pixel frames per 3 s segment (48; plus one leading frame per video).
        text_tokens: text tokens per segment (padded / truncated).
        device: where to run the encoders.
    """
    from seqmix.data.prepare import encode_videos

    path = encode_videos(manifest, out, vae_path=vae, text_encoder_path=text_encoder, height=height, width=width,
                         frames_per_segment=frames_per_segment, text_tokens=text_tokens, device=device)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------- compare
# Each comparison's options are the fields of its config class (seqmix.utils.config_cli: one mechanism with the
# bench commands), so every field is reachable and documented once, in the class.
_COMPARE_HELP = {
    "video": "Train every global layer in the text-to-video DiT on the procedural storyboards with the same budget.",
    "mqar": "Train every layer on MQAR at each width and learning rate with the same data and budget.",
    "worldmodel": "Train the world models with equal budgets on the same maze trajectories and score retrieval.",
}


def _print_result(result: dict) -> None:
    print(result["markdown"])
    wall = f"wall time {result['wall_seconds']:.0f} s; " if "wall_seconds" in result else ""
    print(f"\n{wall}wrote {', '.join(str(p) for p in result['paths'].values() if p)}")


def _run_video(given: dict, quick: bool) -> None:
    from seqmix.compare import VideoComparison, run_video_comparison
    from seqmix.utils.config_cli import preset_config

    _print_result(run_video_comparison(preset_config(VideoComparison, given, quick)))


def _run_mqar(given: dict, quick: bool, preset: str | None) -> None:
    from seqmix.compare import MQARSweep, run_mqar_sweep

    sweep = MQARSweep.preset(preset, **given) if preset else MQARSweep(**given)
    _print_result(run_mqar_sweep(sweep.quick() if quick else sweep))


def _run_worldmodel(given: dict, quick: bool) -> None:
    from seqmix.compare.worldmodel import WorldModelComparison, run_worldmodel_comparison
    from seqmix.utils.config_cli import preset_config

    _print_result(run_worldmodel_comparison(preset_config(WorldModelComparison, given, quick)))


def _compare_commands() -> dict:
    """The ``seqmix compare`` commands, generated from the comparisons' config classes (imported here, when a
    comparison runs: they need the training extra)."""
    from seqmix.compare import MQARSweep, VideoComparison
    from seqmix.compare.mqar import PRESETS
    from seqmix.compare.worldmodel import WorldModelComparison
    from seqmix.utils.config_cli import config_command

    return {
        "video": config_command(VideoComparison, _run_video, _COMPARE_HELP["video"] + """

Runs are built from recipes/base/t2v.yaml + each layer's name and its documented overrides in recipes/t2v/; all
are evaluated on the same held-out videos; writes a table (markdown + JSON), plots, learning curves and sample
GIFs. `make run` is `seqmix compare video --skip '[swa, local_attn]' --max_steps 400`.
"""),
        "mqar": config_command(MQARSweep, _run_mqar, _COMPARE_HELP["mqar"] + """

Runs are built from recipes/base/mqar.yaml + each layer's name and its documented overrides in recipes/mqar/; the
best validation accuracy per (layer, width) is reported against the layer's state size (markdown + JSON + plot).
""", extras=(("preset", str | None, None, f"a named grid ({', '.join(PRESETS)}; see seqmix.compare.mqar.PRESETS); "
              "the options given override it."),)),
        "worldmodel": config_command(WorldModelComparison, _run_worldmodel, _COMPARE_HELP["worldmodel"] + """

Models are recipes/<recipes>/*.yaml (default recipes/worldmodel/memory/: the memory study's setting, on
recipes/base/worldmodel-memory.yaml; --recipes worldmodel: the first comparison's); each held-out return path is
scored by the memory metric (one-step prediction at maximum noise, within / beyond the window) and generated from
its exploration (PSNR / SSIM against the distance to the last sighting).
"""),
    }


def _compare_summaries() -> dict:
    """Stand-ins that carry only the help line, for every command line that is not a comparison (the comparisons'
    config classes are imported only when one runs)."""
    def stand_in(name: str):
        def command() -> None:
            raise RuntimeError(f"seqmix compare {name} was not built")  # unreachable: built when argv says compare
        command.__doc__ = _COMPARE_HELP[name]
        return command

    return {name: stand_in(name) for name in _COMPARE_HELP}


def plan(model: str, duration: int | None = None, gpus: int = 8, gpu_memory: str = "80GB", strategy: str = "fsdp+tp",
         tp: int | None = None, mixer: str = "ttt_mlp", mixer_config: dict | None = None, batch: int = 64,
         mfu: float = 0.4, fsdp_precision: str = "full", sequence_parallel: bool | None = None,
         dit_overrides: dict | None = None, layout_overrides: dict | None = None, measure: bool = False,
         device: str = "auto", json: bool = False, out: str | None = None) -> None:
    """Per-GPU memory (parameters, gradients, optimizer, activations) and step time of a training layout for the
    paper's five stages; bad layouts fail here, before any process starts.

    Args:
        model: dit (CogVideoX-5B + the global layer) or worldmodel (its paper preset).
        duration: one stage (seconds: 3, 9, 18, 30, 63); default all five.
        gpus: GPUs in all. gpu_memory: memory per GPU (80GB). strategy: ddp, fsdp, tp or fsdp+tp.
        tp: tensor-parallel size (tp and fsdp+tp; default: all GPUs of one 8-GPU node, at most `gpus`).
        mixer: the DiT's global layer (the world model's mixer stack). batch: global batch.
        mixer_config: the DiT global layer's config fields (e.g. '{scan_checkpoint_group: 16}': TTT recomputes
            its scan in groups of 16 mini-batches; the activation estimate is measured from the configured layer);
            default: the paper-scale recipe's (recipes/t2v/paper/<mixer>.yaml) if there is one.
        mfu: assumed fraction of the bf16 peak.
        fsdp_precision: full (FSDP2 gathers fp32 parameters) or bf16 (the recipe's model.init_args.fsdp_precision).
        sequence_parallel: the residual stream sharded over the tensor-parallel ranks by tokens, between blocks
            and, in the DiT, inside them (the recipe's model.init_args.sequence_parallel); default: on for the DiT
            (as its paper recipe), off for the world model.
        dit_overrides: other DiT config fields (e.g. '{num_layers: 2}': a shallow model, to measure on one GPU).
        layout_overrides: other fields of every stage's video layout (e.g. '{latent_height: 10, latent_width: 20}').
        measure: also run one rank of the layout for real on `device`, each stage (the model parallelized on a fake
            process group of all the ranks, two training steps on random data; seqmix.parallel.measure): its
            measured peak memory and step time beside the estimate. It needs the memory of one rank: on CPU, size
            the model down with dit_overrides / layout_overrides.
        device: where --measure runs (auto: cuda if there is one, else cpu).
        json: print the estimate as JSON ({"stages": [{"stage": "63 s", "total_gb": ..., "fits": ...}, ...]}).
        out: also write the JSON document to this file.
    """
    import json as json_lib

    from seqmix.parallel.estimate import estimate, markdown

    if mixer_config is None and model == "dit":
        mixer_config = _paper_mixer_config(mixer)
    if tp is None and "tp" in strategy.split("+"):
        tp = min(gpus, 8) if gpus >= 1 else gpus  # the paper's layout: tensor parallel inside one node
    sequence_parallel = (model == "dit") if sequence_parallel is None else sequence_parallel
    try:
        p = estimate(model, gpus=gpus, strategy=strategy, tp=tp, gpu_memory=gpu_memory, batch=batch,
                     durations=[duration] if duration else None, mixer=mixer, mixer_config=mixer_config, mfu=mfu,
                     fsdp_precision=fsdp_precision, sequence_parallel=sequence_parallel,
                     dit_overrides=dit_overrides, layout_overrides=layout_overrides)
    except ValueError as e:  # a bad layout is the user's input, not a bug: one line, argparse's exit status
        print(f"seqmix plan: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if measure:
        import torch

        from seqmix.parallel.measure import measure_rank

        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        problem = _measure_does_not_fit(p, dev)
        if problem:
            print(f"seqmix plan: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
        try:
            for row in p.rows:
                row.measured = measure_rank(
                    model, gpus=gpus, strategy=strategy, tp=tp, seconds=row.seconds, mixer=mixer,
                    mixer_config=mixer_config, trainable=row.trainable if model == "dit" else None,
                    dit_overrides=dit_overrides, layout_overrides=layout_overrides,
                    sequence_parallel=sequence_parallel, fsdp_precision=fsdp_precision, device=dev)
        except ValueError as e:
            print(f"seqmix plan: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    text = json_lib.dumps(p.to_json(), indent=1)
    if out:
        from pathlib import Path

        from seqmix.data.shards import atomic_write_bytes

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out), (text + "\n").encode())
    print(text if json else markdown(p))


def _measure_does_not_fit(p, device: str) -> str | None:
    """Why one rank of plan ``p`` cannot be measured here (``None``: it can): the model is built whole in host memory
    (fp32) before it is split, and the rank needs its estimated peak on ``device``."""
    import torch

    host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    need_host = 4 * p.num_params
    need_dev = max(r.total for r in p.rows)
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device!r} is not a device; valid: auto, cpu, cuda, cuda:N"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "--device cuda, but no CUDA GPU is visible"
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = host
    hint = "size the model down (--dit-overrides '{num_layers: 2}', --layout-overrides) or measure on a GPU"
    if need_host > host:
        return (f"--measure builds the {p.num_params / 1e9:.2f}B-parameter model in host memory first ("
                f"{need_host / 1e9:.1f} GB fp32), {host / 1e9:.1f} GB are free; {hint}")
    if need_dev > free:
        return (f"--measure: one rank needs ~{need_dev / 1e9:.1f} GB (the estimate) on {device}, {free / 1e9:.1f} GB "
                f"are free; {hint}")
    return None


def _paper_mixer_config(mixer: str) -> dict | None:
    """The global layer's settings of the paper-scale recipe ``t2v/paper/<mixer>.yaml``, if there is one."""
    import yaml

    from seqmix.utils.recipes import builtin_recipe

    try:
        path = builtin_recipe(f"t2v/paper/{mixer}")
    except FileNotFoundError:
        return None
    doc = yaml.safe_load(path.read_text())
    return doc["model"]["init_args"]["model"]["mixer_config"]


def _plan_dashes(argv: list[str]) -> list[str]:
    # `seqmix plan ... --gpu-memory 80GB`: the documented spelling of the plan options takes dashes
    if not argv or argv[0] != "plan":
        return argv
    return [a.split("=", 1)[0].replace("-", "_").replace("__", "--", 1) + a[len(a.split("=", 1)[0]):]
            if a.startswith("--") else a for a in argv]


def _expand_bare_flags(argv: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a in _BARE_FLAGS and (nxt is None or nxt.startswith("--")):
            out.append("true")
    return out


def _resolve_configs(args: list[str]) -> list[str]:
    """``--config NAME`` of a Lightning subcommand: a file as given, else the built-in recipe of that name."""
    from seqmix.utils.recipes import resolve_recipe

    out = list(args)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_recipe(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + resolve_recipe(a.split("=", 1)[1])
    return out


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = f"seqmix {args[0]}" if args and not args[0].startswith("-") else "seqmix"
    try:
        _main(args)
    except ImportError as e:  # a missing optional extra: one line naming it, argparse's exit status
        message = missing_extra(e)
        if message is None:
            raise
        print(f"{command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001 - seqmix's message for bad input in one line; a bug keeps its traceback
        root = None if os.environ.get("SEQMIX_DEBUG") else seqmix_input_error(e)
        if root is None:
            raise
        print(f"{command}: error: {root} (SEQMIX_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args: list[str]) -> None:
    if args and args[0] in _LIGHTNING_SUBCOMMANDS:
        from seqmix.lightning_cli import RecipeError, run_lightning
        from seqmix.training import CheckpointCorruptError, CheckpointFolderInUseError, NonFiniteLossError

        # seqmix's own INFO lines (the video layout, the parallel plan, resumes) beside Lightning's, which has its
        # own handler since its import above; other libraries' warnings as before (no-op if logging is configured)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("seqmix").setLevel(logging.INFO)
        try:
            run_lightning(_resolve_configs(args))
        except RecipeError as e:  # as a misspelled key: one line, argparse's exit status
            print(f"seqmix {args[0]}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except (CheckpointCorruptError, CheckpointFolderInUseError, NonFiniteLossError) as e:  # a user-facing stop
            print(f"seqmix {args[0]}: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        return
    import argparse

    from jsonargparse import CLI, DefaultHelpFormatter

    import seqmix

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from seqmix.bench.cli import BENCH_COMMANDS

    class Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):  # keeps the command table's lines
        pass

    # The top-level usage names the Lightning subcommands too (they are dispatched above, not by this parser); a
    # subcommand's own usage is argparse's (it derives from the parent's usage line, so that is set only here).
    top_usage = {} if args and not args[0].startswith("-") else {
        "usage": "seqmix {fit,validate,test,predict} --config RECIPE [--key value ...]\n"
                 "       seqmix {layers,plan,bench,compare,prepare} ... [-h]"}
    CLI({"layers": list_layers, "plan": plan,
         "bench": {"_help": "Benchmarks: layer speed and memory vs length, DiT efficiency, TTT kernels.",
                   **BENCH_COMMANDS},
         "compare": {"_help": "Equal-budget comparisons of the baselines: text-to-video (main job), MQAR recall, "
                              "world models.",
                     **(_compare_commands() if args[:1] == ["compare"] else _compare_summaries())},
         "prepare": {"_help": "Write datasets: latent shards from storyboards or real videos, world-model mazes.",
                     "storyboards": prepare_storyboards, "videos": prepare_videos, "mazes": prepare_mazes}},
        args=_expand_bare_flags(_plan_dashes(args)), version=seqmix.__version__, description=_DESCRIPTION,
        formatter_class=Formatter, prog="seqmix", **top_usage)


if __name__ == "__main__":
    main()
