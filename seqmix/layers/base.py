"""The layer contract every seqmix mixer obeys, the registry that hands mixers out by name, and backend choice.

Contract (see ``shared/design.md``):

* ``layer(x)`` maps ``x: [B, T, D] -> [B, T, D]`` with the same dtype. Richer inputs are keyword-only:
  ``layout`` (segments / frames / grid, for mixers that need one), ``positions`` (RoPE positions),
  ``state`` (carried from a previous call) and ``return_state`` (then the call returns ``(y, state)``).
* ``layer.causal`` says whether output ``t`` depends only on inputs ``<= t``; causal mixers carry state across
  calls so that chunked inference equals one full pass. Every config takes ``causal``: a mixer with a causal
  option honours both values; one causal by construction accepts only ``True`` (non-causal use goes through
  :class:`~seqmix.layers.Bidirectional`); one without a causal form accepts only ``False``.
* ``layer.state_size()`` is the number of recurrent-state (or KV-cache) elements per sequence.
* Carried states are small NamedTuples whose trailing ``layer`` field names the registry layer that produced them
  (filled in by :meth:`Mixer.forward`): a state handed to a layer of another type is rejected with that name.
* ``layer.backend`` is the backend the layer runs on for its current device: configs ask for ``"auto"`` or an
  explicit name; a backend whose optional library is missing degrades to the next one with one warning.

Legend for shape suffixes used across seqmix: B batch, T tokens, D model dim, H heads, K head dim, F inner MLP
width, N tokens in a mini-batch / chunk.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from seqmix.utils.triton_compat import triton_interpreter

from .cost import Cost, projections_cost
from .sharding import HeadShardSpec

logger = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "Mixer",
    "MixerConfig",
    "available",
    "build",
    "config_class",
    "mixer_class",
    "register",
    "sequence_mixers",
    "BackendUnavailable",
]


class BackendUnavailable(RuntimeError):
    """Raised when an explicitly requested backend cannot run and no fallback is allowed."""


@dataclass(kw_only=True)
class MixerConfig:
    """Fields shared by every mixer config.

    Attributes:
        backend: ``"auto"`` (choose by device) or one of the mixer's ``backends``.
        causal: ``True`` / ``False``, or ``None`` for the mixer's default (the first of its ``causal_modes``).
            Values the mixer cannot honour are rejected when the layer is built.
    """

    backend: str = "auto"
    causal: bool | None = None


_REGISTRY: dict[str, type["Mixer"]] = {}
_WARNED: set[tuple] = set()
#: Calls this long on a CPU are checked against the cost model (shorter ones never pay for the estimate) and warn
#: when the estimate exceeds _LONG_CALL_SECONDS at _CPU_FLOPS (a generous multi-core CPU rate: the warning errs late).
_LONG_CALL_TOKENS, _LONG_CALL_SECONDS, _CPU_FLOPS = 32_768, 60.0, 100e9


def _runs_anywhere(layer: "Mixer", device: torch.device, dtype: torch.dtype, shapes: dict | None) -> str | None:
    return None


def triton_device_reason(layer: "Mixer", backend: str, device: torch.device, dtype: torch.dtype,
                         kernels: str) -> str | None:
    """Why ``kernels`` (e.g. "fla's Triton kernels") cannot run on ``device`` in ``dtype``, or ``None``: not in
    float64; on CUDA, and on CPU only under the Triton interpreter (~1 ms per program instance: tests only), so
    there only when ``backend`` was asked for explicitly, never as an automatic choice."""
    if dtype == torch.float64:
        return f"{kernels} do not compute in float64"
    if device.type == "cpu":
        if not triton_interpreter():
            return f"{kernels} need a CUDA device (on CPU only under TRITON_INTERPRET=1, for tests)"
        if layer.config.backend != backend:
            return f"the Triton interpreter is for tests only; request backend={backend!r} explicitly"
        return None
    if device.type != "cuda":
        return f"{kernels} do not run on {device.type}"
    return None


@dataclass(frozen=True)
class Backend:
    """One way to compute a mixer: ``name`` (what configs ask for), ``fn`` (the op the layer calls; optional
    libraries are imported inside it, never at ``import seqmix``) and ``supports(layer, device, dtype, shapes)``,
    ``None`` when it can run or the reason it cannot. ``shapes`` holds call-specific facts (e.g. head dim, a
    carried cache) or is ``None`` when only the device and dtype are asked about. ``reference``: a naive twin,
    chosen by ``"auto"`` only where nothing else runs."""

    name: str
    fn: Callable[..., Any] | None = None
    supports: Callable[["Mixer", torch.device, torch.dtype, "dict | None"], "str | None"] = _runs_anywhere
    reference: bool = False


def register(name: str) -> Callable[[type["Mixer"]], type["Mixer"]]:
    """Class decorator: make ``cls`` buildable as ``build(name, ...)``.

    The class must define a nested ``Config`` dataclass (a :class:`MixerConfig` subclass).
    """

    def deco(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"@register({name!r}) expects a Mixer subclass, got {cls!r}")
        if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MixerConfig)):
            raise TypeError(f"{cls.__qualname__}.Config must be a dataclass deriving from MixerConfig")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of every registered mixer, sorted."""
    return sorted(_REGISTRY)


def sequence_mixers() -> list[str]:
    """Names of the registered mixers that take any token sequence, sorted: every mixer except those that read
    their input as frames of a grid (``frame_input``). Consumers that feed plain token sequences (the LM / MQAR
    comparisons, the DiT's global layer, ``seqmix bench layers``) default to these."""
    return sorted(n for n, cls in _REGISTRY.items() if not cls.frame_input)


def _lookup(name: str) -> type["Mixer"]:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; valid names: {', '.join(available())}") from None


def mixer_class(name: str) -> type["Mixer"]:
    """The registered class of mixer ``name``: its capabilities (``causal_modes``, ``takes_positions``,
    ``small_config``, ``gates``, ...) are class attributes."""
    return _lookup(name)


def config_class(name: str) -> type[MixerConfig]:
    """The typed config dataclass of mixer ``name`` (its fields are the keys ``build`` accepts)."""
    return _lookup(name).Config


def build(name: str, dim: int, num_heads: int = 1, **cfg: Any) -> "Mixer":
    """Build mixer ``name`` for model width ``dim``.

    Args:
        name: a registry name (see :func:`available`).
        dim: model width D; inputs are ``[B, T, D]``.
        num_heads: number of heads H (``dim`` must be divisible by it unless the mixer takes ``head_dim``).
        **cfg: fields of the mixer's ``Config`` dataclass (unknown keys raise, listing the valid ones).
    """
    cls = _lookup(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise TypeError(
            f"unknown config key(s) {unknown} for mixer {name!r}; valid keys: {', '.join(sorted(fields))}"
        )
    return cls(dim=dim, num_heads=num_heads, config=cls.Config(**cfg))


class Mixer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every sequence mixer: subclass it with a nested ``Config`` (a :class:`MixerConfig` dataclass),
    ``state_size`` and ``_forward``; register it with :func:`register`.

    What consumers need to know about a mixer is declared on its class: its capabilities (what the backbones and
    the build read: ``causal_modes``, ``takes_positions``, ...) as the attributes below, and what only the tools
    read (test sizes, benchmark presets, sizing and sweep knobs, the tests that gate its figures) in the nested
    :class:`Mixer.Tooling`. Every one has a default, so a minimal mixer needs none of them; nothing outside the
    class keeps a per-mixer table.

    ``backend_table`` lists the :class:`Backend` records in order of preference (default: one ``"torch"`` backend,
    the layer's own ``_forward``); ``backends`` is their names. :meth:`select_backend` is the one place a backend
    is chosen.
    """

    name: ClassVar[str] = "?"
    Config: ClassVar[type[MixerConfig]] = MixerConfig
    backend_table: ClassVar[tuple[Backend, ...]] = (Backend("torch"),)
    backends: ClassVar[tuple[str, ...]] = ("torch",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.backends = tuple(b.name for b in cls.backend_table)
        parent = next(b for b in cls.__mro__[1:] if issubclass(b, Mixer))
        if not issubclass(cls.Tooling, parent.Tooling):
            raise TypeError(f"{cls.__qualname__}.Tooling must subclass {parent.__qualname__}.Tooling (write "
                            f"`class Tooling({parent.__qualname__}.Tooling):`), so that what it does not declare is "
                            "inherited")

    # ---------------------------------------------------------------------------------------------- capabilities
    #: Values of ``config.causal`` the mixer honours; the first is its default. ``(False, True)``: a causal option;
    #: ``(True,)``: causal by construction; ``(False,)`` (default): no causal form.
    causal_modes: ClassVar[tuple[bool, ...]] = (False,)
    #: Whether ``forward`` uses ``positions`` (RoPE): backbones pass token positions only to such mixers.
    takes_positions: ClassVar[bool] = False
    #: Whether ``forward`` uses ``layout``: a :class:`~seqmix.layers.spans.TokenSpans` (frame and segment boundaries
    #: of the sequence in read order). Backbones that know them (the DiT) pass them only to such mixers.
    takes_layout: ClassVar[bool] = False
    #: False only for layers that mix no tokens at all (the "no global layer" baseline); comparisons skip them.
    mixes_tokens: ClassVar[bool] = True
    #: True for mixers that read ``x`` as whole frames of a grid set in their config (``grid=(H, W)``, frame-major
    #: tokens): a call must hold whole frames, so they are left out of consumers that feed plain token sequences
    #: (:func:`sequence_mixers`). Their instances say how many tokens one causal step takes (:attr:`step_tokens`).
    frame_input: ClassVar[bool] = False

    # --------------------------------------------------------------------------------------------------- tooling
    class Tooling:
        """What the tools read about a mixer - the contract harness, the benchmarks, the comparisons, the sizing
        helpers; nothing here changes what the layer computes. A mixer declares its own as a nested
        ``class Tooling(<parent class>.Tooling)`` (a subclass of its parent's, so what it does not declare is
        inherited; :meth:`Mixer.__init_subclass__` checks it)."""

        #: A small, fast configuration (config fields) for the contract harness and smoke runs (width 32, 2 heads).
        small_config: ClassVar[dict[str, Any]] = {}
        #: Pytest node ids (files, ``file::test``) that gate this mixer's benchmark figures on every backend, and
        #: per backend; the shared contract tests are always added (see :mod:`seqmix.bench.gates`).
        gates: ClassVar[tuple[str, ...]] = ()
        backend_gates: ClassVar[dict[str, tuple[str, ...]]] = {}
        #: Config fields that grow the state size / parameter count monotonically (used by seqmix.layers.sizing
        #: to size a layer to a matched state or parameter budget); None where no such knob exists.
        state_knob: ClassVar[str | None] = None
        param_knob: ClassVar[str | None] = None
        #: Config fields the benchmark presets use (empty: the config defaults, which are the paper's sizes):
        #: ``bench_config`` for ``seqmix bench layers`` on CPU (T up to 16k tokens: e.g. windows scaled down so
        #: that linear growth shows), ``bench_quick_config`` for the smoke runs (``--quick``, T of tens to hundreds
        #: of tokens) of ``bench layers`` and ``bench dit``, ``bench_paper_config`` for ``bench dit`` at the
        #: paper's scale (GPU). A run's own per-layer overrides are applied on top
        #: (:func:`seqmix.bench.driver.mixer_bench_config`).
        bench_config: ClassVar[dict[str, Any]] = {}
        bench_quick_config: ClassVar[dict[str, Any]] = {}
        bench_paper_config: ClassVar[dict[str, Any]] = {}
        #: Config field holding a window in tokens sized for the paper's videos (1350 tokens per latent frame); the
        #: DiT benchmark rescales its default to the benchmark's frame size where the run sets it no other way.
        paper_token_window: ClassVar[str | None] = None
        #: Config fields the fast kernels need in the GPU contract tests, over ``small_config`` (whose sizes can
        #: be smaller than a kernel's tile).
        kernel_test_config: ClassVar[dict[str, Any]] = {}
        #: Config fields the DiT benchmark gives this mixer as the global layer under every size preset (e.g.
        #: chunks taken from the video layout, which only the DiT provides).
        dit_config: ClassVar[dict[str, Any]] = {}
        #: Config fields a comparison may sweep beside the outer learning rate, with the values tried (``seqmix
        #: compare mqar --knobs declared``), so each layer is compared at its best setting; none by default.
        sweep_knobs: ClassVar[dict[str, tuple]] = {}
        #: Whether ``torch.export`` keeps the sequence length symbolic (the contract harness checks it at several
        #: lengths; False: a Python loop over tokens fixes the length, so it checks one exported length). The
        #: built-in scans hand their state on with :func:`seqmix.ops.scan.chunk_scan` to make this True.
        symbolic_export: ClassVar[bool] = True

    def __init__(self, dim: int, num_heads: int, config: MixerConfig):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if config.backend != "auto" and config.backend not in self.backends:
            raise ValueError(
                f"unknown backend {config.backend!r} for mixer {self.name!r}; valid: auto, {', '.join(self.backends)}"
            )
        self._check_causal(config)
        self.dim = dim
        self.num_heads = num_heads
        self.config = config

    # ----------------------------------------------------------------------------------------------- contract
    def _check_causal(self, config: MixerConfig) -> None:
        causal = getattr(config, "causal", None)
        if causal is None:
            return
        if not isinstance(causal, bool):
            raise TypeError(f"{self.name}: causal must be True or False, got {causal!r} ({type(causal).__name__})")
        if causal not in self.causal_modes:
            if self.causal_modes == (True,):
                raise ValueError(
                    f"{self.name} is causal by construction and has no causal=False form; for non-causal use wrap "
                    f"it: seqmix.layers.Bidirectional(seqmix.layers.build({self.name!r}, ...))"
                )
            raise ValueError(f"{self.name} has no causal form; causal={causal} is not available "
                             f"(valid: {', '.join(map(str, self.causal_modes))})")

    def head_shard_spec(self) -> HeadShardSpec | None:
        """How this layer splits over tensor-parallel ranks by heads (:class:`~seqmix.layers.sharding.HeadShardSpec`),
        or None (default): it is not split, every tensor-parallel rank runs it whole on the same input."""
        return None

    def head_shard_inner(self) -> nn.Module | None:
        """A wrapper that calls an inner layer through that layer's ``forward`` returns it here (its own spec None):
        the inner layer is then split by its own spec. Default None: nothing inside is split (a layer that uses
        an inner layer's parts directly must keep the default)."""
        return None

    @property
    def causal(self) -> bool:
        """Whether output t depends only on inputs <= t."""
        causal = getattr(self.config, "causal", None)
        return self.causal_modes[0] if causal is None else bool(causal)

    @property
    def step_tokens(self) -> int:
        """Tokens of one causal step: an output may depend on every token of its own step, never on a later step,
        and carried state continues at step boundaries. 1 (default) for token-causal mixers; a frame (``H W``) or a
        chunk of frames for frame-input mixers. The contract harness measures its lengths in steps."""
        return 1

    @classmethod
    def can_be_causal(cls) -> bool:
        """Whether the mixer has a causal form (``causal=True`` builds)."""
        return True in cls.causal_modes

    @classmethod
    def can_be_non_causal(cls) -> bool:
        """Whether the mixer has a non-causal form (``causal=False`` builds)."""
        return False in cls.causal_modes

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """Cost of the mixer core (what its projections feed) for ``n`` new tokens per sequence after ``ctx`` carried
        tokens, ``elem`` bytes per activation element. Families override it with their formula; the default counts
        nothing (the layer's cost is then its projections and I/O only). Mixers that declare ``takes_layout`` also
        take ``layout=`` (the call's :class:`~seqmix.layers.spans.TokenSpans` or None)."""
        return Cost(0.0, 0.0, f"{self.name}: projections only (no core formula declared)")

    def cost(self, n: int, ctx: int = 0, batch: int = 1, layout=None) -> Cost:
        """Estimated FLOPs and bytes of one call on ``n`` new tokens per sequence after ``ctx`` tokens of carried
        context: :meth:`core_cost` + every ``nn.Linear`` / ``nn.Conv1d`` + the input read and output written + the
        other parameters read once (see :mod:`seqmix.layers.cost`). ``layout``: the call's
        :class:`~seqmix.layers.spans.TokenSpans`, passed on to the core cost of mixers that declare
        ``takes_layout`` (their chunks / blocks may follow it) and ignored by the others."""
        p = next(self.parameters(), None)
        elem = p.element_size() if p is not None else torch.tensor([], dtype=torch.float32).element_size()
        core = self.core_cost(n, ctx, batch, elem, **({"layout": layout} if self.takes_layout else {}))
        params = sum(q.numel() for q in self.parameters())
        io = Cost(0.0, float(elem * batch * n * self.dim * 2))  # layer input read, output written
        proj = projections_cost(self, n, batch, elem)
        # non-Linear parameters (gates, norms, inner-model init) are read once
        lin = sum(q.numel() for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv1d)) for q in m.parameters())
        rest = Cost(0.0, float(elem * (params - lin)))
        total = core + proj + io + rest
        return Cost(total.flops, total.bytes, core.model)

    @abc.abstractmethod
    def state_size(self, seq_len: int | None = None) -> int:
        """Elements of recurrent state (or KV cache) kept per sequence after ``seq_len`` tokens.

        Fixed-state mixers ignore ``seq_len``; attention's KV cache grows with it (full attention needs it).
        """

    def extra_repr(self) -> str:
        requested = self.config.backend
        try:
            resolved = self.backend
        except BackendUnavailable:
            resolved = "unavailable"
        backend = requested if requested == resolved else f"{requested}->{resolved}"
        return f"dim={self.dim}, heads={self.num_heads}, causal={self.causal}, backend={backend}"

    # ----------------------------------------------------------------------------------------------- backends
    def _param_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def backend_supports(self, backend: str, device: torch.device | str, dtype: torch.dtype | None = None,
                         shapes: dict | None = None) -> str | None:
        """``None`` if ``backend`` can run this layer on ``device`` in ``dtype`` (default: the parameters') for a
        call with ``shapes`` (None: any call), else the reason it cannot."""
        table = {b.name: b for b in self.backend_table}
        if backend not in table:
            return f"unknown backend {backend!r}"
        return table[backend].supports(self, torch.device(device), dtype or self._param_dtype(), shapes)

    def select_backend(self, device: torch.device | str, dtype: torch.dtype | None = None,
                       shapes: dict | None = None) -> Backend:
        """The backend record this layer runs on ``device`` in ``dtype`` (default: the parameters') for a call with
        ``shapes`` (None: any call): the requested one if it runs, else the next in preference order that does
        (warning once per (layer, backend, reason)); ``"auto"``: the first non-reference backend that runs."""
        device = torch.device(device)
        dtype = dtype or self._param_dtype()
        requested = self.config.backend
        if requested != "auto":
            order = list(self.backend_table)
            i = [b.name for b in order].index(requested)
            reason = order[i].supports(self, device, dtype, shapes)
            if reason is None:
                return order[i]
            for fallback in order[i + 1:]:
                if fallback.supports(self, device, dtype, shapes) is None:
                    key = (self.name, requested, reason)
                    if key not in _WARNED:
                        _WARNED.add(key)
                        logger.warning("%s: backend %r unavailable (%s); using %r", self.name, requested, reason,
                                       fallback.name)
                    return fallback
            raise BackendUnavailable(f"{self.name}: backend {requested!r} cannot run on {device}: {reason}")
        for b in sorted(self.backend_table, key=lambda b: b.reference):  # stable: preference order, references last
            if b.supports(self, device, dtype, shapes) is None:
                return b
        raise BackendUnavailable(f"{self.name}: no backend runs on {device} in {dtype}")

    def backend_for(self, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
        """Name of the backend this layer uses on ``device`` in ``dtype`` (default: the parameters')."""
        return self.select_backend(device, dtype).name

    @property
    def backend(self) -> str:
        """Backend used for this layer's current device and parameter dtype."""
        p = next(self.parameters(), None)
        return self.backend_for(p.device if p is not None else torch.device("cpu"))

    # ----------------------------------------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs that break the contract."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: expected a torch.Tensor [B, T, D], got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{self.name}: expected input of shape [B, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: last dim of input is {x.shape[-1]}, layer was built for dim={self.dim}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: input dtype must be floating point (fp16/bf16/fp32/fp64), got {x.dtype}")
        if x.shape[1] == 0:
            raise ValueError(f"{self.name}: empty sequence (T=0); T must be >= 1")
        p = next(self.parameters(), None)
        if p is not None and p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{self.name}: input dtype {x.dtype} does not match parameter dtype {p.dtype}; "
                "cast the layer (layer.to(dtype)) or run under torch.autocast"
            )

    def resolve_head_dim(self, head_dim: int | None) -> int:
        """The per-head width K: ``head_dim`` when given (a positive int), else ``dim // num_heads`` (which must
        divide). The one rule every mixer with a ``head_dim`` option follows."""
        if head_dim is None:
            if self.dim % self.num_heads:
                raise ValueError(f"{self.name}: dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                                 f"pass head_dim")
            return self.dim // self.num_heads
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
            raise ValueError(f"{self.name}: head_dim must be a positive int, got {head_dim!r}")
        return head_dim

    def _warn_if_long(self, x: torch.Tensor) -> None:
        """A CPU call the cost model puts far beyond an interactive budget warns first, with the estimate (once per
        layer and order of magnitude of the length): full attention at T = 400k computes for many minutes."""
        try:
            flops = self.cost(x.shape[1], 0, x.shape[0]).flops
        except Exception:  # noqa: BLE001 - an estimate must never stop a call
            return
        seconds = flops / _CPU_FLOPS
        key = (self.name, len(str(x.shape[1])))
        if seconds >= _LONG_CALL_SECONDS and key not in _WARNED:
            _WARNED.add(key)
            logger.warning("%s: a call on %d x %d tokens costs ~%.3g TFLOP (cost model): roughly %.0f minutes on a CPU "
                           "at ~%d GFLOP/s", self.name, x.shape[0], x.shape[1], flops / 1e12, seconds / 60,
                           _CPU_FLOPS / 1e9)

    def forward(
        self,
        x: torch.Tensor,
        *,
        layout: Any = None,
        positions: torch.Tensor | None = None,
        state: Any = None,
        return_state: bool = False,
    ):
        """``x: [B, T, D] -> [B, T, D]``; with ``return_state=True`` returns ``(y, state)``."""
        self.check_input(x)
        owner = getattr(state, "layer", None)  # see the module docstring: states name the layer type they came from
        if isinstance(owner, str) and owner and owner != self.name:
            raise TypeError(
                f"{self.name}: the carried state belongs to a {owner!r} layer; states do not move between layer "
                f"types: pass the state this {self.name!r} layer returned (or None to start fresh)"
            )
        if state is not None and not self.causal:
            raise ValueError(f"{self.name}: carried state is only defined for causal layers (causal=True)")
        if layout is not None and not self.takes_layout:
            raise TypeError(f"{self.name}: takes no layout (it mixes the tokens in the order given: the backbone "
                            f"orders them; frame layers read their config's grid); got {type(layout).__name__}")
        if x.shape[1] >= _LONG_CALL_TOKENS and x.device.type == "cpu":
            self._warn_if_long(x)
        y, new_state = self._forward(
            x, layout=layout, positions=positions, state=state, return_state=return_state
        )
        if "layer" in getattr(new_state, "_fields", ()):
            new_state = new_state._replace(layer=self.name)
        return (y, new_state) if return_state else y

    @abc.abstractmethod
    def _forward(self, x, *, layout, positions, state, return_state):
        """Subclass hook: returns ``(y, new_state)`` (``new_state`` may be ``None`` when not requested)."""
