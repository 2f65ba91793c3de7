"""Long-term forecasting (``task=forecast``): the suite's protocol and the Time-Series-Library's."""
from __future__ import annotations

from aaren_bench.data import RegistryFiles, get
from aaren_bench.errors import ConfigError
from aaren_bench.nn.backbone import _BACKBONE_KEYS
from aaren_bench.nn.mixers import mixer_factory
from aaren_bench.task import Task
from tasks.forecast.data import ForecastDataModule
from tasks.forecast.model import EncoderDecoder, Forecaster
from tasks.forecast.module import ForecastModule

__all__ = ["LAYOUTS", "TASK", "ForecastTask", "decoder_mixer"]

LAYOUTS = ("stack", "encoder_decoder")


def decoder_mixer(model_cfg):
    """A factory ``d_model -> mixer`` for the decoder's self-attention under the anchor's layout:
    the backbone's mixer with its options (``cfg.model``), always causal."""
    options = {k: model_cfg[k] for k in model_cfg if k not in ("name", "mixer", "compile", *_BACKBONE_KEYS)}
    if "causal" in options:
        options["causal"] = True
    return mixer_factory(model_cfg["mixer"], **options)


class ForecastTask(Task):
    name = "forecast"
    metrics = ("test/mse", "test/mae")

    def build_datamodule(self, cfg) -> ForecastDataModule:
        ds, t = cfg.dataset, cfg.task
        spec = get(ds.name)  # the catalog's facts (channels, sentinel); the file is fetched in prepare_data
        return ForecastDataModule(
            path=RegistryFiles(spec.name, cfg.paths.data_root),
            split=ds.split,
            seq_len=t.seq_len,
            label_len=t.label_len,
            pred_len=t.pred_len,
            freq=t.freq,
            target=ds.get("target", "OT"),
            n_channels=spec.info["channels"],
            sentinel=spec.info.get("sentinel"),
            sentinel_policy=t.get("sentinel_policy", "keep"),
            batch_size=t.batch_size,
            num_workers=t.num_workers,
            features=t.features,
            drop_last=dict(t.drop_last),
        )

    def build_module(self, cfg, dm: ForecastDataModule, backbone, optimizer) -> ForecastModule:
        t = cfg.task
        common = dict(n_channels=dm.n_channels, n_marks=dm.n_marks, seq_len=t.seq_len, label_len=t.label_len,
                      pred_len=t.pred_len, instance_norm=t.instance_norm, value_embedding=t.value_embedding)
        if t.layout == "stack":
            net = Forecaster(backbone, head=t.head, dropout=t.backbone.dropout, patch_len=t.patch_len, **common)
        elif t.layout == "encoder_decoder":
            m = cfg.model  # the decoder is sized and mixed as the encoder (the backbone) is
            if m.get("norm_first", False):
                raise ConfigError("task.layout=encoder_decoder is the anchor's post-LN layout; it needs "
                                  "model.norm_first=false (task.backbone.norm_first=false)")
            net = EncoderDecoder(backbone, decoder_mixer(m), n_heads=m.n_heads, d_ff=m.d_ff, dropout=m.dropout,
                                 activation=m.get("activation", "gelu"), decoder_layers=t.decoder_layers, **common)
        else:
            raise ConfigError(f"task.layout must be one of {LAYOUTS}, got {t.layout!r} "
                              f"(set by conf/task_protocol/forecast-<protocol>.yaml)")
        return ForecastModule(net, optimizer=optimizer, lr_schedule=t.lr_schedule)


TASK = ForecastTask()
