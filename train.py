"""Train one cell of the matrix: `python train.py task=classify model=aaren dataset=JapaneseVowels`."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from aaren_bench.run import train

    record = train(cfg)
    monitor = cfg.task.get("monitor")
    if not record or not monitor:
        return None
    return record["metrics"].get(monitor.replace("val/", "test/"))


if __name__ == "__main__":
    main()
