"""Pure tensor math (no nn.Module): the attention prefix scan and its references."""
from aaren_bench.ops.scan import (
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
    "init_state",
    "scan",
    "scan_hillis_steele",
    "scan_oracle",
    "scan_reference",
    "scan_step",
]
