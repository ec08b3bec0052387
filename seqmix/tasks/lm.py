"""Lightning task for token-level sequence modelling with a :class:`seqmix.backbones.MixerLM`, and the MQAR
data module that feeds it.

Batches are ``(inputs [B, T], labels [B, T])`` with ``labels == -100`` where nothing is scored (MQAR scores only
the queried values). Logged: ``train/loss``, ``val/loss``, ``val/acc`` (accuracy on scored positions).
"""

from __future__ import annotations

import functools
import logging
import math

import lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from seqmix.backbones.lm import LMConfig, MixerLM
from seqmix.data.mqar import IGNORE_INDEX, MQARConfig, make_mqar
from seqmix.training import ResumableLoader, data_parallel_rank, torch_shuffle_order, trainer_progress

logger = logging.getLogger(__name__)

__all__ = ["LMTask", "MQARData"]


class LMTask(pl.LightningModule):
    """Train / evaluate a causal :class:`MixerLM` with cross-entropy on the scored positions.

    Args:
        model: backbone settings (mixer name(s), width, depth, vocabulary).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps, then cosine decay to 10% of ``lr`` over the run.
    """

    def __init__(self, model: LMConfig, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 50):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.save_hyperparameters()
        self.lm = MixerLM(model)
        self.val_acc = MulticlassAccuracy(num_classes=model.vocab_size, ignore_index=IGNORE_INDEX, average="micro")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(tokens)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        v = getattr(dm, "vocab_size", None)
        if v is not None and v != self.lm.config.vocab_size:
            raise ValueError(
                f"model.model.vocab_size={self.lm.config.vocab_size} does not match data.vocab_size={v}; set both alike"
            )

    def _loss(self, batch):
        """(mean cross-entropy over the scored positions, their logits ``[N, V]``, their labels ``[N]``)."""
        inputs, labels = batch
        scored = labels != IGNORE_INDEX
        logits = self.lm.scored_logits(inputs, scored)  # the head only where a label is scored
        labels = labels[scored]
        if labels.numel() == 0:  # a batch without scored positions: a zero loss that still reaches every weight
            return logits.sum() * 0.0, logits, labels
        # at least fp32 for the softmax (bf16 logits under autocast), fp64 stays fp64
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels), logits, labels

    def training_step(self, batch, batch_idx):
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, labels = self._loss(batch)
        self.val_acc.update(logits.argmax(-1), labels)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "embed" not in n and ".pos." not in n else no_decay).append(p)
        h = self.hparams
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(h.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = (step - warm) / max(1, total - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MQARData(pl.LightningDataModule):
    """In-memory MQAR train / validation sets (see :mod:`seqmix.data.mqar`).

    Args:
        vocab_size, seq_len, num_kv_pairs, power_a, random_non_queries, form: the task (``MQARConfig``;
            ``form="answer_in_input"`` reproduces results made before Zoology's form became the default).
        num_train, num_val: examples per split (validation uses a different seed).
        batch_size: examples per batch.
        seed: base seed; the data are a pure function of the settings and the seed.
    """

    def __init__(self, vocab_size: int = 8192, seq_len: int = 128, num_kv_pairs: int = 8, power_a: float = 0.01,
                 random_non_queries: bool = True, form: str = "zoology", num_train: int = 20_000,
                 num_val: int = 1_000, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.cfg = MQARConfig(vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, power_a=power_a,
                              random_non_queries=random_non_queries, form=form)
        self.cfg.validate()  # fail at construction, before any training starts
        if batch_size < 1 or num_train < 1 or num_val < 1:
            raise ValueError(f"batch_size, num_train and num_val must be >= 1, got {batch_size}, {num_train}, {num_val}")
        self.vocab_size = vocab_size
        self.num_train, self.num_val, self.batch_size, self.seed = num_train, num_val, batch_size, seed
        self._train = self._val = None
        self._resume: dict | None = None  # loader position from a checkpoint (see load_state_dict)

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = TensorDataset(*make_mqar(self.cfg, self.num_train, seed=self.seed))
            self._val = TensorDataset(*make_mqar(self.cfg, self.num_val, seed=self.seed + 1_000_003))

    def _progress(self) -> tuple[int, int]:
        return trainer_progress(self.trainer)

    def _rank(self) -> tuple[int, int]:
        return data_parallel_rank(self.trainer)

    def train_dataloader(self):
        # Resumable mid-epoch (its position is checkpointed, so a killed run resumes exactly), in the order of a
        # plain shuffled DataLoader seeded with `seed` (results made with that loader stay reproducible); its own
        # generator keeps the loader from drawing on the global RNG.
        loader = ResumableLoader(self._train, self.batch_size, seed=self.seed, progress_fn=self._progress,
                                 rank_fn=self._rank, generator=torch.Generator(),
                                 order_fn=functools.partial(torch_shuffle_order, len(self._train), self.seed))
        if self._resume is not None:
            loader.load_state_dict(self._resume)
        return loader

    # The loader's position also travels as the data module's state: LMTask.configure_optimizers asks the trainer
    # for its step count, which builds the train loader before the loops' state (where Lightning keeps a loader's
    # position) is restored, and Lightning then never hands it over. The data module's state is restored first.
    def state_dict(self) -> dict:
        epoch, done = self._progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    def val_dataloader(self):
        return DataLoader(self._val, batch_size=self.batch_size)

    def test_dataloader(self):
        return self.val_dataloader()
