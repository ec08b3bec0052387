"""The GPU kit's plan: which backends a CUDA run exercises, the wheelhouse it needs, and its stages.

``scripts/gpu_check.sh`` installs the wheelhouse and runs :mod:`seqmix.bench.gpu_check`, which runs the stages
below one after the other, each under its own wall-clock budget. Everything the kit runs is decided here:

* :func:`cuda_backends` / :func:`backend_unavailable` / :func:`reference_backend`: the backends of a layer class
  that a GPU run checks and times, why one cannot run, and its fp64 twin. They read the layer classes (never a
  hand-kept list of names), and are the one place to adapt when the backend mechanism changes.
* :data:`WHEELS`: the distributions the wheelhouse (``make gpu-wheels``) carries for a machine without a package
  index, pinned.
* :data:`STAGES`: one :class:`Stage` per line. Adding a stage is one line here, e.g.::

      Stage("my-check", 60, ("-m", "mypackage.my_check", "--out", "{out}"), ("--smoke",)),

  ``gpu`` is the argv (after ``python``) of the GPU run; the dry run (``--dry-run``, CPU) appends ``smoke`` to it,
  so the GPU arguments are parsed there too and the smoke arguments override the sizes. ``{out}`` is the stage's
  scratch directory; the file ``document`` it writes there is kept as ``<out>/<stage>.json`` (a benchmark document
  is validated against ``seqmix.bench.schema``; a pytest JUnit file is turned into a JSON summary). ``{notes}`` is
  the run's caveats as a JSON list (e.g. that flash-attn is missing and attention runs on FlexAttention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seqmix import layers as L

__all__ = [
    "Stage",
    "STAGES",
    "WHEELS",
    "TOLERANCES",
    "backend_unavailable",
    "contract_plan",
    "cuda_backends",
    "mixer_class",
    "reference_backend",
    "stage_by_name",
    "wheelhouse_problems",
]

# ------------------------------------------------------------------------------------------------ backends


def cuda_backends(cls: type[L.Mixer]) -> tuple[str, ...]:
    """Backends of mixer class ``cls`` that a CUDA run checks and times: every backend but the reference twins
    (those are what the fast paths are compared against, see :func:`reference_backend`)."""
    return tuple(b.name for b in cls.backend_table if not b.reference)


def reference_backend(cls: type[L.Mixer]) -> str:
    """The backend of ``cls`` used as the fp64 twin: its (first) reference backend, else its last (plain) one."""
    refs = [b.name for b in cls.backend_table if b.reference]
    return refs[0] if refs else cls.backend_table[-1].name


def backend_unavailable(layer: L.Mixer, backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` would not run on ``device`` for ``layer`` (``None``: it runs). On CUDA a backend is judged
    as an explicit request would be (opt-in kernels count); on CPU as an automatic choice would judge it, so a
    Triton kernel under the CPU interpreter (a test mode) does not count as running."""
    device = torch.device(device)
    saved = layer.config.backend
    try:
        layer.config.backend = backend if device.type == "cuda" else "auto"
        return layer.backend_supports(backend, device)
    finally:
        layer.config.backend = saved


def contract_plan() -> list[tuple[str, str]]:
    """Every (registry layer, CUDA backend) pair the GPU contract harness covers."""
    return [(name, b) for name in L.available() for b in cuda_backends(mixer_class(name))]


def mixer_class(name: str) -> type[L.Mixer]:
    """The class registered as ``name`` (its config class is ``mixer_class(name).Config``)."""
    return L.base._lookup(name)


#: Relative-error tolerances of the contract harness against the fp64 twin (TF32 may be on in fp32).
TOLERANCES = {"float32": 1e-3, "bfloat16": 1e-2}

# ------------------------------------------------------------------------------------------------ wheelhouse

#: Distribution -> version the wheelhouse carries (``scripts/gpu_wheels.sh``, at the versions of the GPU lock
#: ``requirements/gpu-py312.txt``; tests/test_gpu_kit.py holds the three together): what a CUDA machine with torch,
#: triton, lightning, torchmetrics, einops, numpy, safetensors, transformers, PyYAML and pytest lacks. mamba-ssm is
#: built locally with its CUDA extension skipped (seqmix calls only its Triton SSD kernels).
WHEELS = {
    "fla-core": "0.6.0",
    "flash-linear-attention": "0.6.0",
    "jsonargparse": "4.53.0",
    "docstring-parser": "0.18.0",
    "typeshed-client": "2.15.0",
    "mamba-ssm": "2.3.2.post1",
}
#: Built from source (no wheel on the index) rather than downloaded.
BUILT_WHEELS = ("mamba-ssm",)


def _wheel_dist(filename: str) -> tuple[str, str]:
    """``fla_core-0.6.0-py3-none-any.whl`` -> (``fla-core``, ``0.6.0``)."""
    name, version = filename.split("-")[:2]
    return name.replace("_", "-").lower(), version


def wheelhouse_problems(files: list[str]) -> list[str]:
    """What a wheelhouse holding wheel ``files`` lacks for :data:`WHEELS` (empty: complete)."""
    have = dict(_wheel_dist(f) for f in files if f.endswith(".whl"))
    problems = []
    for dist, version in WHEELS.items():
        if dist not in have:
            problems.append(f"missing {dist}=={version}")
        elif have[dist] != version:
            problems.append(f"{dist} is {have[dist]}, the kit pins {version}")
    return problems


# ------------------------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class Stage:
    """One step of the GPU check.

    Attributes:
        name: stage name (``--stages``), also the name of its kept document ``<name>.json``.
        budget_s: wall-clock limit of the GPU run; the process group is killed after it. Benchmarks get
            ``SEQMIX_BENCH_DEADLINE`` (and the contract harness ``SEQMIX_TEST_DEADLINE``) a reserve before it, so
            they skip the points that no longer fit and still write their document.
        gpu: argv after ``python`` for the GPU run; ``{out}`` is the stage's scratch directory.
        smoke: appended to ``gpu`` for the CPU dry run (overrides device and sizes; seconds).
        document: the file the stage writes under ``{out}`` that is kept (``.json``: benchmark document; ``.xml``:
            pytest JUnit report, kept as a JSON summary); ``None``: only the log.
        env: environment for the stage (values already set in the caller's environment win).
    """

    name: str
    budget_s: int
    gpu: tuple[str, ...]
    smoke: tuple[str, ...]
    document: str | None = "results.json"
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, out: str, dry_run: bool) -> list[str]:
        args = self.gpu + (self.smoke if dry_run else ())
        return [a.replace("{out}", out) for a in args]


#: The paper's lengths for the linear-cost layers: the 3 s (18,048 tokens), 18 s and 63 s (341,550) videos.
PAPER_T = "[18048,99894,341550]"
#: One TTT launch config in every stage: no autotuning (minutes of compiling) inside the time window.
PIN_TTT = {"SEQMIX_TTT_NUM_WARPS": "8"}

STAGES: tuple[Stage, ...] = (
    # every GPU-marked test, incl. the contract harness (tests/test_gpu_contract.py): layer x CUDA backend x dtype;
    # first the plan check (one rank of the paper layout, tests/test_scale_out.py, marker `first`)
    Stage("tests", 140,
          ("-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-m", "gpu", "tests",
           "-o", "junit_family=xunit1",
           "--junitxml={out}/junit.xml"),
          ("-k", "float32 and default"), document="junit.xml", env=PIN_TTT),
    Stage("layers", 75,
          ("-m", "seqmix.cli", "bench", "layers", "--device", "cuda", "--dtype", "bfloat16", "--dim", "3072",
           "--heads", "48", "--modes", "[fwd,fwd+bwd]", "--backends", "[all]", "--lengths", PAPER_T,
           "--repeats", "2", "--max_call_seconds", "2.5", "--notes", "{notes}", "--out", "{out}"),
          ("--quick", "--device", "cpu", "--dtype", "float32", "--dim", "64", "--heads", "2", "--lengths", "[48,96]",
           "--repeats", "1"), env=PIN_TTT),
    Stage("dit", 40,
          ("-m", "seqmix.cli", "bench", "dit", "--device", "cuda", "--num_layers", "1", "--durations", "[3,18,63]",
           "--modes", "[fwd,fwd+bwd]", "--repeats", "2", "--max_call_seconds", "3", "--notes", "{notes}",
           "--out", "{out}"),
          ("--quick", "--device", "cpu", "--durations", "[3,9]", "--modes", "[fwd]", "--repeats", "1"),
          env=PIN_TTT),
    Stage("ttt-kernels", 45,
          ("-m", "seqmix.cli", "bench", "ttt-kernels", "--device", "cuda", "--lengths", PAPER_T,
           "--backends", "[triton,torch,fla_gdn]",
           "--num_warps", "8", "--repeats", "2", "--out", "{out}"),
          ("--quick", "--device", "cpu", "--lengths", "[24]", "--modes", "[fwd]")),
    # The on-chip tensor-parallel TTT-MLP kernel: JIT build, fp64 correctness, benchmark, compute-sanitizer.
    Stage("ttt-tp", 100,
          ("-m", "seqmix.bench.ttt_tp_check", "--out", "{out}", "--bench-s", "40", "--sanitizer-s", "20"),
          ("--smoke",)),
)


def stage_by_name(names: list[str]) -> list[Stage]:
    """The stages called ``names`` in plan order; an unknown name raises, listing the valid ones."""
    known = {s.name: s for s in STAGES}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; valid: {', '.join(known)}")
    return [s for s in STAGES if s.name in names]
