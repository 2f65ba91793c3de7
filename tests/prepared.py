"""A built cell as the trainer's hooks leave it before the first step, for tests that look inside
without a trainer: the data prepared (``prepare_data``) and read (``setup``), and the statistics
read with it handed to the module (``adopt_statistics``, in the tasks that have data statistics)."""
from __future__ import annotations

from aaren_bench.run import Built


def read(built: Built) -> Built:
    built.datamodule.prepare_data()
    built.datamodule.setup("fit")
    adopt = getattr(built.module, "adopt_statistics", None)
    if adopt is not None:
        adopt(built.datamodule)
    return built
