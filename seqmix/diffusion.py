"""Diffusion as the TTT video paper trains and samples it (CogVideoX recipe): v-prediction on a DDPM
"scaled_linear" schedule with an SNR shift and zero terminal SNR (Lin et al. 2023, arXiv 2305.08891), DDIM
sampling on "trailing" timesteps with classifier-free guidance whose scale ramps over the steps.

Conventions: ``a_t = alphas_cumprod[t]``; ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``;
``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``; ``x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v``. Integer timesteps
``t in [0, num_train_timesteps)``; ``t = T - 1`` is pure noise when the terminal SNR is zero. These match
diffusers' ``CogVideoXDDIMScheduler`` (tested against it).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["ScheduleConfig", "VDiffusion", "guidance_ramp"]


@dataclass(kw_only=True)
class ScheduleConfig:
    """Noise schedule (defaults: CogVideoX-5B's scheduler config).

    Attributes:
        num_train_timesteps: number of discrete training timesteps.
        beta_start, beta_end: ends of the "scaled_linear" beta schedule (linear in sqrt(beta)).
        snr_shift_scale: SNR shift ``a / (s + (1 - s) a)`` (CogVideoX-2B: 3.0, 5B: 1.0 = no shift).
        zero_terminal_snr: rescale so that the last timestep is pure noise.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    snr_shift_scale: float = 1.0
    zero_terminal_snr: bool = True


def _alphas_cumprod(c: ScheduleConfig) -> torch.Tensor:
    if c.num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {c.num_train_timesteps}")
    if not 0 < c.beta_start < c.beta_end < 1:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {c.beta_start}, {c.beta_end}")
    betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    a = torch.cumprod(1.0 - betas, 0)
    a = a / (c.snr_shift_scale + (1 - c.snr_shift_scale) * a)
    if c.zero_terminal_snr:
        s = a.sqrt()
        s0, sT = s[0].clone(), s[-1].clone()
        s = (s - sT) * s0 / (s0 - sT)  # shift so the last is 0, scale so the first is unchanged
        a = s**2
    return a


def guidance_ramp(step: int, num_steps: int, start: float, end: float) -> float:
    """Guidance scale at sampling ``step`` (0 = the noisiest): linear from ``start`` to ``end``."""
    if num_steps <= 1:
        return end
    return start + (end - start) * step / (num_steps - 1)


class VDiffusion(torch.nn.Module):
    """v-prediction diffusion: noising, training targets, and DDIM sampling with classifier-free guidance."""

    def __init__(self, config: ScheduleConfig | None = None):
        super().__init__()
        self.config = config or ScheduleConfig()
        self.register_buffer("alphas_cumprod", _alphas_cumprod(self.config).float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def _coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()].to(like.dtype)
        a = a.view(-1, *([1] * (like.dim() - 1)))
        return a.sqrt(), (1 - a).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean ``x0 [B, ...]``, ``noise`` like it and integer ``t [B]``."""
        sa, sb = self._coef(t, x0)
        return sa * x0 + sb * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target."""
        sa, sb = self._coef(t, x0)
        return sa * noise - sb * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sa, sb = self._coef(t, x_t)
        return sa * x_t - sb * v

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        """"trailing" spacing: ``T-1, T-1-r, ...`` with ``r = T / num_steps`` (first step is pure noise)."""
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps must lie in [1, {self.num_timesteps}], got {num_steps}")
        ratio = self.num_timesteps / num_steps
        return [int(round(self.num_timesteps - i * ratio)) - 1 for i in range(num_steps)]

    def ddim_step(self, x_t: torch.Tensor, v: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from ``t`` to ``t_prev`` (``t_prev < 0``: to the clean sample)."""
        a_t = self.alphas_cumprod[t].double()
        a_p = self.alphas_cumprod[t_prev].double() if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * v
        c_x = ((1 - a_p) / (1 - a_t)).sqrt()
        c_0 = a_p.sqrt() - a_t.sqrt() * c_x
        return (c_x.to(x_t.dtype) * x_t + c_0.to(x_t.dtype) * x0).to(x_t.dtype)

    @torch.no_grad()
    def sample(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
        shape: tuple[int, ...],
        *,
        num_steps: int = 50,
        guidance: tuple[float, float] = (1.0, 4.0),
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM sampling with classifier-free guidance.

        Args:
            denoise: ``denoise(x_t, t [B], conditional: bool) -> v``; ``conditional=False`` drops the text.
            shape: sample shape ``[B, ...]``.
            num_steps: DDIM steps (paper: 50).
            guidance: (first step, last step) guidance scales, ramped linearly (paper: 1 -> 4; 1.0 everywhere
                disables the unconditional pass).
            noise: optional initial noise (else drawn from ``generator``).
        Returns:
            the clean sample ``x0`` of ``shape``.
        """
        x = noise.to(device=device, dtype=dtype) if noise is not None else torch.randn(
            shape, generator=generator, device=device, dtype=dtype)
        ts = self.ddim_timesteps(num_steps)
        stride = self.num_timesteps // num_steps
        for i, t in enumerate(tqdm(ts, desc="ddim", disable=not progress, file=sys.stderr)):
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            w = guidance_ramp(i, num_steps, *guidance)
            v = denoise(x, tt, True)
            if w != 1.0:
                v_u = denoise(x, tt, False)
                v = v_u + w * (v - v_u)
            x = self.ddim_step(x, v, t, t - stride)
        return x
