"""SeriesClassifier: value embedding + position -> backbone -> readout -> linear head.

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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal
from tasks.classify.data import PADDING

READOUTS = ("flatten", "last", "mean")
EMBEDS = ("causal_conv", "circular", "linear")


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class SeriesClassifier(nn.Module):
    """(x (B, N, C), mask (B, N) True at real steps) -> logits (B, classes)."""

    def __init__(self, backbone: nn.Module, n_channels: int, n_classes: int, max_len: int,
                 readout: str = "flatten", embed: str = "causal_conv", dropout: float = 0.1,
                 mask_padding: bool = True, final_norm: bool = False):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"task.readout must be one of {READOUTS}, got {readout!r}")
        if embed not in EMBEDS:
            raise ValueError(f"task.embed must be one of {EMBEDS}, got {embed!r}")
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
        self.max_len, self.n_channels, self.n_classes = max_len, n_channels, n_classes

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

    def parameter_split(self) -> dict[str, int]:
        return {"embedding": count(self.value_embed), "backbone": count(self.backbone),
                "head": count(self.head) + count(self.final_norm)}
