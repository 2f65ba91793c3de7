"""Train one cell of the matrix: `python train.py task=classify model=aaren dataset=JapaneseVowels`."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from aaren_bench.run import train

    record = train(cfg)
    return record["metrics"].get(cfg.task.monitor.replace("val/", "test/")) if record else None


if __name__ == "__main__":
    main()
