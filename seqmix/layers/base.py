"""The layer contract every seqmix mixer obeys, the registry that hands mixers out by name, and backend choice.

Contract (see ``shared/design.md``):

* ``layer(x)`` maps ``x: [B, T, D] -> [B, T, D]`` with the same dtype. Richer inputs are keyword-only:
  ``layout`` (segments / frames / grid, for mixers that need one), ``positions`` (RoPE positions),
  ``state`` (carried from a previous call) and ``return_state`` (then the call returns ``(y, state)``).
* ``layer.causal`` says whether output ``t`` depends only on inputs ``<= t``; causal mixers carry state across
  calls so that chunked inference equals one full pass.
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

logger = logging.getLogger(__name__)

__all__ = [
    "Mixer",
    "MixerConfig",
    "available",
    "build",
    "config_class",
    "register",
    "BackendUnavailable",
]


class BackendUnavailable(RuntimeError):
    """Raised when an explicitly requested backend cannot run and no fallback is allowed."""


@dataclass(kw_only=True)
class MixerConfig:
    """Fields shared by every mixer config.

    Attributes:
        backend: ``"auto"`` (choose by device) or one of the mixer's ``backends``.
    """

    backend: str = "auto"


_REGISTRY: dict[str, type["Mixer"]] = {}
_WARNED: set[tuple[str, str]] = set()


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


def _lookup(name: str) -> type["Mixer"]:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; valid names: {', '.join(available())}") from None


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
    """Base class of every sequence mixer. Subclasses set ``Config``, ``backends`` and implement ``_forward``.

    ``backends`` lists backend names in order of preference; ``_backend_ok(name, device)`` returns ``None`` when
    a backend can run on ``device`` or a short reason why not.
    """

    name: ClassVar[str] = "?"
    Config: ClassVar[type[MixerConfig]] = MixerConfig
    backends: ClassVar[tuple[str, ...]] = ("torch",)
    # Backends that are only a fallback (never chosen by "auto" on a device where a faster one runs).
    _reference_backends: ClassVar[tuple[str, ...]] = ()
    # False only for layers that mix no tokens at all (the "no global layer" baseline).
    mixes_tokens: ClassVar[bool] = True
    # Config fields that grow the state size / parameter count monotonically (used by seqmix.layers.sizing to
    # size a layer to a matched state or parameter budget); None where no such knob exists.
    state_knob: ClassVar[str | None] = None
    param_knob: ClassVar[str | None] = None

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
        self.dim = dim
        self.num_heads = num_heads
        self.config = config

    # ----------------------------------------------------------------------------------------------- contract
    @property
    def causal(self) -> bool:
        """Whether output t depends only on inputs <= t."""
        return bool(getattr(self.config, "causal", False))

    @abc.abstractmethod
    def state_size(self, seq_len: int | None = None) -> int:
        """Elements of recurrent state (or KV cache) kept per sequence after ``seq_len`` tokens.

        Fixed-state mixers ignore ``seq_len``; attention's KV cache grows with it (full attention needs it).
        """

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, causal={self.causal}, backend={'->'.join(dict.fromkeys((self.config.backend, self.backend)))}"

    # ----------------------------------------------------------------------------------------------- backends
    def _backend_ok(self, backend: str, device: torch.device) -> str | None:
        """``None`` if ``backend`` can run on ``device``, else the reason it cannot."""
        return None

    def backend_for(self, device: torch.device | str) -> str:
        """The backend this layer uses for inputs on ``device`` (resolves ``"auto"`` and missing libraries)."""
        device = torch.device(device)
        requested = self.config.backend
        if requested != "auto":
            reason = self._backend_ok(requested, device)
            if reason is None:
                return requested
            # Degrade to the next backend in preference order that runs here, warning once per (layer, backend).
            order = list(self.backends)
            for fallback in order[order.index(requested) + 1 :]:
                if self._backend_ok(fallback, device) is None:
                    key = (self.name, requested)
                    if key not in _WARNED:
                        _WARNED.add(key)
                        logger.warning(
                            "%s: backend %r unavailable (%s); using %r", self.name, requested, reason, fallback
                        )
                    return fallback
            raise BackendUnavailable(f"{self.name}: backend {requested!r} cannot run on {device}: {reason}")
        for b in self.backends:
            if b in self._reference_backends:
                continue
            if self._backend_ok(b, device) is None:
                return b
        for b in self._reference_backends:
            if self._backend_ok(b, device) is None:
                return b
        raise BackendUnavailable(f"{self.name}: no backend runs on {device}")

    @property
    def backend(self) -> str:
        """Backend used for this layer's current device."""
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
        y, new_state = self._forward(
            x, layout=layout, positions=positions, state=state, return_state=return_state
        )
        if "layer" in getattr(new_state, "_fields", ()):
            new_state = new_state._replace(layer=self.name)
        return (y, new_state) if return_state else y

    @abc.abstractmethod
    def _forward(self, x, *, layout, positions, state, return_state):
        """Subclass hook: returns ``(y, new_state)`` (``new_state`` may be ``None`` when not requested)."""
