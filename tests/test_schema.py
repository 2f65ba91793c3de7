"""The configuration schema: every shipped config passes it, each rule refuses what it should,
and its choices are the ones the code accepts."""
from __future__ import annotations

import pytest

from aaren_bench.errors import ConfigError
from aaren_bench.schema import DATASETS, MIXERS, TASKS, problems, validate
from aaren_bench.study import compose_config, discover_datasets, protocols

DATASET_CONFS = discover_datasets()[0]
PROTOCOLS = protocols()
CASES = [(d.name, p, "aaren") for d in DATASET_CONFS for p in PROTOCOLS.get(d.task, ())]
CASES += [(name, "suite", m) for name in ("JapaneseVowels", "ETTh1", "Sin", "hopper-medium") for m in MIXERS]


@pytest.mark.parametrize("dataset,protocol,model", CASES, ids=["-".join(c) for c in CASES])
def test_every_shipped_config_passes_the_schema(dataset, protocol, model):
    validate(compose_config([f"dataset={dataset}", f"protocol={protocol}", f"model={model}"]))


@pytest.mark.parametrize("override,word", [
    ("task.batch_size=0", "task.batch_size=0: must be an integer >= 1"),
    ("task.batch_size=2.5", "task.batch_size=2.5: must be an integer"),
    ("task.val_fraction=1.0", "task.val_fraction=1.0: must be a number > 0 and < 1"),
    ("task.backbone.dropout=1.0", "dropout=1.0: must be a number >= 0 and < 1"),
    ("task.nan_policy=foo", "one of interpolate, error"),
    ("task.std_ddof=true", "task.std_ddof=true: must be one of 0, 1"),
    ("+task.extra=1", "task.extra is not a setting here"),
    ("model.d_model=100", "not divisible by model.n_heads=8"),
    ("model.causal=false", "causal by construction"),
    ("trainer.precision=16-true", "trainer.precision=16-mixed"),
    ("seed=1", None),
])
def test_a_rule_refuses_what_it_should(override, word):
    cfg = compose_config(["dataset=JapaneseVowels", override])
    if word is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert word in str(e.value)


def test_forecast_relations():
    cfg = lambda *o: compose_config(["dataset=ETTh1", *o])  # noqa: E731
    with pytest.raises(ConfigError, match="task.label_len=200 is longer"):
        validate(cfg("task.label_len=200"))
    with pytest.raises(ConfigError, match="not a multiple of task.patch_len"):
        validate(cfg("task.pred_len=100"))
    with pytest.raises(ConfigError, match="belongs to task=forecast"):
        validate(compose_config(["task=classify", "dataset=ETTh1"]))


def test_schema_choices_are_the_codes_own():
    from aaren_bench.nn.backbone import _ACTIVATIONS
    from aaren_bench.nn.mixers import MIXERS as CODE_MIXERS
    from tasks.classify import data as cd
    from tasks.classify import model as cmodel
    from tasks.classify import module as cm
    from tasks.events import datasets as ed
    from tasks.events import model as em
    from tasks.events import module as emod
    from tasks.forecast import LAYOUTS, embed, frame, windows
    from tasks.forecast import model as fmodel
    from tasks.forecast import module as fm
    from tasks.rl import acting
    from tasks.rl import data as rd

    pairs = [
        (TASKS["classify"]["nan_policy"], cd.NAN_POLICIES), (TASKS["classify"]["validation"], cd.VALIDATIONS),
        (TASKS["classify"]["statistics"], cd.STATISTICS), (TASKS["classify"]["readout"], cmodel.READOUTS),
        (TASKS["classify"]["embed"], cmodel.EMBEDS), (TASKS["classify"]["lr_schedule"], cm.LR_SCHEDULES),
        (TASKS["forecast"]["head"], fmodel.HEADS), (TASKS["forecast"]["layout"], LAYOUTS),
        (TASKS["forecast"]["value_embedding"], embed.VALUE_EMBEDDINGS), (TASKS["forecast"]["features"], frame.FEATURES),
        (TASKS["forecast"]["sentinel_policy"], frame.SENTINEL_POLICIES), (TASKS["forecast"]["freq"], frame.FREQ_FEATURES),
        (TASKS["forecast"]["lr_schedule"], fm.LR_SCHEDULES), (DATASETS["forecast"]["split"], windows.SPLITS),
        (TASKS["events"]["time_encoding"], em.TIME_ENCODINGS), (TASKS["events"]["time_encoding_at"], em.ENCODING_AT),
        (TASKS["events"]["loss"], emod.LOSSES), (DATASETS["events"]["format"], ed.FORMATS),
        (DATASETS["events"]["source"], ed.SOURCES), (TASKS["rl"]["sampling"], rd.SAMPLINGS),
        (TASKS["rl"]["window_start"], rd.WINDOW_STARTS), (TASKS["rl"]["acting"], acting.MODES),
        (DATASETS["rl"]["source"], rd.SOURCES),
    ]
    for rule, code in pairs:
        assert set(rule.choices) == set(code), (rule.choices, code)
    assert set(MIXERS) == set(CODE_MIXERS) and set(TASKS["classify"].keys()) and set(_ACTIVATIONS) == {"gelu", "relu"}


def test_problems_lists_every_bad_key_at_once():
    cfg = compose_config(["dataset=JapaneseVowels", "task.batch_size=0", "task.nan_policy=foo"])
    from omegaconf import OmegaConf

    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "model", "trainer", "dataset")}
    found = problems(plain)
    assert len(found) == 2 and "task.batch_size" in found[0] and "task.nan_policy" in found[1]
