"""v-prediction, zero-terminal-SNR schedule and DDIM against diffusers' CogVideoXDDIMScheduler (an oracle)."""

import pytest
import torch

from seqmix.diffusion import ScheduleConfig, VDiffusion, guidance_ramp
from seqmix.utils.testing import assert_close

sched_mod = pytest.importorskip("diffusers.schedulers.scheduling_ddim_cogvideox")


def _theirs(shift):
    return sched_mod.CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, snr_shift_scale=shift)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_schedule_matches_diffusers(shift):
    ours = VDiffusion(ScheduleConfig(snr_shift_scale=shift))
    theirs = _theirs(shift)
    assert_close("alphas_cumprod", ours.alphas_cumprod.double(), theirs.alphas_cumprod.double(), 1e-6)
    assert ours.alphas_cumprod[-1] == 0, "zero terminal SNR"
    theirs.set_timesteps(50)
    assert ours.ddim_timesteps(50) == theirs.timesteps.tolist()


def test_noise_velocity_and_ddim_step_match_diffusers():
    ours, theirs = VDiffusion(), _theirs(1.0)
    theirs.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t = torch.tensor([0, 500, 999])
    assert_close("x_t", ours.add_noise(x0, eps, t), theirs.add_noise(x0, eps, t), 1e-6)
    assert_close("v", ours.velocity(x0, eps, t), theirs.get_velocity(x0, eps, t), 1e-6)
    x_t = ours.add_noise(x0, eps, t)
    v = ours.velocity(x0, eps, t)
    assert_close("x0 from v", ours.x0_from_v(x_t, v, t), x0, 1e-5)
    for t_ in (999, 519, 19):
        x = torch.randn(2, 4, 5, generator=g)
        v = torch.randn(2, 4, 5, generator=g)
        ref = theirs.step(v, t_, x).prev_sample
        assert_close(f"ddim step t={t_}", ours.ddim_step(x, v, t_, t_ - 20), ref, 1e-5)


def test_sampling_with_exact_velocity_recovers_the_data():
    """With the true v of a known x0 at every step, DDIM lands on x0; guidance with equal branches is a no-op."""
    diff = VDiffusion()
    target = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    calls = []

    def denoise(x, t, cond):
        calls.append(cond)
        a = diff.alphas_cumprod[t].view(-1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt().clamp_min(1e-12)
        return diff.velocity(target, eps, t)

    out = diff.sample(denoise, target.shape, num_steps=10, guidance=(1.0, 4.0), progress=False)
    assert_close("sampled x0", out, target, 1e-4)
    assert calls.count(False) == 9, "unconditional pass only where guidance != 1"


def test_guidance_ramp_and_errors():
    assert guidance_ramp(0, 50, 1.0, 4.0) == 1.0 and guidance_ramp(49, 50, 1.0, 4.0) == 4.0
    with pytest.raises(ValueError, match="num_steps"):
        VDiffusion().ddim_timesteps(0)
    with pytest.raises(ValueError, match="beta_start"):
        VDiffusion(ScheduleConfig(beta_start=0.5, beta_end=0.1))
