"""aaren-bench: Aaren vs a causal Transformer (and more attention-as-RNN mixers) on 38 datasets."""
from aaren_bench import study as _study  # noqa: F401  (registers the cell_key / cell_group resolvers)
