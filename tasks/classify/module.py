"""Classifier: value embedding + position -> causal backbone -> readout -> linear head.

``embed``: ``causal_conv`` (default) embeds step k from steps k-2..k with a kernel-3
convolution, as the Time-Series-Library's token embedding does, but left-padded instead of
circular so that no step sees the future; ``linear`` embeds each step alone.

The backbone is causal, so position k sees time steps <= k only. ``readout`` says how the
head reads its outputs (padded steps never count):
- ``flatten`` (default, the Time-Series-Library classifier the paper keeps): GELU, dropout,
  zero the padded steps, flatten (max_len x d_model) -> linear;
- ``last``: the output at the last real step (it has seen the whole series: the RNN view);
- ``mean``: the mean output over real steps.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal

READOUTS = ("flatten", "last", "mean")
EMBEDS = ("causal_conv", "linear")


class Classifier(L.LightningModule):
    def __init__(self, backbone: nn.Module, optimizer, n_channels: int, n_classes: int, max_len: int,
                 readout: str = "flatten", embed: str = "causal_conv", dropout: float = 0.1):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"task.readout must be one of {READOUTS}, got {readout!r}")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.optimizer_factory = optimizer
        self.backbone = backbone
        d = self.backbone.d_model
        if embed not in EMBEDS:
            raise ValueError(f"task.embed must be one of {EMBEDS}, got {embed!r}")
        # causal token embedding: step k mixes steps k-2..k (the anchor's kernel-3 convolution
        # without its circular wrap-around and look-ahead); or a pointwise linear map
        kernel = 3 if embed == "causal_conv" else 1
        self.value_embed = nn.Conv1d(n_channels, d, kernel_size=kernel, bias=embed == "linear")
        self.pad = kernel - 1
        self.embed_drop = nn.Dropout(dropout)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(d * max_len if readout == "flatten" else d, n_classes)
        self.readout, self.max_len, self.n_channels = readout, max_len, n_channels

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, C), mask (B, N) True at real steps -> logits (B, classes)."""
        if x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(f"expected series (batch, length, {self.n_channels}); got {tuple(x.shape)}")
        B, N, _ = x.shape
        pos = sinusoidal(torch.arange(N, device=x.device), self.backbone.d_model)  # (N, D)
        xc = F.pad(x.transpose(1, 2), (self.pad, 0))  # (B, C, pad + N): left padding keeps it causal
        h = self.embed_drop(self.value_embed(xc).transpose(1, 2) + pos)  # (B, N, D)
        h, _ = self.backbone(h, mask)  # (B, N, D)
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
        acc = (logits.argmax(-1) == y).float().mean()
        # batch_size makes the epoch value the exact mean over all series
        self.log(f"{split}/loss", loss, batch_size=len(y), prog_bar=split != "train", on_epoch=True, on_step=split == "train")
        self.log(f"{split}/acc", acc, batch_size=len(y), prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def test_step(self, batch, _):
        self._step(batch, "test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def parameter_split(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"embedding": count(self.value_embed), "backbone": count(self.backbone), "head": count(self.head)}
