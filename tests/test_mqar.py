"""MQAR generator (definition properties), the LM backbone with every registry layer, and the MQAR recipes."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix import layers
from seqmix.backbones import LMConfig, MixerLM
from seqmix.data.mqar import FORMS, IGNORE_INDEX, MQARConfig, assemble_mqar, make_mqar

import contract as C

RECIPES = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "recipes" / "mqar").glob("*.yaml"))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("random_fill", [True, False], ids=["random-fill", "zero-fill"])
def test_every_query_key_appeared_earlier_with_its_value(random_fill, form):
    cfg = MQARConfig(vocab_size=66, seq_len=64, num_kv_pairs=6, random_non_queries=random_fill, form=form)
    x, y = make_mqar(cfg, 200, seed=3)
    assert x.shape == y.shape == (200, 64) and x.dtype == y.dtype == torch.int64
    P = cfg.num_kv_pairs
    for seq, lab in zip(x, y):
        keys, vals = seq[0 : 2 * P : 2], seq[1 : 2 * P : 2]
        assert len(set(keys.tolist())) == P, "keys must be distinct"
        assert (keys >= 1).all() and (keys < 33).all() and (vals >= 33).all() and (vals < 66).all()
        if form == "zoology":
            assert len(set(vals.tolist())) == P, "values are drawn without replacement (as Zoology)"
        q = (lab != IGNORE_INDEX).nonzero().flatten()
        assert len(q) == P, "every key is queried exactly once"
        for t in q.tolist():
            assert t >= 2 * P, "no target inside the key-value context"
            k = seq[t].item()
            i = keys.tolist().index(k)  # the queried key appeared earlier ...
            assert lab[t].item() == vals[i].item(), "... and the target is its value"
            if t + 1 < len(seq) and form == "answer_in_input":
                assert seq[t + 1].item() == vals[i].item(), "the value follows its query in the input"
            if t + 1 < len(seq) and form == "zoology" and not random_fill:
                assert seq[t + 1].item() == 0, "no answer in the input after a query (Zoology)"


def test_zoology_form_equals_hand_written_sequences():
    # Zoology's own docstring example: V=12, 2 pairs, zero fill; key 4 queried at position 6, key 2 at 12.
    x, y = assemble_mqar(np.array([[2, 4]]), np.array([[8, 7]]), np.array([[4, 1]]), seq_len=16)
    assert x.tolist() == [[2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0]]
    I = IGNORE_INDEX
    assert y.tolist() == [[I, I, I, I, I, I, 7, I, I, I, I, I, 8, I, I, I]]
    # Random filler only where there is neither context nor a query key.
    fill = np.full((1, 10), 99)
    x, y = assemble_mqar(np.array([[5]]), np.array([[11]]), np.array([[0]]), seq_len=10, fill=fill)
    assert x.tolist() == [[5, 11, 5, 99, 99, 99, 99, 99, 99, 99]]
    assert y.tolist() == [[I, I, 11, I, I, I, I, I, I, I]]


def test_zoology_form_draws_fill_from_the_whole_vocabulary():
    cfg = MQARConfig(vocab_size=200, seq_len=128, num_kv_pairs=4)
    x, y = make_mqar(cfg, 100, seed=0)
    filler = x[:, 8:][y[:, 8:] == IGNORE_INDEX]
    assert filler.min() == 0 and filler.max() >= 190, "filler is uniform over [0, V), as Zoology's"


def test_no_target_outside_query_positions_and_determinism():
    cfg = MQARConfig(vocab_size=128, seq_len=96, num_kv_pairs=8)
    x1, y1 = make_mqar(cfg, 50, seed=7)
    x2, y2 = make_mqar(cfg, 50, seed=7)
    x3, _ = make_mqar(cfg, 50, seed=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    scored = y1 != IGNORE_INDEX
    assert (scored.sum(1) == 8).all()
    assert (y1[scored] >= 64).all(), "targets are values only"


def test_power_law_prefers_short_gaps():
    cfg = MQARConfig(vocab_size=512, seq_len=256, num_kv_pairs=4, power_a=0.01)
    _, y = make_mqar(cfg, 500, seed=0)
    pos = (y != IGNORE_INDEX).nonzero()[:, 1].float()
    first_half = ((pos - 8) < (256 - 8) / 2).float().mean()
    assert first_half > 0.6


@pytest.mark.parametrize(
    "kw, msg",
    [(dict(seq_len=30, num_kv_pairs=8), "seq_len=30 is too short"),
     (dict(vocab_size=16, num_kv_pairs=8), "vocab_size=16 is too small"),
     (dict(num_kv_pairs=0), "num_kv_pairs"),
     (dict(power_a=0.0), "power_a"),
     (dict(seq_len=63, vocab_size=256), "must be even"),
     (dict(seq_len=128, vocab_size=128), "must exceed seq_len"),
     (dict(form="zoo"), "unknown MQAR form")],
)
def test_bad_settings_fail_clearly(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_mqar(MQARConfig(**kw), 4, seed=0)


@pytest.mark.parametrize("name", layers.sequence_mixers())
def test_lm_with_every_layer_is_causal(name):
    torch.manual_seed(0)
    cfg = dict(layers.mixer_class(name).Tooling.small_config)
    lm = MixerLM(LMConfig(vocab_size=50, dim=C.DIM, num_layers=2, num_heads=C.HEADS, mixer=name,
                          mixer_config=cfg, max_len=64)).double()
    x = torch.randint(0, 50, (2, 19))
    logits = lm(x)
    assert logits.shape == (2, 19, 50)
    t = 9
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % 50
    logits2 = lm(x2)
    assert torch.allclose(logits[:, :t], logits2[:, :t], atol=1e-10, rtol=0), f"{name}: position < t saw token t"
    assert not torch.allclose(logits[:, t:], logits2[:, t:])


def test_hybrid_stack_and_errors():
    lm = MixerLM(LMConfig(vocab_size=20, dim=32, num_layers=2, num_heads=2, mixer=["ttt_linear", "ttt_mlp"],
                          mixer_config=[{"mini_batch_size": 4}, {"mini_batch_size": 8}]))
    assert lm.mixer_names == ["ttt_linear", "ttt_mlp"]
    assert all(b.mixer.causal for b in lm.blocks)
    assert lm(torch.randint(0, 20, (1, 10))).shape == (1, 10, 20)
    with pytest.raises(ValueError, match="one per layer"):
        MixerLM(LMConfig(vocab_size=20, dim=32, num_layers=3, mixer=["ttt_linear", "ttt_mlp"]))
    with pytest.raises(ValueError, match="causal=False"):
        MixerLM(LMConfig(vocab_size=20, dim=32, mixer="ttt_linear", mixer_config={"causal": False}))
    with pytest.raises(ValueError, match="token ids"):
        lm(torch.tensor([[0, 25]]))


def test_lm_chunked_inference_with_state_equals_full_pass():
    torch.manual_seed(0)
    lm = MixerLM(LMConfig(vocab_size=30, dim=32, num_layers=2, num_heads=2, mixer="ttt_mlp",
                          mixer_config={"mini_batch_size": 4})).double()
    x = torch.randint(0, 30, (2, 13))
    full = lm(x)
    a, st = lm(x[:, :6], return_state=True)
    b, st = lm(x[:, 6:7], state=st, return_state=True, offset=6)
    c = lm(x[:, 7:], state=st, offset=7)  # the carried state is used without asking for the next one
    assert torch.allclose(torch.cat([a, b, c], 1), full, atol=1e-10)


def test_scored_logits_and_task_loss_equal_the_full_head():
    """Training computes the head only at the scored positions: logits, loss, gradients and accuracy equal the full
    head's (cross-entropy with ``ignore_index``)."""
    import torch.nn.functional as F

    from seqmix.tasks import LMTask

    torch.manual_seed(0)
    task = LMTask(LMConfig(vocab_size=40, dim=16, num_layers=2, mixer="full_attn")).double()
    cfg = MQARConfig(vocab_size=40, seq_len=24, num_kv_pairs=3)
    inputs, labels = (torch.as_tensor(a) for a in make_mqar(cfg, 4, seed=0))
    scored = labels != IGNORE_INDEX
    full = task.lm(inputs)
    assert torch.equal(task.lm.scored_logits(inputs, scored), full[scored])
    ref = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    ref_grads = torch.autograd.grad(ref, list(task.parameters()))
    loss, logits, kept = task._loss((inputs, labels))
    assert torch.allclose(loss, ref, atol=1e-12) and torch.equal(kept, labels[scored])
    for g, r in zip(torch.autograd.grad(loss, list(task.parameters())), ref_grads):
        assert torch.allclose(g, r, atol=1e-12)
    none = torch.full_like(labels, IGNORE_INDEX)  # nothing scored: a zero loss, not NaN
    assert task._loss((inputs, none))[0].item() == 0.0
    with pytest.raises(ValueError, match="bool mask"):
        task.lm.scored_logits(inputs, scored.long())


@pytest.mark.parametrize("mixer", [["full_attn", "mamba2"], ["ttt_linear", "gated_deltanet"]], ids="+".join)
def test_short_conv_is_causal_and_carries_state(mixer):
    torch.manual_seed(0)
    cfgs = [dict(layers.mixer_class(m).Tooling.small_config) for m in mixer]
    lm = MixerLM(LMConfig(vocab_size=30, dim=C.DIM, num_layers=2, num_heads=C.HEADS, mixer=mixer, mixer_config=cfgs,
                          short_conv=4, max_len=32)).double()
    with torch.no_grad():  # zero-initialised taps would make every check below trivial
        for b in lm.blocks:
            b.conv.weight.normal_()
    x = torch.randint(0, 30, (2, 13))
    full = lm(x)
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 30
    assert torch.equal(lm(x2)[:, :7], full[:, :7])
    a, st = lm(x[:, :6], return_state=True)
    b, st = lm(x[:, 6:7], state=st, return_state=True, offset=6)
    c = lm(x[:, 7:], state=st, offset=7)
    assert torch.allclose(torch.cat([a, b, c], 1), full, atol=1e-10)
    # the shifted multiply-adds equal a causal depthwise conv1d (plus the residual)
    conv = lm.blocks[0].conv
    h = torch.randn(2, 13, C.DIM, dtype=torch.float64)
    ref = h + torch.nn.functional.conv1d(torch.nn.functional.pad(h.transpose(1, 2), (3, 0)),
                                         conv.weight.T[:, None, :], groups=C.DIM).transpose(1, 2)
    assert torch.allclose(conv(h)[0], ref, atol=1e-12)
    with pytest.raises(ValueError, match="short_conv"):
        MixerLM(LMConfig(vocab_size=30, dim=32, short_conv=1))


def test_every_layer_has_an_mqar_recipe():
    have = {Path(r).stem for r in RECIPES}
    want = set(layers.sequence_mixers()) - {"identity", "local_attn"}  # every global layer (not the no-op baselines)
    assert want <= have, f"missing MQAR recipes: {sorted(want - have)}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: Path(r).stem)
def test_mqar_recipe_fast_dev_run(recipe, tmp_path):
    from seqmix.lightning_cli import run_lightning

    cli = run_lightning(["fit", "--config", recipe, "--trainer.fast_dev_run=true",
                         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                         "--data.init_args.num_train=128", "--data.init_args.num_val=64"])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["train/loss"])))


def test_compare_quick_writes_table(tmp_path):
    from seqmix.compare import MQARSweep, run_mqar_sweep

    sweep = MQARSweep(layers=["ttt_mlp", "ttt_linear"],
                      widths=[32], lrs=[1e-3], max_steps=2, jobs=2, out=str(tmp_path))
    res = run_mqar_sweep(sweep, progress=False)  # two worker processes, one run each
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
    assert {r["mixer"] for r in res["best"]} == {"ttt_mlp", "ttt_linear"}
    assert all(0.0 <= r["val_acc"] <= 1.0 and r["steps"] == 2 for r in res["best"])
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in res["records"])
    with pytest.raises(ValueError, match="jobs"):
        MQARSweep(jobs=-1).validate()


def _zoology_attention(x, wqkv, bqkv, wo, bo, heads: int, back: int | None = None):
    """TEST-ONLY transcription of Zoology's MQAR attention (``zoology/mixers/attention.py`` ``MHA``; with ``back``,
    ``zoology/mixers/slide_attn.py`` ``SlidingAttn`` with ``block_size=back``, one head): a fused QKV projection with
    bias, softmax over ``q k / sqrt(K)`` with an additive -10000 mask (future keys; with ``back`` also keys more than
    ``back`` tokens before the query), an output projection with bias, no positional encoding. ``x [B, T, D]``."""
    import math

    B, T, D = x.shape
    q, k, v = (x @ wqkv.T + bqkv).view(B, T, 3, heads, D // heads).unbind(2)  # [B, T, H, K] each
    scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(D // heads))
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    hidden = s > t
    if back is not None:
        hidden |= s < t - back
    scores = scores + torch.where(hidden, -10000.0, 0.0).to(x.dtype)
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)
    return out.reshape(B, T, D) @ wo.T + bo


@pytest.mark.parametrize("name", ["full_attn", "swa", "local_attn"])
def test_mqar_attention_recipes_build_zoologys_attention(name):
    """The MQAR recipes' attention is Zoology's: the LM block passes it no RoPE positions, and its output equals the
    public MHA / sliding-window equations (transcribed above) on the same weights in fp64. Zoology's ``block_size``
    b lets a query see b tokens back (b + 1 keys), seqmix's ``window`` w counts the keys: b = w - 1."""
    from seqmix.lightning_cli import run_lightning
    from seqmix.utils.recipes import builtin_recipe

    cli = run_lightning(["--config", str(builtin_recipe(f"mqar/{name}")), "--trainer.logger=false"], run=False)
    (lm,) = [m for m in cli.model.modules() if isinstance(m, MixerLM)]
    assert not lm.config.rope and all(not b.rope for b in lm.blocks)
    mixer = lm.blocks[0].mixer.double().eval()
    torch.manual_seed(0)
    x = torch.randn(2, 41, mixer.dim, dtype=torch.float64)
    wqkv = torch.cat([mixer.wq.weight, mixer.wk.weight, mixer.wv.weight])
    bqkv = torch.cat([mixer.wq.bias, mixer.wk.bias, mixer.wv.bias])
    back = mixer.config.window - 1 if name == "swa" else None
    with torch.no_grad():
        want = _zoology_attention(x, wqkv, bqkv, mixer.wo.weight, mixer.wo.bias, mixer.num_heads, back)
        C.assert_close(f"{name} vs Zoology's attention", mixer(x), want, 1e-12)


def test_mqar_lact_recipe_builds_the_public_lm_layer():
    """The MQAR recipe's LaCT is the public LM layer (window attention beside the fast weights, the released
    configs' options, its rotary embedding at the positions the LM block passes) and equals its transcription
    (tests/test_lact.py) on the recipe-built weights in fp64."""
    from seqmix.lightning_cli import run_lightning
    from seqmix.utils.recipes import builtin_recipe
    from tests.test_lact import _public_lact_lm_layer, _public_layout

    cli = run_lightning(["--config", str(builtin_recipe("mqar/lact")), "--trainer.logger=false"], run=False)
    (lm,) = [m for m in cli.model.modules() if isinstance(m, MixerLM)]
    mixer = lm.blocks[0].mixer.double().eval()
    c = mixer.config
    assert c.causal and c.window == c.chunk_size > 0 and c.momentum and c.ttt_scale and not c.muon
    assert c.rope and not c.ttt_nope and c.rope_theta == 1_000_000 and lm.blocks[0].rope
    torch.manual_seed(0)
    x = torch.randn(2, 37, mixer.dim, dtype=torch.float64)
    with torch.no_grad():
        want = _public_lact_lm_layer(x, _public_layout(mixer), heads=mixer.num_heads, attn_heads=mixer.window_heads,
                                     window=c.window, chunk_size=c.chunk_size, base_lr=c.base_lr, muon=c.muon,
                                     momentum=c.momentum, ttt_scale=c.ttt_scale, rope_theta=c.rope_theta)
        C.assert_close("lact vs the public LM layer", mixer(x, positions=torch.arange(37)), want, 1e-12)


def _recipe_mixer(name: str):
    from seqmix.lightning_cli import run_lightning
    from seqmix.utils.recipes import builtin_recipe

    cli = run_lightning(["--config", str(builtin_recipe(f"mqar/{name}")), "--trainer.logger=false"], run=False)
    (lm,) = [m for m in cli.model.modules() if isinstance(m, MixerLM)]
    return lm.blocks[0].mixer


def test_mqar_gated_deltanet_recipe_builds_fla_layer():
    """The MQAR recipe's Gated DeltaNet is ``fla.layers.GatedDeltaNet`` at the recipe's width and heads: the same
    parameter names, shapes and dtypes, strict loads both ways (its outputs equal fla's layer:
    tests/test_gated_deltanet.py)."""
    fla_layers = pytest.importorskip("fla.layers")
    mixer = _recipe_mixer("gated_deltanet")
    c = mixer.config
    peer = fla_layers.GatedDeltaNet(hidden_size=mixer.dim, num_heads=mixer.num_heads, head_dim=mixer.head_k_dim,
                                    expand_v=c.expand_v, use_short_conv=c.use_short_conv, conv_size=c.conv_size,
                                    use_gate=c.use_gate)
    mine, theirs = mixer.state_dict(), peer.state_dict()
    assert {n: (tuple(t.shape), t.dtype) for n, t in mine.items()} == \
        {n: (tuple(t.shape), t.dtype) for n, t in theirs.items()}
    mixer.load_state_dict(theirs, strict=True)
    peer.load_state_dict(mine, strict=True)


def test_mqar_mamba2_recipe_equals_fla_mamba2():
    """The MQAR recipe's Mamba2 is ``mamba_ssm.Mamba2(d_model=64)`` with its defaults (d_state 128, expand 2, head
    dim 64, one group): on fla's Mamba2 of those settings (mamba-ssm's names) its weights load strictly and the
    outputs equal fla's PyTorch forward."""
    from seqmix.ops import external

    if external.fla_unavailable() is not None:
        pytest.skip(str(external.fla_unavailable()))
    from fla.layers import Mamba2 as FlaMamba2

    external.patch_triton_interpreter()
    mixer = _recipe_mixer("mamba2")
    c = mixer.config
    assert (c.d_state, c.expand, c.ngroups, c.d_conv) == (128, 2, 1, 4) and mixer.headdim == 64
    torch.manual_seed(0)
    peer = FlaMamba2(num_heads=None, head_dim=64, hidden_size=mixer.dim, state_size=128, expand=2, n_groups=1,
                     chunk_size=c.chunk_size)
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mixer.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 37, mixer.dim)
    with torch.no_grad():
        C.assert_close("mamba2 vs fla Mamba2", mixer(x), peer.torch_forward(x)[0], 1e-5)
