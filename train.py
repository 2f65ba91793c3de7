"""Train one cell: `python train.py dataset=JapaneseVowels model=aaren` (or `task=rl model=aaren`)."""
import sys

import hydra
from omegaconf import DictConfig

from aaren_bench.entry import job, launch


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the task's primary test metric (what a Hydra sweeper optimises), None when skipped."""
    return job(cfg)


if __name__ == "__main__":
    launch(main, sys.argv[1:])
