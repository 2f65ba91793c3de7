"""Pure tensor math (no nn.Module): the attention prefix scan and its references."""
from aaren_bench.ops.vector_math import init_vector_math

# first, before any op can run: MKL's vector math detects the CPU lazily and not thread-safely
# (issue 23; aaren_bench/ops/vector_math.py)
init_vector_math()

from aaren_bench.ops.scan import (  # noqa: E402
    ScanState,
    init_state,
    scan,
    scan_hillis_steele,
    scan_oracle,
    scan_reference,
    scan_step,
)

__all__ = [
    "ScanState",
    "init_vector_math",
    "init_state",
    "scan",
    "scan_hillis_steele",
    "scan_oracle",
    "scan_reference",
    "scan_step",
]

# the linear-attention and Mamba-2 (SSD) members of the family
from aaren_bench.ops.linear_attn import (  # noqa: E402
    LinearAttnState,
    linear_attn_chunked,
    linear_attn_init_state,
    linear_attn_naive,
    linear_attn_reference,
    linear_attn_step,
)
from aaren_bench.ops.ssd import (  # noqa: E402
    causal_conv1d,
    causal_conv1d_step,
    gated_rms_norm,
    segsum,
    ssd_chunked,
    ssd_init_state,
    ssd_naive,
    ssd_reference,
    ssd_step,
)

__all__ += [
    "LinearAttnState",
    "causal_conv1d",
    "causal_conv1d_step",
    "gated_rms_norm",
    "linear_attn_chunked",
    "linear_attn_init_state",
    "linear_attn_naive",
    "linear_attn_reference",
    "linear_attn_step",
    "segsum",
    "ssd_chunked",
    "ssd_init_state",
    "ssd_naive",
    "ssd_reference",
    "ssd_step",
]

# the matrix-state members: xLSTM's mLSTM and TTT-Linear
from aaren_bench.ops.mlstm import (  # noqa: E402
    MLSTMState,
    mlstm_chunked,
    mlstm_init_state,
    mlstm_reference,
    mlstm_step,
)
from aaren_bench.ops.ttt import (  # noqa: E402
    TTTState,
    ln_fwd,
    ln_l2_grad,
    ttt_linear_chunked,
    ttt_linear_init_state,
    ttt_linear_reference,
    ttt_linear_step,
)

__all__ += [
    "MLSTMState",
    "TTTState",
    "ln_fwd",
    "ln_l2_grad",
    "mlstm_chunked",
    "mlstm_init_state",
    "mlstm_reference",
    "mlstm_step",
    "ttt_linear_chunked",
    "ttt_linear_init_state",
    "ttt_linear_reference",
    "ttt_linear_step",
]
