"""The configuration's schema: every task, model, trainer and dataset key with its type and range,
checked in one place (:func:`validate`) before a run builds anything.

The schema is declared below as plain tables (``TASKS``, ``MODELS``, ``TRAINER``, ``DATASETS``,
``TOP``), one :class:`Rule` per key; :func:`relations` adds the checks that tie keys together
(heads dividing the width, a causal-only mixer, the forecast windows, a GPU asked for). A key
a section does not declare is an error too, so a new config key needs its line here
(tests/test_schema.py composes every dataset, protocol and backbone and validates it).

This module imports no torch: a mistake on the command line is reported in about a second.
The choices repeat constants of the task modules (``tasks.forecast.model.HEADS``, ...); a test
holds them equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aaren_bench.errors import ConfigError

_NUM = (int, float)


@dataclass(frozen=True)
class Rule:
    """One key: its kind (int, num, bool, str, choice, map, list, any), range and whether null is allowed."""

    kind: str
    lo: float | None = None  # lowest allowed value (inclusive unless lo_open)
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    null: bool = False
    doc: str = ""

    def problem(self, value: Any) -> str | None:
        """None when ``value`` fits, else what is allowed."""
        if value is None:
            return None if self.null else f"must be set ({self.want()})"
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "num": isinstance(value, _NUM) and not isinstance(value, bool) and math.isfinite(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "choice": value in self.choices and type(value) in {type(c) for c in self.choices},
              "map": isinstance(value, dict), "list": isinstance(value, list), "any": True}[self.kind]
        if ok and self.kind in ("int", "num"):
            ok = ((self.lo is None or (value > self.lo if self.lo_open else value >= self.lo))
                  and (self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)))
        return None if ok else f"must be {self.want()}"

    def want(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices) + (" or null" if self.null else "")
        word = {"int": "an integer", "num": "a number", "bool": "true or false", "str": "a string",
                "map": "a mapping {key: value}", "list": "a list [...]", "any": "any value"}[self.kind]
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return word + (" " + " and ".join(bounds) if bounds else "") + (" (or null)" if self.null else "")


def Int(lo=None, hi=None, null=False):  # noqa: N802 - reads as a type in the tables below
    return Rule("int", lo, hi, null=null)


def Num(lo=None, hi=None, lo_open=False, hi_open=False, null=False):  # noqa: N802
    return Rule("num", lo, hi, lo_open, hi_open, null=null)


def Choice(*choices, null=False):  # noqa: N802
    return Rule("choice", choices=choices, null=null)


BOOL, STR, MAP, LIST, ANY = Rule("bool"), Rule("str"), Rule("map"), Rule("list"), Rule("any")
STR_OR_NULL = Rule("str", null=True)
POSITIVE = Int(1)
FRACTION = Num(0.0, 1.0, hi_open=True)  # a dropout probability
ACTIVATIONS = ("gelu", "relu")  # aaren_bench.nn.backbone._ACTIVATIONS
INITS = ("default", "gpt2", "xavier_attn")  # aaren_bench.nn.backbone.init_stack
MIXERS = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")  # aaren_bench.nn.mixers.MIXERS

# --- task ---------------------------------------------------------------------------------

OPTIMIZER = {"_target_": STR, "_partial_": BOOL, "lr": Num(0.0), "weight_decay": Num(0.0),
             "eps": Num(0.0, lo_open=True), "betas": LIST, "momentum": Num(0.0)}
BACKBONE = {"d_model": POSITIVE, "n_layers": POSITIVE, "n_heads": POSITIVE, "d_ff": POSITIVE, "dropout": FRACTION,
            "activation": Choice(*ACTIVATIONS), "norm_first": BOOL, "causal": BOOL, "attn_dropout": FRACTION,
            "qkv_bias": BOOL, "head_dropout": FRACTION, "norm_eps": Num(0.0, lo_open=True), "ff_dropout": BOOL,
            "init": Choice(*INITS)}
TASK_COMMON = {
    "name": Choice("classify", "forecast", "events", "rl"), "default_dataset": STR, "protocol": STR,
    "batch_size": POSITIVE, "num_workers": Int(0), "max_epochs": Int(-1), "max_steps": Int(-1),
    "patience": Int(0, null=True), "grad_clip": Num(0.0, lo_open=True, null=True), "monitor": STR_OR_NULL,
    "monitor_mode": Choice("min", "max"), "optimizer": OPTIMIZER, "backbone": BACKBONE,
}
TASKS: dict[str, dict] = {
    "classify": {
        "validation": Choice("holdout", "test"), "val_fraction": Num(0.0, 1.0, lo_open=True, hi_open=True),
        "split_seed": Int(0), "standardize": BOOL, "statistics": Choice("train", "per_split"), "std_ddof": Choice(0, 1),
        "instance_norm_datasets": LIST, "nan_policy": Choice("interpolate", "error"),
        "embed": Choice("causal_conv", "circular", "linear"), "mask_padding": BOOL, "final_norm": BOOL,
        "readout": Choice("flatten", "last", "mean"), "lr_schedule": Choice("none", "tslib_cls"),
    },
    "forecast": {
        "seq_len": POSITIVE, "label_len": Int(0), "pred_len": POSITIVE, "patch_len": POSITIVE,
        "freq": Choice("t", "h", "d"), "features": Choice("M", "S"), "features_by_dataset": MAP,
        "sentinel_policy": Choice("keep", "interpolate"), "default_epochs": POSITIVE, "epochs_by_horizon": MAP,
        "lr_schedule": Choice("type1", "none"), "layout": Choice("stack", "encoder_decoder"),
        "head": Choice("patch", "last", "decoder"), "instance_norm": BOOL,
        "value_embedding": Choice("linear", "circular_conv"), "drop_last": MAP, "decoder_layers": POSITIVE,
    },
    "events": {
        "early_stop_monitor": STR_OR_NULL, "early_stop_mode": Choice("min", "max"), "n_components": POSITIVE,
        "time_encoding": Choice("absolute", "absolute+log_dt", "gap"),
        "time_encoding_at": Choice("input", "every_layer"), "loss": Choice("mean", "sum"), "l2": Num(0.0),
        "scale_floor": Num(0.0), "score_end_mark": BOOL,
    },
    "rl": {
        "steps_per_epoch": POSITIVE, "warmup_steps": Int(0), "context_len": POSITIVE, "rtg_scale": Num(0.0, lo_open=True),
        "max_timestep": POSITIVE, "sampling": Choice("length", "uniform"), "window_start": Choice("fit", "any"),
        "eval_curve": BOOL, "target_returns": Rule("map", null=True), "acting": Choice("window", "stream"),
        "eval_episodes": POSITIVE, "eval_batch": POSITIVE, "eval_seed": Int(0), "max_ep_len": POSITIVE,
        "eval_threads": POSITIVE, "debug_ep_len": POSITIVE, "embed_dropout": FRACTION,
    },
}

# --- model: the sizes (from the task) and each mixer's options ------------------------------

MODEL_COMMON = {"name": STR, "mixer": Choice(*MIXERS), **{k: v for k, v in BACKBONE.items()
                                                          if k not in ("causal", "attn_dropout", "qkv_bias",
                                                                       "head_dropout")},
                "compile": BOOL}
CHUNK = POSITIVE
MODELS: dict[str, dict] = {
    "aaren": {"scan_chunk": CHUNK, "causal": BOOL, "qkv_bias": BOOL, "head_dropout": FRACTION},
    "transformer": {"causal": BOOL, "attn_dropout": FRACTION, "qkv_bias": BOOL, "head_dropout": FRACTION},
    "linear_attn": {"chunk": CHUNK, "use_kernel": BOOL},
    "mamba2": {"d_state": Int(1, null=True), "headdim": Int(1, null=True), "expand": Num(0.0, lo_open=True, null=True),
               "d_conv": POSITIVE, "ngroups": POSITIVE, "chunk": CHUNK, "use_kernel": BOOL},
    "mlstm": {"qk_head": Int(1, null=True), "forget": Choice("sigmoid", "exp"), "chunk": CHUNK},
    "ttt": {"head_dim": Int(1, null=True), "mini_batch": POSITIVE, "base_lr": Num(0.0, lo_open=True)},
}

# --- trainer (Lightning's arguments; extra ones, added with +trainer.x=..., go to Lightning as they are)

LIMIT = Num(0.0, null=True)  # a fraction of the batches (float) or a number of batches (int)
TRAINER = {
    "accelerator": Choice("auto", "cpu", "gpu", "cuda", "mps"), "devices": ANY,
    "precision": Choice("32-true", "32", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"),
    "max_epochs": Int(-1, null=True), "max_steps": Int(-1), "gradient_clip_val": Num(0.0, lo_open=True, null=True),
    "log_every_n_steps": POSITIVE, "enable_progress_bar": BOOL, "enable_model_summary": BOOL, "deterministic": BOOL,
    "fast_dev_run": ANY, "limit_train_batches": LIMIT, "limit_val_batches": LIMIT, "limit_test_batches": LIMIT,
    "check_val_every_n_epoch": Int(1, null=True), "val_check_interval": Num(0.0, lo_open=True, null=True),
    "num_sanity_val_steps": Int(-1),
}

# --- dataset, per task -----------------------------------------------------------------------

DATASETS: dict[str, dict] = {
    "classify": {"name": STR},
    "forecast": {"name": STR, "split": Choice("ett_hour", "ett_minute", "ratio"), "target": STR},
    "events": {"name": STR, "format": Choice("sin", "meta_tpp_npz", "ifl_npz", "thp_pickle", "easytpp_json"),
               "source": Choice("auto", "meta_tpp", "own"), "n_seqs": POSITIVE, "t_end": Num(0.0, lo_open=True),
               "seed": Int(), "drop_empty": BOOL, "time_format": Choice("inter", "absolute"), "trust_pickle": BOOL,
               "tie_eps": Num(0.0, null=True), "window_end": STR},
    "rl": {"name": STR, "env": Choice("halfcheetah", "hopper", "walker2d", "ant"), "target_return": Num(),
           "file": STR_OR_NULL, "source": Choice("auto", "d4rl", "hub")},
}

TOP = {"seed": Int(), "tag": Rule("any", null=True), "skip_done": BOOL, "restart": BOOL,
       "checkpoint_every_min": Num(0.0, lo_open=True, null=True), "matmul_precision": Choice("highest", "high", "medium")}
OPEN = {"trainer", "task.optimizer"}  # sections that may hold keys the schema does not list


def problems(cfg: dict) -> list[str]:
    """Every key of a resolved config (a plain dict) that breaks the schema, then the relations."""
    task, mixer = cfg["task"].get("name"), cfg["model"].get("mixer")
    out = _section(cfg, "", TOP, open_=True)
    if task not in TASKS:
        return out + _section(cfg["task"], "task", {"name": TASK_COMMON["name"]}, open_=True)
    wrong_task = _dataset_task(cfg["dataset"].get("name"), task)
    if wrong_task:  # the dataset's keys are another task's: say that, not which keys differ
        return out + wrong_task
    out += _section(cfg["task"], "task", {**TASK_COMMON, **TASKS[task]})
    out += _section(cfg["model"], "model", {**MODEL_COMMON, **MODELS.get(mixer, {})})
    out += _section(cfg["trainer"], "trainer", TRAINER, open_=True)
    out += _section(cfg["dataset"], "dataset", DATASETS[task])
    return out or relations(cfg)


def _section(node: dict, where: str, schema: dict, open_: bool = False) -> list[str]:
    out = []
    for key, rule in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in node:
            continue  # a key a section may leave out (the relations check the ones that matter)
        if isinstance(rule, dict):
            if not isinstance(node[key], dict):
                out.append(f"{path}={node[key]!r}: must be a mapping with keys {', '.join(rule)}")
            else:
                out += _section(node[key], path, rule, open_=path in OPEN)
            continue
        bad = rule.problem(node[key])
        if bad:
            out.append(f"{path}={_show(node[key])}: {bad}; change the override (--cfg job shows every default)")
    if not open_:
        for key in node:
            if key not in schema:
                out.append(f"{where}.{key} is not a setting here (known: {', '.join(sorted(schema))}); "
                           f"check the spelling, or remove it")
    return out


# half-precision weights: what to use instead (compute in half precision, weights and optimizer in float32)
HALF_WEIGHTS = {"bf16-true": "bf16-mixed", "16-true": "16-mixed"}


def relations(cfg: dict) -> list[str]:
    """The checks that tie keys together."""
    t, m, tr = cfg["task"], cfg["model"], cfg["trainer"]
    out = []
    precision = str(tr.get("precision"))
    if precision in HALF_WEIGHTS:  # weights and Adam's moments in half precision lose small updates
        out.append(f"trainer.precision={precision} keeps the weights and the optimizer state in half precision, which "
                   f"the suite does not support (small updates are lost, and the modules compute some tensors in "
                   f"float32); use trainer.precision={HALF_WEIGHTS[precision]}: the same half-precision matmuls, "
                   f"with float32 weights")
    if m["mixer"] != "mamba2" and m["d_model"] % m["n_heads"]:
        out.append(f"model.d_model={m['d_model']} is not divisible by model.n_heads={m['n_heads']}: "
                   f"choose a width that is a multiple of the heads (e.g. model.d_model={m['n_heads'] * 16})")
    if m["mixer"] == "aaren" and m.get("causal") is False:
        out.append("model.causal=false: Aaren is causal by construction (a prefix scan); remove the override, "
                   "or use model=transformer model.causal=false for a bidirectional encoder")
    if t["name"] == "forecast":
        if t["label_len"] > t["seq_len"]:
            out.append(f"task.label_len={t['label_len']} is longer than the input window task.seq_len={t['seq_len']}: "
                       f"the decoder's known steps come from that window; use task.label_len <= {t['seq_len']}")
        if t.get("head") == "patch" and t["pred_len"] % t["patch_len"]:
            out.append(f"task.pred_len={t['pred_len']} is not a multiple of task.patch_len={t['patch_len']} (head=patch "
                       f"reads the horizon in patches): use a multiple of {t['patch_len']}, or set task.patch_len")
    if str(tr.get("accelerator")) in ("gpu", "cuda"):
        import torch  # only here: the one check that needs it

        if not torch.cuda.is_available():
            out.append(f"trainer.accelerator={tr['accelerator']} (trainer=gpu) but no CUDA GPU is visible here: "
                       f"run on a GPU machine, or drop trainer=gpu (trainer=default uses the GPU when one is found)")
    return out


def _dataset_task(name: str, task: str) -> list[str]:
    """A dataset selects its task (conf/dataset/<name>.yaml): the task chosen must be that one."""
    from aaren_bench.study import CONF, dataset_task

    path = CONF / "dataset" / f"{name}.yaml"
    owner = dataset_task(path) if path.exists() else None
    if owner is None or owner == task:
        return []
    return [f"dataset {name!r} belongs to task={owner}, but task={task} was chosen; a dataset selects its task: "
            f"run with dataset={name} (and no task=, or task={owner})"]


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def validate(cfg) -> None:
    """Raise :class:`ConfigError` naming every key of ``cfg`` that breaks the schema, and what to use."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "model", "trainer", "dataset")}
        plain.update({k: cfg.get(k) for k in TOP if k in cfg})
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else e
        raise ConfigError(f"the configuration cannot be resolved: {cause}") from None
    found = problems(plain)
    if found:
        more = "".join(f"\n  also: {p}" for p in found[1:])
        raise ConfigError(found[0] + more)

