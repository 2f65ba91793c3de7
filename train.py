"""Train one cell: `python train.py dataset=JapaneseVowels model=aaren` (or `task=rl model=aaren`)."""
import sys

import hydra
from omegaconf import DictConfig

from aaren_bench.study import normalize_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the task's primary test metric (what a Hydra sweeper optimises), None when skipped."""
    from aaren_bench.run import main_entry

    return main_entry(cfg)


if __name__ == "__main__":
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    main()
