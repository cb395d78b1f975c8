"""Inside a run in the report: per-layer figures, test images ranked by loss, per-class scores.

Small runs on the embedded 5,000-digit sample (a few hundred images, 2 epochs) are trained
once per module; each test works on its own copy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint, save_checkpoint
from digitlab.report import ExperimentRecord, ReportError, write_report, write_run_report
from digitlab.report.inside import (
    class_scores,
    draw_activations,
    draw_layers,
    hidden_layers,
    member_loss_gallery,
    score_text,
    weight_layers,
)
from digitlab.report.rundata import load_run
from digitlab.report.runs import runs_record
from digitlab.runfiles import load_run_checkpoint
from digitlab.runner import prepare_data, run
from digitlab.settings import Settings

SMALL = {"dataset": "mnist-5k", "n_train": 300, "n_test": 200, "holdout": 0.2, "batch": 100,
         "lr": 0.2, "epochs": 2}  # fmt: skip
MLP = Settings(model="mlp", hidden=[16, 8], **SMALL)
LOGISTIC = Settings(model="logistic", classes=[2, 3], **SMALL)
TANH = Settings(model="mlp", hidden=[8], activation="tanh", **SMALL)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inside")
    for name, settings in (("mlp", MLP), ("logistic", LOGISTIC), ("tanh", TANH)):
        run(settings, folder=root / name, data=prepare_data(settings))
    return root


@pytest.fixture
def runs(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "runs"))


def _figure_ids(html: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,[^"]+"[^>]*data-figure="([^"]+)"', html)


# ---------------------------------------------------------------------------------- scores
HAND = [[5, 1, 0], [2, 3, 0], [1, 0, 0]]  # class 2: one test image, never predicted


def test_class_scores_equal_the_hand_worked_values() -> None:
    s = class_scores(HAND)
    # class 0: 5 right of 8 predicted, of 6 true; class 1: 3 of 4 predicted, of 5 true
    assert s[0].precision == pytest.approx(5 / 8) and s[0].recall == pytest.approx(5 / 6)
    assert s[0].f1 == pytest.approx(2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6))  # 5/7
    assert s[0].f1 == pytest.approx(5 / 7)
    assert s[1].precision == pytest.approx(3 / 4) and s[1].recall == pytest.approx(3 / 5)
    assert s[1].f1 == pytest.approx(2 / 3)
    assert (s[2].precision, s[2].recall, s[2].f1) == (None, 0.0, None)
    assert [x.support for x in s] == [6, 5, 1] and [x.predicted for x in s] == [8, 4, 0]
    assert score_text(s[2], "precision") == "undefined (never predicted)"
    assert score_text(s[2], "f1") == "undefined (never predicted)"
    assert score_text(s[2], "recall") == "0.000" and score_text(s[0], "f1") == "0.714"


def test_class_scores_of_a_class_without_test_images_and_of_a_bad_matrix() -> None:
    s = class_scores([[4, 0], [0, 0]])
    assert s[1].recall is None and score_text(s[1], "recall") == "undefined (no test images)"
    assert class_scores([[0, 2], [3, 0]])[0].f1 == 0.0  # both scores 0: F1 is 0, not undefined
    with pytest.raises(ReportError, match="expected"):
        class_scores([[1, 2, 3]])


def test_the_run_report_shows_the_per_class_table_without_nan(runs: Path) -> None:
    folder = runs / "mlp"
    metrics = json.loads((folder / "metrics.json").read_text())
    cm = np.diag(np.arange(10, 20))
    cm[9, 9], cm[9, 0] = 0, 4  # class 9 never predicted
    metrics["confusion_test"] = cm.tolist()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = write_run_report([folder])[0].read_text()
    table = text[text.index("Per-class precision, recall and F1") :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 11  # header and 10 classes
    assert "undefined (never predicted)" in table and "nan" not in table.lower()
    assert '<td class="num">0.714</td>' in table  # class 0: precision 10/14, recall 1, F1 .833
    assert '<td class="num">0.833</td>' in table


# ---------------------------------------------------------------------------------- layers
def test_mlp_report_has_the_per_layer_figures_with_captions(runs: Path) -> None:
    folder = runs / "mlp"
    html, md = write_run_report([folder])
    text = html.read_text()
    kinds = ["curves", "weights", "confusion", "layers", "activations", "loss_gallery"]
    assert _figure_ids(text) == [f"mlp/{k}" for k in kinds]
    for kind in ("layers", "activations", "loss_gallery"):
        for ext in ("png", "svg"):
            assert (folder / "figures" / f"{kind}.{ext}").stat().st_size > 1000
        assert f"(figures/{kind}.png)" in md.read_text()
    assert "the update/weight ratio of the last step" in text and "dead (ReLU never" in text
    assert "Activation histograms of each hidden layer" in text
    assert "most confidently wrong images" in text


def test_layer_columns_and_panels_of_an_mlp_and_a_linear_model(runs: Path) -> None:
    mlp, linear = load_run(runs / "mlp"), load_run(runs / "logistic")
    assert weight_layers(mlp.history) == ["1", "2", "3"] and hidden_layers(mlp.history) == [1, 2]
    assert weight_layers(linear.history) == [""] and hidden_layers(linear.history) == []
    visible = {}
    for name in ("mlp", "logistic"):
        fig = draw_layers(runs_record([runs / name]))
        visible[name] = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert visible["mlp"][-1] == "Saturated / dead units" and len(visible["mlp"]) == 4
    assert len(visible["logistic"]) == 3 and "Saturated / dead units" not in visible["logistic"]


def test_activation_figures_follow_the_activation_or_guess_it(runs: Path) -> None:
    tanh = draw_layers(runs_record([runs / "tanh"]))
    assert [t.get_text() for t in tanh.axes[3].get_legend().get_texts()] == [
        "saturated: hidden layer 1"
    ]
    heat = draw_activations(runs_record([runs / "tanh"]))
    assert heat.axes[0].get_title() == "hidden layer 1 (tanh)"
    assert heat.axes[0].get_xlim() == (-1.0, 1.0)
    (runs / "mlp" / "config.toml").unlink()  # no settings: the dead-unit columns say relu
    heat = draw_activations(runs_record([runs / "mlp"]))
    assert [ax.get_title() for ax in heat.axes[:2]] == [
        "hidden layer 1 (relu)",
        "hidden layer 2 (relu)",
    ]
    assert heat.axes[0].get_xlim() == (0.0, 4.0)


def test_linear_model_report_has_the_weight_curves_only(runs: Path) -> None:
    folder = runs / "logistic"
    text = write_run_report([folder])[0].read_text()
    kinds = ["curves", "weights", "confusion", "layers", "loss_gallery"]
    assert _figure_ids(text) == [f"logistic/{k}" for k in kinds]
    assert not (folder / "figures" / "activations.png").exists()
    assert "could not be drawn" not in text


def test_a_history_without_layer_statistics_gets_no_layer_figures(runs: Path) -> None:
    folder = runs / "mlp"
    lines = (folder / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, k in enumerate(header) if not re.fullmatch(r"(W|b|a)\d*_\w+", k)]
    rows = [",".join(line.split(",")[i] for i in keep) for line in lines]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    ids = _figure_ids(write_run_report([folder])[0].read_text())
    assert ids == [f"mlp/{k}" for k in ("curves", "weights", "confusion", "loss_gallery")]


# ---------------------------------------------------------------------------------- gallery
def _ranked_against_own_loss(folder: Path, settings: Settings) -> tuple:
    """The run's loss gallery, its model and test split, after checking that the gallery's
    first image has the highest loss by the model's own per-image ``loss``."""
    g = member_loss_gallery(load_run(folder))
    model, _, _ = load_run_checkpoint(folder / "checkpoint.npz")
    X, y = prepare_data(settings).test
    own = np.array([model.loss(X[i : i + 1], y[i : i + 1], penalty=False) for i in range(len(y))])
    assert g.index[0] == int(np.argmax(own))
    np.testing.assert_allclose(g.loss, own[g.index], rtol=1e-4)
    return g, model, X, y


def test_gallery_is_ranked_by_the_models_own_loss_per_image(runs: Path) -> None:
    g, model, X, y = _ranked_against_own_loss(runs / "mlp", MLP)
    assert np.all(np.diff(g.loss) <= 0) and len(g.index) == 24
    probs = model.forward(X[g.index])
    np.testing.assert_allclose(g.prob, probs.max(axis=1), rtol=1e-4)
    np.testing.assert_array_equal(g.pred, model.predict(X[g.index]))
    assert g.n_wrong == int(np.count_nonzero(model.predict(X) != y)) and g.n_test == len(y)


def test_gallery_of_a_logistic_run_uses_both_class_probabilities(runs: Path) -> None:
    g, *_ = _ranked_against_own_loss(runs / "logistic", LOGISTIC)
    assert np.all(g.prob >= 0.5) and g.classes == ["3", "2"]  # label 1 is the first class


def test_gallery_refuses_other_data_like_evaluate(runs: Path) -> None:
    folder = runs / "mlp"
    ck = folder / "checkpoint.npz"
    arrays, meta = load_checkpoint(ck)
    meta["extra"]["data"] |= {"name": "mnist", "n_train": 60000, "n_test": 10000}  # as if full
    save_checkpoint(ck, arrays, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(ReportError, match="was trained on mnist"):
        member_loss_gallery(load_run(folder))
    text = write_run_report([folder])[0].read_text()  # the report says so in its place
    assert "mlp/loss_gallery" not in _figure_ids(text) and "was trained on mnist" in text


# ---------------------------------------------------------------------------------- experiments
def test_experiment_lists_the_new_kinds_and_gets_the_per_class_table(runs: Path) -> None:
    exp = runs / "exp"
    exp.mkdir()
    shutil.move(runs / "mlp", exp / "net")
    member = load_run(exp / "net", "relu 16-8")
    record = ExperimentRecord(
        exp, name="inside", source="000", section="", title="Inside a net", protocol="",
        choices="", figures=["confusion", "layers", "activations", "loss_gallery"],
        data={"dataset": "mnist-5k", "is_sample": True}, members=[member], chosen="relu 16-8",
        published=[], seconds=1.0,
    )  # fmt: skip
    (exp / "experiment.json").write_text(json.dumps(record.to_json()))
    text = write_report(runs)[0].read_text()
    kinds = ["confusion", "layers", "activations", "loss_gallery"]
    assert _figure_ids(text) == [f"exp/{k}" for k in kinds]
    assert "Per-class precision, recall and F1" in text
    assert "Inside the chosen setting (relu 16-8), layer by layer" in text
