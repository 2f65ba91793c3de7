"""Backbones: Aaren and a Transformer built from one shared block around a registered mixer."""
from aaren_bench.nn.backbone import (
    Backbone,
    BackboneState,
    Block,
    build_backbone,
    state_nbytes,
)
from aaren_bench.nn.embed import sinusoidal
from aaren_bench.nn.family import LinearAttentionMixer, Mamba2Mixer  # noqa: E402  (registers linear_attn, mamba2)
from aaren_bench.nn.matrix import MLSTMMixer, TTTLinearMixer  # noqa: E402  (registers mlstm, ttt)
from aaren_bench.nn.mixers import (
    MIXERS,
    AarenMixer,
    KVCache,
    SelfAttention,
    mixer_factory,
    register_mixer,
)

__all__ = [
    "MIXERS",
    "AarenMixer",
    "Backbone",
    "BackboneState",
    "Block",
    "KVCache",
    "LinearAttentionMixer",
    "MLSTMMixer",
    "Mamba2Mixer",
    "SelfAttention",
    "TTTLinearMixer",
    "build_backbone",
    "mixer_factory",
    "register_mixer",
    "sinusoidal",
    "state_nbytes",
]
