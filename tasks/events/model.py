"""THP+ around either backbone: event embedding -> causal backbone -> log-normal mixture + mark head.

Event i enters as  x_i = E[k_i] + enc_i,  with the temporal encoding ``time_encoding``:

    absolute          enc_i = PE((t_i - t_start) / s)            (the suite's default)
    absolute+log_dt   enc_i = PE((t_i - t_start) / s) + W log(1 + tau_i / s)   (an extension)
    gap               enc_i = PE(tau_i), tau_i in the data's own units   (Meta TPP's THP: it encodes
                      the raw entries of its files, which are the inter-event times)

PE is THP's sinusoidal encoding (``aaren_bench.nn.embed.sinusoidal``) and s the train split's
mean inter-event time, a buffer (saved in the checkpoint): given when the model is built, or
set once the data is read (``set_time_scale``; NaN until then, so that an unset scale cannot
pass unnoticed). ``time_encoding_at`` says where enc enters: ``input`` (once, before the
backbone: the same single-input backbone every task uses) or ``every_layer`` (added again
before every layer, as THP does: block l sees  x^(l-1) + enc,  with x^(0) = E[k]). The
every-layer form runs the backbone's blocks one at a time through their public
``forward`` / ``step`` (``Backbone.blocks``, ``Backbone.final_norm``); the backbone itself
knows nothing of it.

The backbone output h_i has seen events 1..i only; it parametrises the next gap (mixture of
K log-normals, decoder MLP d -> d -> 3K with tanh as in Meta TPP) and the next mark (a
linear layer); the mixture's scales are softplus + ``scale_floor`` (1e-4 in the suite, 0 as Meta
TPP under its protocol). The mixture is returned in the data's own time units (mu is shifted by
log s), so likelihoods need no rescaling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.backbone import BackboneState
from aaren_bench.nn.embed import sinusoidal
from tasks.events.data import PADDING
from tasks.events.likelihood import Mixture

TIME_ENCODINGS = ("absolute", "absolute+log_dt", "gap")
ENCODING_AT = ("input", "every_layer")


class EventModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_marks: int,
        time_scale: float | None = None,
        n_components: int = 8,
        time_encoding: str = "absolute",
        time_encoding_at: str = "input",
        scale_floor: float = 1e-4,
    ):
        super().__init__()
        if time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, got {time_encoding!r}")
        if time_encoding_at not in ENCODING_AT:
            raise ValueError(f"time_encoding_at must be one of {ENCODING_AT}, got {time_encoding_at!r}")
        if not scale_floor >= 0:
            raise ValueError(f"scale_floor must be >= 0, got {scale_floor} (task.scale_floor)")
        d = backbone.d_model
        self.backbone = backbone
        self.num_marks, self.n_components, self.scale_floor = num_marks, n_components, float(scale_floor)
        self.time_encoding, self.every_layer = time_encoding, time_encoding_at == "every_layer"
        self.mark_emb = nn.Embedding(num_marks, d)
        self.dt_proj = nn.Linear(1, d) if time_encoding == "absolute+log_dt" else None
        self.decoder = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 3 * n_components))
        self.mark_head = nn.Linear(d, num_marks) if num_marks > 1 else None
        self.register_buffer("log_scale", torch.tensor(math.nan, dtype=torch.float64))
        if time_scale is not None:
            self.set_time_scale(time_scale)

    def set_time_scale(self, time_scale: float) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.log_scale.fill_(math.log(time_scale))

    @property
    def scale(self) -> float:
        return float(self.log_scale.exp())

    def encoding(self, times: Tensor, dts: Tensor) -> Tensor:
        """The temporal encoding: times, dts (B, N) in data units (time since window start, gap) -> (B, N, D)."""
        d = self.backbone.d_model
        if self.time_encoding == "gap":
            return sinusoidal(dts, d)  # raw gaps, as Meta TPP's THP encodes its time entries
        s = self.log_scale.exp().to(times.dtype)  # a device tensor: float(...) would stall a GPU every forward
        enc = sinusoidal(times / s, d)  # THP's encoding of the (scaled) event time
        if self.dt_proj is not None:
            enc = enc + self.dt_proj(torch.log1p(dts.clamp_min(0) / s)[..., None])
        return enc

    def embed(self, times: Tensor, dts: Tensor, marks: Tensor) -> Tensor:
        """The first layer's input E[k] + enc: (B, N) each -> (B, N, D)."""
        return self.mark_emb(marks) + self.encoding(times, dts)

    def _inputs(self, times: Tensor, dts: Tensor, marks: Tensor) -> tuple[Tensor, Tensor | None]:
        """(x, enc): the first layer's input and, in the every-layer form, the encoding added before layers 2..L."""
        enc = self.encoding(times, dts)
        return self.mark_emb(marks) + enc, (enc if self.every_layer else None)

    def heads(self, h: Tensor) -> tuple[Mixture, Tensor | None]:
        """h (..., D) -> Mixture of (..., K) tensors in data units, mark logits (..., M) or None."""
        w, mu, sig = self.decoder(h).chunk(3, dim=-1)
        wide = torch.promote_types(mu.dtype, torch.float32)
        # the shift to data units in float32 even under autocast: in bf16 a log scale of 10 keeps
        # 8 bits, an error of up to 0.03 in every log-time (the NLL moves with it)
        mix = Mixture(F.log_softmax(w, -1), mu.to(wide) + self.log_scale.to(wide), F.softplus(sig) + self.scale_floor)
        return mix, (self.mark_head(h) if self.mark_head is not None else None)

    def forward(self, batch: dict) -> tuple[Mixture, Tensor | None]:
        """Parallel pass: position i's outputs predict the event after event i. (B, N, K), (B, N, M)."""
        x, enc = self._inputs(batch["times"], batch["dts"], batch["marks"])  # (B, N, D)
        mask = batch["mask"]
        if enc is None:
            h, _ = self.backbone(x, mask, padding=PADDING)  # (B, N, D), causal
        else:
            for i, block in enumerate(self.backbone.blocks):
                x, _ = block(x if i == 0 else x + enc, mask, padding=PADDING)
            h = self.backbone.final_norm(x)
        return self.heads(h)

    # streaming: one event at a time (tasks/events/stream.py)
    def init_state(self, batch: int, device=None, dtype=torch.float32) -> BackboneState:
        return self.backbone.init_state(batch, device=device, dtype=dtype)

    def step(self, times: Tensor, dts: Tensor, marks: Tensor, state: BackboneState) -> tuple[Tensor, BackboneState]:
        """One event per stream: times, dts (B,) data units, marks (B,) -> (h (B, D), new state)."""
        x, enc = self._inputs(times[:, None], dts[:, None], marks[:, None])
        x = x[:, 0]
        if enc is None:
            return self.backbone.step(x, state)
        layers = []
        for i, (block, st) in enumerate(zip(self.backbone.blocks, state.layers)):
            x, st = block.step(x if i == 0 else x + enc[:, 0], st)
            layers.append(st)
        return self.backbone.final_norm(x), BackboneState(layers)
