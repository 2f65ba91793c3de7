"""Operation counts (kernel launches on a GPU), counted on the meta device: no compute, exact."""
from __future__ import annotations

import pytest

from aaren_bench.bench.syncs import layer_ops


def test_mamba2_launches_do_not_grow_with_length():
    """The SSD's blocks are linked by one segment sum, not a Python loop over the blocks."""
    counts = [layer_ops("mamba2", n, batch=2, d_model=32, n_heads=2, device="meta") for n in (256, 4096, 16384)]
    assert len(set(counts)) == 1, counts


@pytest.mark.parametrize("mixer", ["transformer", "linear_attn"])
def test_other_mixers_launches_do_not_grow_with_length(mixer):
    counts = [layer_ops(mixer, n, batch=2, d_model=32, n_heads=2, device="meta") for n in (1024, 16384)]
    assert counts[0] == counts[1], counts
