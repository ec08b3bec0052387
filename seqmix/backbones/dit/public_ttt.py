"""State dicts of the public ttt-video-dit code (test-time-training/ttt-video-dit) <-> seqmix's TTT layers and DiT.

Per TTT layer the public code (``ttt/models/ssm/ttt_layer.py``, ``TTTLinear`` / ``TTTMLP``) stores, for model width
D, H heads of width K and inner width F::

    wq / wk / wv / wo .weight [H K, D] / [D, H K], .bias [H K] / [D]   -> the same names here
    learnable_ttt_lr_weight [H, 1, D]                                  -> lr_weight [H, D]
    learnable_ttt_lr_bias   [H, 1]                                     -> lr_bias [H]
    ttt_norm_weight / ttt_norm_bias [H, K]                             -> the same names
    post_norm.weight / .bias [H K]                                     -> the same names
    W1 [H, K, F], b1 [H, 1, F] (, W2 [H, F, K], b2 [H, 1, K])          -> the same names

In its DiT (``ttt/models/cogvideo/dit.py``) block ``i`` keeps that layer under
``dit.layers.{i}.seq_modeling_block.ssm.ttt.`` and four gate vectors [D] under
``dit.layers.{i}.seq_modeling_block.{forward,backward}_ssm_gating_{text,video}.gating_alpha``, here
``transformer_blocks.{i}.global_layer.mixer.`` and ``...global_layer.gate_{fwd,bwd}_{text,video}.alpha``.
The public reversed pass gives the reversed sequence its RoPE table by index: load into a DiT whose
``mixer_reverse_positions`` is ``"mirrored"`` (the default) to reproduce it. The public code computes the
per-token inner rates on mini-batches of its storage order and reorders only the rows of the step sizes; the
loaders switch the layers to that arithmetic (``eta_order="public"``, see :class:`seqmix.layers.ttt.TTTConfig`),
with which the DiT's global layers equal the public code also where a segment boundary falls inside a mini-batch
(``tests/test_ttt_variants.py``); with the default ``"read"`` they equal it only where every boundary falls on a
mini-batch edge. The rest of a public checkpoint (its
own names for the CogVideoX weights) is not read here: load those from a diffusers checkpoint
(:meth:`SegmentedDiT.from_cogvideox`). Public checkpoints are torch.distributed checkpoints; convert them to one
flat state dict first (``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``).
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ttt_from_public", "ttt_to_public", "load_public_ttt", "load_public_dit_ttt", "PUBLIC_DIT_PREFIX"]

#: Prefix of block ``i`` in the public DiT's flat state dict.
PUBLIC_DIT_PREFIX = "dit.layers.{i}.seq_modeling_block."
_SAME = ("wq.weight", "wq.bias", "wk.weight", "wk.bias", "wv.weight", "wv.bias", "wo.weight", "wo.bias",
         "ttt_norm_weight", "ttt_norm_bias", "post_norm.weight", "post_norm.bias", "W1", "b1", "W2", "b2")
_GATES = {"forward_ssm_gating_text": "gate_fwd_text", "forward_ssm_gating_video": "gate_fwd_video",
          "backward_ssm_gating_text": "gate_bwd_text", "backward_ssm_gating_video": "gate_bwd_video"}


def ttt_from_public(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One public TTT layer's state dict -> seqmix names and shapes (see the module docstring).

    Only the renaming / reshaping; :func:`load_public_ttt` checks completeness and shapes against a layer.
    Unknown keys are passed through unchanged (so the strict load names them)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key == "learnable_ttt_lr_weight":
            if t.dim() != 3 or t.shape[1] != 1:
                raise ValueError(f"learnable_ttt_lr_weight must be [H, 1, D], got {tuple(t.shape)}")
            out["lr_weight"] = t[:, 0]
        elif key == "learnable_ttt_lr_bias":
            if t.dim() != 2 or t.shape[1] != 1:
                raise ValueError(f"learnable_ttt_lr_bias must be [H, 1], got {tuple(t.shape)}")
            out["lr_bias"] = t[:, 0]
        else:
            out[key] = t
    return out


def ttt_to_public(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seqmix TTT layer (``variant="video"``) state dict -> the public layer's names and shapes."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key == "lr_weight":
            out["learnable_ttt_lr_weight"] = t[:, None]
        elif key == "lr_bias":
            out["learnable_ttt_lr_bias"] = t[:, None]
        elif key in _SAME:
            out[key] = t
        else:
            raise ValueError(f"{key!r} has no counterpart in the public ttt-video-dit layer (variant='lm' or "
                             "output-gate parameters do not exist there)")
    return out


def _copy_checked(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``sd`` into ``module`` strictly: every parameter present, nothing unexpected, shapes equal."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if shapes:
        problems.append(f"shape mismatch {shapes}")
    if problems:
        raise ValueError(f"cannot load {what}: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in sd.items():
            own[k].copy_(t)  # casts to the module's dtype / device


def load_public_ttt(layer: nn.Module, sd: Mapping[str, torch.Tensor], *, eta_order: str = "public") -> None:
    """Load one public ttt-video-dit TTT layer's state dict (public names) into a seqmix ``ttt_linear`` /
    ``ttt_mlp`` of ``variant="video"``; strict: raises naming missing / unexpected keys and shape mismatches.

    ``eta_order``: set on the layer (``"public"``, the default: the public code's arithmetic, which reproduces the
    checkpoint exactly; ``"read"`` keeps seqmix's per-token rates, e.g. to fine-tune in that form)."""
    from seqmix.layers.ttt import TTTLinear, TTTMLP

    if not isinstance(layer, (TTTLinear, TTTMLP)):
        raise TypeError(f"load_public_ttt loads into a seqmix TTTLinear / TTTMLP, got {type(layer).__name__}")
    if layer.variant != "video":
        raise ValueError(f"the public ttt-video-dit layer is variant='video'; this layer is {layer.variant!r}")
    if eta_order not in ("read", "public"):
        raise ValueError(f"eta_order must be 'read' or 'public', got {eta_order!r}")
    _copy_checked(layer, ttt_from_public(sd), f"a public ttt-video-dit state dict into {layer.name}")
    if layer.config.eta_order != eta_order:
        logger.info("%s: eta_order %r -> %r", layer.name, layer.config.eta_order, eta_order)
        layer.config.eta_order = eta_order


def load_public_dit_ttt(model: nn.Module, sd: Mapping[str, torch.Tensor], *, prefix: str = PUBLIC_DIT_PREFIX,
                        eta_order: str = "public") -> list[str]:
    """Load the TTT layers and their four gates of every block from a public ttt-video-dit DiT state dict (flat,
    public names) into a :class:`SegmentedDiT` with a ``ttt_linear`` / ``ttt_mlp`` global layer.

    ``prefix``: where block ``i``'s sequence-modelling block lives (``{i}`` is the block index). Keys of the
    public checkpoint outside the TTT layers and gates (its CogVideoX weights) are ignored; within them the load
    is strict. ``eta_order`` is set on every TTT layer (see :func:`load_public_ttt`). Returns the seqmix names
    that were loaded.
    """
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None or any(b.global_layer is None for b in blocks):
        raise ValueError("load_public_dit_ttt needs a SegmentedDiT with a global layer in every block (mixer set)")
    if model.config.mixer not in ("ttt_linear", "ttt_mlp"):
        raise ValueError(f"the public checkpoint holds TTT layers; the model's mixer is {model.config.mixer!r}")
    if model.config.mixer_reverse_positions != "mirrored":
        logger.warning("loading public TTT weights into a DiT with mixer_reverse_positions=%r: the public code gives "
                       "the reversed pass mirrored positions, outputs will differ from it",
                       model.config.mixer_reverse_positions)
    pattern = re.compile(re.escape(prefix).replace(r"\{i\}", r"(\d+)") + r"(.*)")
    per_block: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, t in sd.items():
        m = pattern.fullmatch(key)
        if m is None:
            continue
        i, rest = int(m.group(1)), m.group(2)
        slot = per_block.setdefault(i, {"ttt": {}, "gates": {}})
        if rest.startswith("ssm.ttt."):
            slot["ttt"][rest[len("ssm.ttt."):]] = t
        elif rest.split(".")[0] in _GATES:
            slot["gates"][rest] = t
    extra = sorted(set(per_block) - set(range(len(blocks))))
    absent = sorted(set(range(len(blocks))) - set(per_block))
    if extra or absent:
        raise ValueError(f"the checkpoint has TTT blocks {sorted(per_block)}, the model {len(blocks)} blocks "
                         f"(absent: {absent}, extra: {extra}); is prefix {prefix!r} right?")
    loaded = []
    for i, block in enumerate(blocks):
        gl = block.global_layer
        load_public_ttt(gl.mixer, per_block[i]["ttt"], eta_order=eta_order)
        gates = {f"{_GATES[k.split('.')[0]]}.alpha": v for k, v in per_block[i]["gates"].items()
                 if k.endswith(".gating_alpha")}
        odd = sorted(k for k in per_block[i]["gates"] if not k.endswith(".gating_alpha"))
        if odd:
            raise ValueError(f"block {i}: unexpected gate keys {odd}")
        gate_modules = nn.ModuleDict({name: getattr(gl, name) for name in _GATES.values()})
        _copy_checked(gate_modules, gates, f"the gates of block {i}")
        loaded += [f"transformer_blocks.{i}.global_layer.mixer.{k}" for k in gl.mixer.state_dict()]
        loaded += [f"transformer_blocks.{i}.global_layer.{k}" for k in gates]
    logger.info("loaded public TTT weights and gates of %d block(s)", len(blocks))
    return loaded
