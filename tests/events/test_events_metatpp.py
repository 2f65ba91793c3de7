"""protocol=metatpp: Meta TPP's regularisation, per-layer encoding, metric formulas, selection and
early stopping, and its own Sin / Wiki files taking precedence (docs/protocol/events.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aaren_bench.nn import build_backbone
from aaren_bench.run import build, make_callbacks, train
from aaren_bench.study import compose_config
from tasks.events.data import EventSeqs, collate
from tasks.events.formats import save_meta_tpp_npz
from tasks.events.likelihood import Mixture, end_mark_ll, lognormal_mixture_mean, metric_sums, sequence_scores, split_metrics
from tasks.events.model import EventModel
from tasks.events.module import EventModule
from tests.prepared import read

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SIN = ["dataset.n_seqs=20", "dataset.t_end=20", "dataset.source=own"]


def _cfg(*overrides):
    return compose_config(["task=events", "logger=none", *overrides])


def _seqs(end_marks=None):
    # window [0, 10]; sequence A: 3 events, sequence B: 2 events (padded)
    return EventSeqs.build([[1.0, 1.5, 4.0], [2.0, 6.0]], [[0, 2, 1], [1, 1]], t_start=0.0, t_end=10.0, num_marks=3,
                           end_marks=end_marks)


# ---- regularisation ---------------------------------------------------------------------

def _module(loss, l2, kind="aaren"):
    torch.manual_seed(0)
    bb = build_backbone(dict(mixer=kind, d_model=8, n_layers=2, n_heads=1, d_ff=8, dropout=0.0))
    model = EventModel(bb, num_marks=3, time_scale=1.0, n_components=2).double()
    return EventModule(model, lambda p: torch.optim.Adam(p), loss=loss, l2=l2)


def test_l2_term_is_half_coefficient_times_squared_norm_added_to_the_batch_sum():
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in collate(_seqs(), [0, 1]).items()}
    mod = _module("sum", 1e-4)
    sc = sequence_scores(*mod.model(batch), batch)
    nll_sum = -float((sc.time_ll + sc.mark_ll + sc.surv_ll).sum().detach())
    theta = np.concatenate([p.detach().numpy().ravel() for p in mod.parameters()])  # every parameter
    by_hand = nll_sum + 0.5 * 1e-4 * float(np.sum(theta**2))
    with pytest.warns(UserWarning, match="log"):  # self.log outside a Trainer only warns
        loss = mod.training_step(batch, 0)
    assert float(loss) == pytest.approx(by_hand, rel=1e-12)
    # the penalty's gradient is l2 * theta; the data term is the batch SUM (not divided by the 3 events)
    mod.zero_grad()
    mod.l2_penalty().backward()
    for p in mod.parameters():
        torch.testing.assert_close(p.grad, 1e-4 * p.detach())
    mean = _module("mean", 0.0)
    with pytest.warns(UserWarning, match="log"):
        assert float(mean.training_step(batch, 0)) == pytest.approx(nll_sum / 3, rel=1e-12)


def test_metatpp_protocol_regularises_like_meta_tpp_and_the_suite_keeps_its_decay():
    for protocol, (loss, l2, wd) in {"metatpp": ("sum", 1e-4, 0.0), "suite": ("mean", 0.0, 1e-4)}.items():
        _, _, module, _ = build(_cfg(f"protocol={protocol}", *TINY_SIN))
        opt = module.configure_optimizers()
        assert (module.loss_reduction, module.l2) == (loss, l2), protocol
        assert [g["weight_decay"] for g in opt.param_groups] == [wd], protocol


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="task.loss"):
        _module("total", 0.0)
    with pytest.raises(ValueError, match="task.l2"):
        _module("sum", -1.0)


# ---- the per-layer temporal encoding ------------------------------------------------------

def _model(kind, encoding="gap", at="every_layer"):
    torch.manual_seed(0)
    bb = build_backbone(dict(mixer=kind, d_model=16, n_layers=3, n_heads=2, d_ff=32, dropout=0.1))
    return EventModel(bb, num_marks=3, time_scale=0.7, n_components=3, time_encoding=encoding,
                      time_encoding_at=at).eval()


@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_encoding_is_added_before_every_layer(kind):
    from aaren_bench.nn.embed import sinusoidal

    model = _model(kind)
    batch = collate(_seqs(), [0, 1])
    enc = sinusoidal(batch["dts"], 16)  # Meta TPP's THP: the raw gap entries, no scaling
    seen, out = [], []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) for b in model.backbone.blocks]
    hooks += [b.register_forward_hook(lambda m, a, o: out.append(o[0].detach())) for b in model.backbone.blocks]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    assert len(seen) == 3
    torch.testing.assert_close(seen[0], model.mark_emb(batch["marks"]).detach() + enc)
    for layer in (1, 2):
        torch.testing.assert_close(seen[layer], out[layer - 1] + enc)
    # once at the input, layers 2..L see the previous output alone
    once = _model(kind, at="input")
    seen.clear(), out.clear()
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) for b in once.backbone.blocks]
    hooks += [b.register_forward_hook(lambda m, a, o: out.append(o[0].detach())) for b in once.backbone.blocks]
    with torch.no_grad():
        once(batch)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen[1], out[0])


@pytest.mark.parametrize("encoding", ["gap", "absolute"])
@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_streaming_equals_batch_with_the_per_layer_encoding(kind, encoding):
    from tasks.events.stream import StreamingPredictor

    model = _model(kind, encoding)
    seqs = _seqs()
    batch = collate(seqs, [0, 1])
    mix, logits = model(batch)
    for b in range(2):
        pred = StreamingPredictor(model, batch=1)
        for i, (t, k) in enumerate(zip(seqs.times[b], seqs.marks[b])):
            m, lg = pred.observe(t, int(k))
            torch.testing.assert_close(m.mu[0], mix.mu[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.sigma[0], mix.sigma[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lg[0], logits[b, i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_per_layer_encoding_stays_causal(kind):
    model = _model(kind)
    batch = collate(_seqs(), [0])
    mix, _ = model(batch)
    b2 = {k: v.clone() for k, v in batch.items()}
    b2["dts"][0, 2] += 0.3  # event 3's gap: only position 2 on may move
    mix2, _ = model(b2)
    torch.testing.assert_close(mix2.mu[:, :2], mix.mu[:, :2])
    assert not torch.allclose(mix2.mu[:, 2], mix.mu[:, 2])


def test_unknown_encoding_place_is_refused():
    with pytest.raises(ValueError, match="time_encoding_at"):
        _model("aaren", at="every")


# ---- Meta TPP's metric formulas -----------------------------------------------------------

def _pdf(x, w, mu, sig):
    return sum(wk / (x * sk * math.sqrt(2 * math.pi)) * math.exp(-((math.log(x) - mk) ** 2) / (2 * sk**2))
               for wk, mk, sk in zip(w, mu, sig))


def _sf_clamped(x, w, mu, sig):
    """Meta TPP's survival: each component's CDF clamped to [1e-5, 1 - 1e-5]."""
    cdf = [min(max(1 - 0.5 * math.erfc((math.log(x) - mk) / (sk * math.sqrt(2))), 1e-5), 1 - 1e-5)
           for mk, sk in zip(mu, sig)]
    return sum(wk * (1 - c) for wk, c in zip(w, cdf))


@pytest.mark.parametrize("end_marks", [None, [1, 2]])
def test_meta_tpp_formulas_match_hand_computation(end_marks):
    seqs = _seqs(end_marks)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in collate(seqs, [0, 1]).items()}
    B, N = batch["mask"].shape
    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(B, N, 2, generator=g, dtype=torch.float64), -1)
    mu = torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    mu[1, 1] = -12.0  # B's last state: its survival of the 4.0 window-end gap is below 1e-5, so the clamp acts
    sig = torch.rand(B, N, 2, generator=g, dtype=torch.float64) + 0.3
    logits = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    mix = Mixture(log_w, mu, sig)

    def pos(b, i):
        return log_w[b, i].exp().tolist(), mu[b, i].tolist(), sig[b, i].tolist()

    def lm(b, i, k):
        return float(torch.log_softmax(logits[b, i], -1)[k])

    # Meta TPP's entries: A = gaps 1.0, 0.5, 2.5 and the window-end gap 6.0; B = 2.0, 4.0 and 4.0
    ll = (math.log(_pdf(0.5, *pos(0, 0))) + math.log(_pdf(2.5, *pos(0, 1))) + math.log(_sf_clamped(6.0, *pos(0, 2)))
          + lm(0, 0, 2) + lm(0, 1, 1)
          + math.log(_pdf(4.0, *pos(1, 0))) + math.log(_sf_clamped(4.0, *pos(1, 1))) + lm(1, 0, 1))
    # Meta TPP's shifted masks_without_last also score the window-end entry's mark from the last
    # event's state (a pseudo-event): its stored mark, or class 0 where the file has padding there
    ends_ll = [max(e, 0) for e in (end_marks or [-1, -1])]
    ll += lm(0, 2, ends_ll[0]) + lm(1, 1, ends_ll[1])
    assert math.log(_sf_clamped(4.0, *pos(1, 1))) == pytest.approx(math.log(1e-5), rel=1e-6)
    nll_by_hand = -ll / 7  # every valid entry: 4 + 3
    m = lognormal_mixture_mean(mix) - 1e-12
    err_a = (m[0, 0] - 0.5) + (m[0, 1] - 2.5) + (m[0, 2] - 6.0)  # summed within the sequence ...
    err_b = (m[1, 0] - 4.0) + (m[1, 1] - 4.0)
    rmse_by_hand = math.sqrt((float(err_a) ** 2 + float(err_b) ** 2) / 5)  # ... squared, over 3 + 2 targets
    p = logits.argmax(-1)
    ends = end_marks or [-1, -1]  # no stored window-end mark: a miss
    hits = [p[0, 0] == 2, p[0, 1] == 1, p[0, 2] == ends[0], p[1, 0] == 1, p[1, 1] == ends[1]]
    acc_by_hand = sum(int(h) for h in hits) / 5

    got = split_metrics(metric_sums(mix, logits, batch), marked=True)
    assert got["nll_metatpp"] == pytest.approx(nll_by_hand, rel=1e-9)
    assert got["rmse_metatpp"] == pytest.approx(rmse_by_hand, rel=1e-9)
    assert got["acc_metatpp"] == pytest.approx(acc_by_hand)
    # ours, on the same batch: 3 scored events, one squared error each, the unclamped survival
    assert got["acc"] == pytest.approx(sum(int(h) for h in (hits[0], hits[1], hits[3])) / 3)
    se = (m[0, 0] - 0.5) ** 2 + (m[0, 1] - 2.5) ** 2 + (m[1, 0] - 4.0) ** 2
    assert got["rmse"] == pytest.approx(math.sqrt(float(se) / 3), rel=1e-9)
    assert got["nll"] * 3 > got["nll_metatpp"] * 7 + 50  # the clamp lifts B's tiny survival to 1e-5


def test_metatpp_loss_scores_the_window_end_mark_and_the_suite_does_not():
    """Meta TPP's training loss (tpp_network.py, masks_without_last) has the window-end entry's
    mark term; under protocol=metatpp ours does too, under the suite it does not."""
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in collate(_seqs([1, 2]), [0, 1]).items()}
    plain, with_end = _module("sum", 0.0), _module("sum", 0.0)
    with_end.score_end_mark = True
    mix, logits = plain.model(batch)
    extra = float(end_mark_ll(logits, batch).sum())
    by_hand = float(torch.log_softmax(logits[0, 2], -1)[1] + torch.log_softmax(logits[1, 1], -1)[2])
    assert extra == pytest.approx(by_hand, rel=1e-12) and extra < 0
    with pytest.warns(UserWarning, match="log"):
        a, b = float(plain.training_step(batch, 0)), float(with_end.training_step(batch, 0))
    assert b == pytest.approx(a - extra, rel=1e-12)
    for protocol, want in (("metatpp", True), ("suite", False)):
        _, _, module, _ = build(_cfg(f"protocol={protocol}", *TINY_SIN))
        assert module.score_end_mark is want, protocol


def test_end_marks_survive_subset_split_and_file_round_trip(tmp_path):
    from tasks.events.formats import load_meta_tpp_npz

    seqs = EventSeqs.build([[1.0, 2.0], [0.5], [3.0, 4.0, 5.0]], [[0, 1], [2], [1, 1, 0]], t_end=9.0, num_marks=3,
                           end_marks=[2, -1, 0])
    assert seqs.subset([2, 0]).end_marks.tolist() == [0, 2]
    assert collate(seqs, [1, 2])["end_mark"].tolist() == [-1, 0]
    back = load_meta_tpp_npz(save_meta_tpp_npz(seqs, tmp_path / "x.npz"), num_marks=3)
    assert back.end_marks.tolist() == [2, -1, 0]  # -1 is stored as Meta TPP's padding mark 0
    assert collate(_seqs(), [0, 1])["end_mark"].tolist() == [-1, -1]


# ---- selection and early stopping -----------------------------------------------------------

def test_callbacks_follow_the_protocol(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    expect = {"metatpp": ("val/rmse_metatpp", "val/nll_metatpp", 6000), "suite": ("val/nll", "val/nll", 2000)}
    for protocol, (ckpt, stop, epochs) in expect.items():
        cfg = _cfg(f"protocol={protocol}", *TINY_SIN)
        cbs = make_callbacks(cfg, tmp_path, build(cfg).task)
        mc = [c for c in cbs if isinstance(c, ModelCheckpoint) and c.monitor]
        es = [c for c in cbs if isinstance(c, EarlyStopping)]
        assert [c.monitor for c in mc] == [ckpt] and [c.monitor for c in es] == [stop], protocol
        assert es[0].patience == 500 and cfg.trainer.max_epochs == epochs


@pytest.mark.parametrize("dataset", ["Sin", "Wiki"])
def test_a_metatpp_run_selects_on_its_rmse_and_records_both_formulas(dataset, runs_dir, tmp_path):
    # the callbacks are strict: a monitored metric that validation did not log would stop the run
    if dataset == "Sin":
        data = TINY_SIN
    else:  # a tiny Meta TPP wiki.npz (no raw file needed)
        _tiny_wiki(tmp_path)
        data = [f"paths.data_root={tmp_path}"]
    rec = train(_cfg(f"dataset={dataset}", "protocol=metatpp", "trainer.max_epochs=2", f"paths.runs={runs_dir}",
                     "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *data))
    assert rec["protocol"] == "metatpp" and rec["selection"] == {"metric": "val/rmse_metatpp", "mode": "min"}
    assert rec["cell"].split("/")[2].startswith("metatpp")
    want = {"test/nll", "test/rmse", "test/nll_metatpp", "test/rmse_metatpp"}
    want |= {"test/acc", "test/acc_metatpp"} if dataset == "Wiki" else set()
    assert want <= set(rec["metrics"])
    assert rec["data_source"]["kind"] == ("generated" if dataset == "Sin" else "meta_tpp_file")


# ---- Meta TPP's own files first -------------------------------------------------------------

def _tiny_wiki(root):
    rng = np.random.default_rng(0)
    times = [np.cumsum(rng.uniform(1.0, 50.0, size=n)) for n in (5, 7, 4, 6, 8, 5, 6, 9, 4, 7)]
    marks = [rng.integers(0, 8226, size=len(t)) for t in times]
    marks[0][0] = 8225  # the largest of Meta TPP's 8226 marks
    seqs = EventSeqs.build(times, marks, t_end=600.0, num_marks=8226, end_marks=[3] * 10)
    return save_meta_tpp_npz(seqs, root / "events" / "meta_tpp" / "real" / "wiki.npz"), seqs


def test_meta_tpp_sin_file_takes_precedence_when_present(tmp_path):
    from aaren_bench.data import DatasetNotFound

    cfg = lambda *o: _cfg("dataset=Sin", f"paths.data_root={tmp_path}", *o)  # noqa: E731
    absent = read(build(cfg("dataset.n_seqs=20", "dataset.t_end=20"))).datamodule
    assert absent.data_source["kind"] == "generated"
    assert absent.data_source["meta_tpp_file_absent"].endswith("events/meta_tpp/synthetic/sin.npz")
    with pytest.raises(DatasetNotFound, match="synthetic/sin.npz"):
        read(build(cfg("dataset.source=meta_tpp")))

    theirs = EventSeqs.build([np.arange(1, n + 1) * 0.75 for n in range(3, 13)], t_end=20.0, num_marks=1)
    path = save_meta_tpp_npz(theirs, tmp_path / "events" / "meta_tpp" / "synthetic" / "sin.npz")
    dm = read(build(cfg())).datamodule
    assert dm.data_source["kind"] == "meta_tpp_file" and dm.data_source["path"] == str(path)
    assert len(dm.data_source["sha256"]) == 64
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    np.testing.assert_allclose(dm.splits["train"].times[1], theirs.times[1])
    np.testing.assert_allclose(dm.splits["test"].t_end, 20.0)
    own = read(build(cfg("dataset.source=own", "dataset.n_seqs=20", "dataset.t_end=20"))).datamodule
    assert own.data_source["kind"] == "generated" and "meta_tpp_file_absent" not in own.data_source


def test_meta_tpp_wiki_file_takes_precedence_with_its_8226_marks(tmp_path):
    path, theirs = _tiny_wiki(tmp_path)
    dm = read(build(_cfg("dataset=Wiki", f"paths.data_root={tmp_path}"))).datamodule  # no raw file under tmp_path
    assert dm.data_source["kind"] == "meta_tpp_file" and dm.num_marks == 8226
    assert dm.splits["train"].marks[0][0] == 8225
    assert dm.splits["train"].end_marks.tolist() == [3] * 6
