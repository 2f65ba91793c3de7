"""The study: what a cell is, how its key is built and read back, and which runs are paper cells.

A *cell* is one measurement: a task, a dataset (with its variant, e.g. the forecasting
horizon), a protocol, a backbone and a seed. Its key is the run's folder under the runs
root, its wandb name and its row in the tables::

    <task>/<dataset><variant>/<protocol>[+<tag>]/<model>/seed<seed>
    forecast/ETTh1-H192/suite/aaren/seed0
    classify/JapaneseVowels/tslib/transformer/seed3
    classify/JapaneseVowels/suite+x3f9a1c2e/aaren/seed0     # a run that changed what is measured

:class:`Cell` is built here and parsed back here; nothing else formats or splits a key.

Run identity (docs/protocol/matrix.md): a run whose overrides change *what is measured*
(another data file, a smoke-size limit, another model size, another learning rate, ...)
never lands in a paper cell. It gets a tag: ``tag=<name>`` when given, otherwise ``x`` and
eight hex digits of a hash of those overrides, so that the same command resumes the same
cell. Overrides that only change *where or how fast* it runs (logger, paths, devices and
nodes, which keep the global batch, workers, a kernel or block length proven equal to the
plain path) are neutral; precision is measuring; the ones that pick the cell (``task``,
``dataset``, ``protocol``, ``model``, ``seed``, ``task.pred_len``) are in the key itself.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from aaren_bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

MODELS = ("aaren", "transformer")
SEEDS = (0, 1, 2, 3, 4)
HORIZONS = (96, 192, 336, 720)
DEFAULT_HORIZON = 192
DEFAULT_PROTOCOL = "suite"
TASK_ORDER = ("rl", "events", "forecast", "classify")  # the paper's Tables 1-4

# The paper's 38 datasets (Feng et al. 2024; PROTOCOL.md section 2), per task.
PAPER_DATASETS: dict[str, tuple[str, ...]] = {
    "rl": tuple(f"{env}-{kind}" for env in ("halfcheetah", "hopper", "walker2d", "ant")
                for kind in ("medium", "medium-replay", "medium-expert")),
    "events": ("MIMIC", "Wiki", "Reddit", "Mooc", "StackOverflow", "Sin", "Uber", "Taxi"),
    "forecast": ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange", "Traffic", "ECL"),
    "classify": ("EthanolConcentration", "FaceDetection", "Handwriting", "Heartbeat", "JapaneseVowels",
                 "PEMS-SF", "SelfRegulationSCP1", "SelfRegulationSCP2", "SpokenArabicDigits",
                 "UWaveGestureLibrary"),
}

# Overrides that never change what a run measures: these keys exactly ... (docs/protocol/matrix.md:
# devices, nodes and strategy keep the global batch and the evaluated samples, tests/test_distributed.py;
# the block lengths and kernels give the result of the plain path, tests/test_ops*.py. Precision and
# matmul precision change the numbers beyond float noise: they are measuring.)
NEUTRAL_KEYS = (
    "seed", "model", "dataset", "task", "protocol", "tag", "trainer", "skip_done", "restart", "checkpoint_every_min",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.deterministic", "task.num_workers", "task.eval_threads", "model.compile",
    "task.eval_batch", "model.use_kernel", "model.scan_chunk", "model.chunk",
)
# ... and everything below these.
NEUTRAL_TREES = ("hydra", "paths", "logger", "matrix")
# Overrides that are part of the key (through the variant).
KEYED_KEYS = ("task.pred_len",)

_KEY_RE = re.compile(r"^(?P<task>[^/]+)/(?P<dataset>[^/]+)/(?P<protocol>[^/+]+)(\+(?P<tag>[^/]+))?/"
                     r"(?P<model>[^/]+)/seed(?P<seed>-?\d+)$")
_LEGACY_RE = re.compile(r"^(?P<task>[^/]+)/(?P<dataset>[^/]+)/(?P<model>[^/]+)/seed(?P<seed>-?\d+)$")


class CellKeyError(ValueError):
    """A string that is not a cell key."""


@dataclass(frozen=True, order=True)
class Cell:
    task: str
    dataset: str
    model: str
    seed: int
    protocol: str = DEFAULT_PROTOCOL
    horizon: int | None = None  # forecasting's pred_len (the variant -H<horizon>)
    tag: str | None = None  # set when the run changes what is measured

    @property
    def variant(self) -> str:
        return f"-H{self.horizon}" if self.horizon is not None else ""

    @property
    def row(self) -> str:
        """The dataset part of the key (dataset + variant): a table row."""
        return f"{self.dataset}{self.variant}"

    @property
    def protocol_part(self) -> str:
        return self.protocol + (f"+{self.tag}" if self.tag else "")

    @property
    def key(self) -> str:
        return f"{self.task}/{self.row}/{self.protocol_part}/{self.model}/seed{self.seed}"

    @property
    def is_paper(self) -> bool:
        """One of the paper's measurements (any protocol; no tag)."""
        return self.tag is None and self.dataset in PAPER_DATASETS.get(self.task, ())

    def __str__(self) -> str:
        return self.key

    # --- reading back ---------------------------------------------------------------------

    @classmethod
    def parse(cls, key: str) -> "Cell":
        """The cell of a key (also a legacy key without the protocol part, read as ``suite``)."""
        key = key.strip("/")
        m = _KEY_RE.match(key)
        legacy = None if m else _LEGACY_RE.match(key)
        if not m and not legacy:
            raise CellKeyError(f"{key!r} is not a cell key (<task>/<dataset>/<protocol>/<model>/seed<n>)")
        g = (m or legacy).groupdict()
        dataset, horizon = _split_variant(g["task"], g["dataset"])
        return cls(task=g["task"], dataset=dataset, model=g["model"], seed=int(g["seed"]),
                   protocol=g.get("protocol") or DEFAULT_PROTOCOL, horizon=horizon, tag=g.get("tag"))

    @classmethod
    def from_record(cls, rec: dict) -> "Cell":
        """The cell a result record measured. Records written before the protocol was part of
        the key are read as the protocol they ran under (classification's ``task.protocol``:
        holdout -> suite, tslib -> tslib; every other task ran the suite's protocol)."""
        protocol = rec.get("protocol")
        if not protocol:
            old = ((rec.get("config") or {}).get("task") or {}).get("protocol")
            protocol = {"holdout": DEFAULT_PROTOCOL, None: DEFAULT_PROTOCOL}.get(old, old)
        horizon = rec.get("horizon")
        if horizon is None and rec.get("variant"):
            horizon = _split_variant(rec["task"], rec["dataset"] + rec["variant"])[1]
        return cls(task=rec["task"], dataset=rec["dataset"], model=rec["model"], seed=int(rec["seed"]),
                   protocol=str(protocol), horizon=horizon, tag=rec.get("tag"))

    @classmethod
    def from_cfg(cls, cfg, overrides: list[str] | None = None) -> "Cell":
        """The cell of a composed config; ``overrides`` (default: the running Hydra job's) decide the tag."""
        overrides = run_overrides(cfg) if overrides is None else list(overrides)
        task = str(cfg.task.name)
        horizon = int(cfg.task.pred_len) if task == "forecast" else None
        protocol = OmegaConf.select(cfg, "protocol.name", default=None) or DEFAULT_PROTOCOL
        seed = cfg.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed={seed}: the seed must be an integer (e.g. seed=0, or -m seed=0,1,2)")
        return cls(task=task, dataset=str(cfg.dataset.name), model=str(cfg.model.name), seed=seed,
                   protocol=str(protocol), horizon=horizon, tag=run_tag(cfg.get("tag"), overrides))


def _split_variant(task: str, dataset_part: str) -> tuple[str, int | None]:
    if task == "forecast":
        m = re.match(r"^(.*)-H(\d+)$", dataset_part)
        if m:
            return m.group(1), int(m.group(2))
    return dataset_part, None


# --- run identity -------------------------------------------------------------------------

def override_key(override: str) -> str:
    """``+task.optimizer.lr=3e-4`` -> ``task.optimizer.lr``; ``hydra/launcher=slurm`` -> ``hydra/launcher``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_measuring(override: str) -> bool:
    """True when an override changes what the run measures (see the module docstring)."""
    key = override_key(override).replace("/", ".")
    if key in NEUTRAL_KEYS or key in KEYED_KEYS:
        return False
    return not any(key == t or key.startswith(t + ".") for t in NEUTRAL_TREES)


def canonical_override(override: str) -> str:
    """``key=value`` with a number written one way: ``lr=1e-3``, ``lr=0.001`` and ``lr=1.0e-3`` are
    all ``lr=0.001`` (Python's shortest repr of the float; a whole number as an integer), so one
    value is one cell whatever its spelling. Anything else is returned as it is."""
    if "=" not in override:
        return override
    key, value = override.split("=", 1)
    text = value.strip()
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return override
    number = float(text)
    if not math.isfinite(number):
        return override
    if number.is_integer() and abs(number) < 2**53:
        return f"{key}={int(number)}"
    return f"{key}={number!r}"


def measuring_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change what a run measures, sorted (as written)."""
    return sorted(o for o in overrides if is_measuring(o))


def auto_tag(measuring: list[str]) -> str:
    """``x`` and 8 hex digits of a hash of the overrides, numbers compared by value."""
    return "x" + hashlib.sha1("\n".join(sorted(canonical_override(o) for o in measuring)).encode()).hexdigest()[:8]


def run_tag(explicit, overrides: list[str]) -> str | None:
    """The tag of a run: the explicit ``tag=`` when given, else a hash of the measuring
    overrides, else None (a paper cell)."""
    if explicit not in (None, ""):
        tag = str(explicit)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
            raise ConfigError(f"tag={tag}: use letters, digits, '.', '_' and '-' only (it becomes part of a folder name)")
        return tag
    measuring = measuring_overrides(overrides)
    return auto_tag(measuring) if measuring else None


def job_overrides() -> list[str]:
    """The running Hydra job's overrides ([] outside a Hydra app, e.g. under the compose API)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - no Hydra job: no overrides
        pass
    return []


def run_overrides(cfg) -> list[str]:
    """The overrides a config was composed with: the running Hydra job's, else the ones
    :func:`compose_config` recorded in ``command_overrides`` (tests, notebooks, benchmarks)."""
    return job_overrides() or [str(o) for o in (cfg.get("command_overrides") or [])]


def _cell_key_resolver(*, _root_) -> str:
    return Cell.from_cfg(_root_).key


if not OmegaConf.has_resolver("cell_key"):
    OmegaConf.register_new_resolver("cell_key", _cell_key_resolver)


def _loader_workers_resolver() -> int:
    from aaren_bench.resume import loader_workers

    return loader_workers()


if not OmegaConf.has_resolver("loader_workers"):  # task.num_workers: ${loader_workers:} (GPU runs: the job's CPUs)
    OmegaConf.register_new_resolver("loader_workers", _loader_workers_resolver)


# --- the command line of train.py ---------------------------------------------------------

def task_default_dataset(task: str, conf_dir: Path = CONF) -> str:
    path = Path(conf_dir, "task", f"{task}.yaml")
    if not path.exists():
        known = sorted(p.stem for p in Path(conf_dir, "task").glob("*.yaml"))
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(known)} (e.g. task=classify)")
    name = OmegaConf.load(path).get("default_dataset")
    if not name:
        raise ConfigError(f"{path} has no default_dataset; pass dataset=<name>")
    return str(name)


# Hydra's flags that take a value (the next word), and --info's optional one
_FLAG_VALUE = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
               "--config-dir", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides), each in the order given."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):  # an override never starts with "-" (only with a key, +, ++ or ~)
            takes = "=" not in a and (a in _FLAG_VALUE or (a in ("-i", "--info") and argv[i + 1:i + 2] and
                                                           argv[i + 1] in _INFO_VALUES))
            flags += argv[i:i + 1 + bool(takes)]
            i += 1 + bool(takes)
            continue
        overrides.append(a)
        i += 1
    return flags, overrides


def normalize_argv(argv: list[str], conf_dir: Path = CONF) -> list[str]:
    """What train.py hands to Hydra: its flags first (with their values), then the overrides.

    - ``task=X`` without ``dataset=``: the task's default dataset is added (a dataset selects
      its task in the config, so the task alone needs this one step).
    - ``+protocol=X`` (the older spelling) is read as ``protocol=X``.

    Hydra's parser takes the overrides as one run of words, so they are kept together after the
    flags: ``task=rl --cfg job``, ``--cfg job task=rl`` and ``task=rl -m seed=0,1`` all work.
    """
    flags, given = split_argv(list(argv))
    out = ["protocol=" + a.split("=", 1)[1] if a.startswith("+protocol=") else a for a in given]
    keys = {override_key(a) for a in out if "=" in a}
    task_args = [a for a in out if a.startswith("task=")]
    if task_args and "dataset" not in keys and not any(k.startswith("matrix") for k in keys):
        value = task_args[-1].split("=", 1)[1]
        if "," in value or "(" in value:
            raise ConfigError(f"{task_args[-1]}: a sweep over tasks needs its datasets; sweep dataset=... "
                              "instead (each dataset selects its task), e.g. -m dataset=JapaneseVowels,ETTh1")
        out.append(f"dataset={task_default_dataset(value, conf_dir)}")
    return flags + out


# --- the datasets and protocols that exist ------------------------------------------------

@dataclass(frozen=True)
class DatasetConf:
    """One ``conf/dataset/<Name>.yaml``: a dataset and the task it selects."""

    name: str
    task: str
    path: Path

    @property
    def in_paper(self) -> bool:
        return self.name in PAPER_DATASETS.get(self.task, ())


def dataset_task(path: Path) -> str | None:
    """The task a dataset config selects (its ``override /task: <task>`` line), None if none."""
    node = OmegaConf.load(path)
    for entry in node.get("defaults") or []:
        if isinstance(entry, str):
            continue
        for k, v in dict(entry).items():
            if k.replace("override", "").strip().strip("/") == "task":
                return str(v)
    return None


def discover_datasets(conf_dir: Path = CONF) -> tuple[list[DatasetConf], list[str]]:
    """Every dataset config, and the problems found (no task selected, name != file name)."""
    out, problems = [], []
    for path in sorted(Path(conf_dir, "dataset").glob("*.yaml")):
        try:
            task = dataset_task(path)
            name = OmegaConf.select(OmegaConf.load(path), "dataset.name")
        except Exception as e:  # noqa: BLE001 - a broken file must not hide the rest
            problems.append(f"{path}: cannot be read ({e})")
            continue
        if task is None:
            problems.append(f"{path}: selects no task; add `defaults: [{{override /task: <task>}}]`")
            continue
        if name != path.stem:
            problems.append(f"{path}: dataset.name is {name!r} but the file is {path.stem!r}; rename one of them")
        out.append(DatasetConf(path.stem, task, path))
    return out, problems


def protocols(conf_dir: Path = CONF) -> dict[str, tuple[str, ...]]:
    """{task: protocol names it defines} from ``conf/task_protocol/<task>-<protocol>.yaml``."""
    out: dict[str, list[str]] = {}
    for p in sorted(Path(conf_dir, "task_protocol").glob("*.yaml")):
        task, _, proto = p.stem.partition("-")
        out.setdefault(task, []).append(proto)
    return {t: tuple(v) for t, v in out.items()}


@dataclass
class Study:
    """The cells to run: datasets x protocols x backbones x seeds (x horizons for forecasting)."""

    datasets: list[DatasetConf]
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = SEEDS
    horizons: tuple[int, ...] = (DEFAULT_HORIZON,)
    protocols: tuple[str, ...] = (DEFAULT_PROTOCOL,)
    tag: str | None = None  # a named study beside the paper's (an ablation, a smoke sweep)
    problems: list[str] = field(default_factory=list)

    def cells(self, defined: dict[str, tuple[str, ...]] | None = None) -> list[Cell]:
        """Every cell, in the paper's task order; a protocol a task does not define is skipped."""
        order = {t: i for i, t in enumerate(TASK_ORDER)}
        ds = sorted(self.datasets, key=lambda d: (order.get(d.task, 99), d.name.lower()))
        out = []
        for d in ds:
            for proto in self.protocols:
                if defined is not None and proto not in defined.get(d.task, ()):
                    continue
                for h in (self.horizons if d.task == "forecast" else (None,)):
                    for m in self.models:
                        for s in self.seeds:
                            out.append(Cell(d.task, d.name, m, s, proto, h, self.tag))
        return out


def paper_study(conf_dir: Path = CONF, include_extra: bool = False, tasks=None, **kw) -> Study:
    datasets, problems = discover_datasets(conf_dir)
    chosen = [d for d in datasets if (d.in_paper or include_extra) and (not tasks or d.task in tasks)]
    return Study(chosen, problems=problems, **kw)


def missing_paper_datasets(conf_dir: Path = CONF) -> dict[str, list[str]]:
    have = {(d.task, d.name) for d in discover_datasets(conf_dir)[0]}
    return {t: [n for n in names if (t, n) not in have] for t, names in PAPER_DATASETS.items()}


def _cell_group_resolver(*, _root_) -> str:
    c = Cell.from_cfg(_root_)
    return f"{c.task}/{c.row}/{c.protocol_part}"


if not OmegaConf.has_resolver("cell_group"):
    OmegaConf.register_new_resolver("cell_group", _cell_group_resolver)


def compose_config(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path = CONF, return_hydra_config=False):
    """The config train.py would run for these command-line overrides (Hydra's compose API, with
    the same command-line normalisation); for tests, notebooks and benchmarks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    args = normalize_argv(list(overrides), Path(conf_dir))
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir)):
        cfg = compose("config", overrides=args, return_hydra_config=return_hydra_config)
    with open_dict(cfg):  # outside a Hydra job, the key reads the overrides from here
        cfg.command_overrides = [a for a in args if "=" in a and not a.startswith("-")]
    return cfg
