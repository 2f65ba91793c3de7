"""Classifier: value embedding + position -> backbone -> readout -> linear head.

``embed`` (``task.embed``), the value embedding added to the sinusoidal position encoding:
- ``causal_conv`` (the suite's default): step k from steps k-2..k, a kernel-3 convolution
  left-padded so that no step sees the future;
- ``circular`` (the Time-Series-Library's ``DataEmbedding`` for classification): a kernel-3
  circular convolution without bias over the padded length, Kaiming-normal initialised:
  step k reads steps k-1, k, k+1, step 0 reads the last (padded) step and the last step
  reads step 0. It looks one step ahead, also for causal backbones;
- ``linear``: each step alone.

``mask_padding`` (default true): the backbone receives the padding mask. The library's
encoder gets none: its (bidirectional) attention reads padded steps as tokens; a causal
backbone is unaffected at real steps, since right padding lies in their future.
``final_norm``: a LayerNorm on the backbone's outputs (the library's encoder ends with one).

``readout`` says how the head reads the backbone's outputs (padded steps never count):
- ``flatten`` (default, the Time-Series-Library classifier the paper keeps): GELU, dropout,
  zero the padded steps, flatten (max_len x d_model) -> linear;
- ``last``: the output at the last real step (it has seen the whole series: the RNN view);
- ``mean``: the mean output over real steps.

``lr_schedule``: ``none`` (constant) or ``tslib_cls`` (:func:`tslib_cls_factor`). Validation
logs ``val/acc`` and ``val/acc_tie_later`` (:meth:`Classifier.on_validation_epoch_end`).
Validation and test metrics are torchmetrics objects: accuracy, the mean cross-entropy and the
number of series (``test/samples``) over the whole split, across every process of a run.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal
from tasks.classify.data import PADDING

READOUTS = ("flatten", "last", "mean")
EMBEDS = ("causal_conv", "circular", "linear")
LR_SCHEDULES = ("none", "tslib_cls")


def tslib_cls_factor(epoch: int) -> float:
    """The learning-rate factor during (0-based) ``epoch`` of the Time-Series-Library's
    classification loop at a68756f.

    After each epoch whose 1-based number E is a multiple of 5 the loop calls
    ``adjust_learning_rate(E)`` with ``lradj=type1``, which sets ``lr0 * 0.5 ** (E - 1)``:
    epochs 1-5 run at lr0, 6-10 at lr0 / 16 (6.25e-5 for lr0 = 1e-3), 11-15 at lr0 / 512
    (about 2e-6), 16-20 at lr0 / 16384, and so on.
    """
    last = 5 * (epoch // 5)  # the last multiple of 5 among the epochs completed before this one
    return 1.0 if last == 0 else 0.5 ** (last - 1)


def eval_metrics(n_classes: int) -> nn.ModuleDict:
    """The metrics of an evaluated split: accuracy and mean cross-entropy over its series, and their number."""
    from torchmetrics import MeanMetric, SumMetric
    from torchmetrics.classification import MulticlassAccuracy

    # no argument checks and no NaN filtering on update: each would read the device every batch,
    # and a NaN loss must reach the record (a failed run), not be dropped with a warning
    return nn.ModuleDict({"acc": MulticlassAccuracy(num_classes=n_classes, average="micro", validate_args=False),
                          "loss": MeanMetric(nan_strategy="disable"), "samples": SumMetric(nan_strategy="disable")})


class Classifier(L.LightningModule):
    def __init__(self, backbone: nn.Module, optimizer, n_channels: int, n_classes: int, max_len: int,
                 readout: str = "flatten", embed: str = "causal_conv", dropout: float = 0.1,
                 mask_padding: bool = True, final_norm: bool = False, lr_schedule: str = "none"):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"task.readout must be one of {READOUTS}, got {readout!r}")
        if embed not in EMBEDS:
            raise ValueError(f"task.embed must be one of {EMBEDS}, got {embed!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"task.lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.optimizer_factory = optimizer
        self.backbone = backbone
        d = self.backbone.d_model
        if embed == "circular":  # the library's TokenEmbedding
            self.value_embed = nn.Conv1d(n_channels, d, kernel_size=3, padding=1, padding_mode="circular", bias=False)
            nn.init.kaiming_normal_(self.value_embed.weight, mode="fan_in", nonlinearity="leaky_relu")
        else:  # causal_conv: kernel 3, left-padded in embed(); linear: kernel 1 with bias
            kernel = 3 if embed == "causal_conv" else 1
            self.value_embed = nn.Conv1d(n_channels, d, kernel_size=kernel, bias=embed == "linear")
        self.embed_drop = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(d * max_len if readout == "flatten" else d, n_classes)
        self.readout, self.embed_kind, self.mask_padding = readout, embed, mask_padding
        self.max_len, self.n_channels, self.lr_schedule = max_len, n_channels, lr_schedule
        self.eval_metrics = nn.ModuleDict({split: eval_metrics(n_classes) for split in ("val", "test")})

    def embed(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> (B, N, D): value embedding + sinusoidal position (dropout not applied)."""
        N = x.shape[1]
        xc = x.transpose(1, 2)  # (B, C, N)
        if self.embed_kind == "causal_conv":
            xc = F.pad(xc, (2, 0))  # (B, C, 2 + N): left padding keeps it causal
        pos = sinusoidal(torch.arange(N, device=x.device), self.backbone.d_model)  # (N, D)
        return self.value_embed(xc).transpose(1, 2) + pos

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, C), mask (B, N) True at real steps -> logits (B, classes)."""
        if x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(f"expected series (batch, length, {self.n_channels}); got {tuple(x.shape)}")
        B, N, _ = x.shape
        h = self.embed_drop(self.embed(x))  # (B, N, D)
        h, _ = self.backbone(h, mask if self.mask_padding else None, padding=PADDING)  # (B, N, D)
        h = self.final_norm(h)
        m = mask[..., None].to(h.dtype)
        if self.readout == "flatten":
            if N != self.max_len:
                raise ValueError(f"the flatten readout needs length {self.max_len}, got {N}")
            z = (self.head_drop(F.gelu(h)) * m).reshape(B, -1)
        elif self.readout == "last":
            last = mask.long().cumsum(-1).argmax(-1)  # index of the last real step
            z = h[torch.arange(B, device=h.device), last]
        else:
            z = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(z)

    def _step(self, batch, split: str):
        x, mask, y = batch
        logits = self(x, mask)
        loss = F.cross_entropy(logits, y)
        if split == "train":  # the batch's values; batch_size makes the epoch value the mean over all series
            acc = (logits.argmax(-1) == y).float().mean()
            self.log("train/loss", loss, batch_size=len(y), on_epoch=True, on_step=True)
            self.log("train/acc", acc, batch_size=len(y), prog_bar=True, on_epoch=True, on_step=False)
            return loss
        # evaluation: metric objects, summed over every series of the split (and every process) when computed
        m = self.eval_metrics[split]
        m["acc"].update(logits.detach(), y)
        m["loss"].update(F.cross_entropy(logits.detach(), y, reduction="none"))
        m["samples"].update(torch.full_like(y, 1, dtype=torch.float32))
        self.log(f"{split}/loss", m["loss"], prog_bar=True)
        self.log(f"{split}/acc", m["acc"], prog_bar=True)
        self.log(f"{split}/samples", m["samples"])
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def on_validation_epoch_end(self):
        """``val/acc_tie_later``: the validation accuracy plus less than half a series' worth that
        grows with the epoch, so that of epochs with equal accuracy the later ranks higher.

        Selecting on it reproduces the library's EarlyStopping, for which an accuracy equal to
        the best is an improvement (it resets the patience and the later checkpoint is kept);
        on ``val/acc`` a tie is no improvement (the first best epoch is kept).
        """
        m = self.eval_metrics["val"]
        if not m["samples"].update_called:
            return
        seen = m["samples"].compute()  # every process's series (compute() adds the processes up)
        horizon = max(int(self.trainer.max_epochs or 0), self.current_epoch + 1, 1)
        later = (self.current_epoch + 1) / (horizon + 2)  # in (0, 1), increasing with the epoch
        self.log("val/acc_tie_later", m["acc"].compute() + 0.5 * later / seen, sync_dist=True)

    def test_step(self, batch, _):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.lr_schedule == "none":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, tslib_cls_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def parameter_split(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"embedding": count(self.value_embed), "backbone": count(self.backbone),
                "head": count(self.head) + count(self.final_norm)}
