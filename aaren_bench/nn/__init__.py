"""Backbones: Aaren and a causal Transformer built from one shared block."""
from aaren_bench.nn.backbone import Backbone, Block, build_backbone, state_nbytes
from aaren_bench.nn.mixers import AarenMixer, CausalSelfAttention, KVCache

__all__ = ["AarenMixer", "Backbone", "Block", "CausalSelfAttention", "KVCache", "build_backbone", "state_nbytes"]
