"""The benchmark engine and the command line, at a tiny size."""

import json
import os

import numpy as np
import pytest

from advdetect.benchmark import format_report, parse_attack, run_benchmark, to_markdown
from advdetect.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    tables = run_benchmark(dataset="digits", attacks=["fgsm:0.3", "pgd:0.3"], detectors=["cmag"],
                           n_train=200, n_test=60, n_attack=30, victim_epochs=3,
                           detector_epochs=1, output=str(out), verbose=0, log=lambda *_: None)
    return tables, out


def test_tables_have_every_detector_and_attack(tiny_run):
    tables, _ = tiny_run
    res = tables["results"]
    assert set(res["attack"]) == {"fgsm:0.3", "pgd:0.3"}
    # CMAG plus its no-retraining variants and the max-softmax floor.
    assert {"CMAG", "CMAG (paper)", "CMAG gr ssim", "CMAG fmr ssim", "CMAG all ssim",
            "Max softmax (floor)"} <= set(res["detector"])
    assert res["roc_auc"].between(0, 1).all()
    assert res["clean_fpr"].between(0, 1).all()
    assert (res["n_adversarial"] > 0).all()
    att = tables["attacks"].set_index("attack")
    assert (att["success_rate"] > 0).all() and (att["mean_linf"] <= 0.3 + 1e-4).all()
    timing = tables["timing"].set_index("detector")
    assert timing.loc["CMAG", "fit_seconds"] > 0
    assert timing.loc["CMAG", "cost_vs_classifier"] > 0
    # The classifier is timed at the detector's own batch size (recorded in the table).
    assert timing.loc["CMAG", "batch_size"] == 128
    assert timing.loc["CMAG", "cost_vs_classifier"] == pytest.approx(
        timing.loc["CMAG", "classifier_images_per_s"] / timing.loc["CMAG", "score_images_per_s"])


def test_outputs_written(tiny_run):
    tables, out = tiny_run
    for name in ("results.csv", "results.md", "attacks.csv", "timing.csv", "settings.json"):
        assert (out / name).exists(), name
    settings = json.loads((out / "settings.json").read_text())
    assert settings["dataset"] == "digits" and settings["n_attack"] == 30
    pngs = [p for p in os.listdir(out) if p.endswith(".png")]
    assert any(p.startswith("roc_") for p in pngs)
    assert any(p.startswith("density_") for p in pngs)
    assert "reconstructions_cmag.png" in pngs
    md = (out / "results.md").read_text()
    assert "ROC-AUC" in md and "CMAG (paper)" in md and md == format_report(tables)


def test_variants_share_networks_and_leave_the_detector_alone(digits_small, small_victim):
    from sklearn.frozen import FrozenEstimator

    from advdetect import CMAGDetector, DAFARDetector
    from advdetect.benchmark import _variants

    X, _ = digits_small
    fast = dict(max_epochs=1, device="cpu", random_state=0)
    cmag = CMAGDetector(FrozenEstimator(small_victim), **fast).fit(X)
    before = cmag.thresholds_.copy()
    variants = _variants("CMAG", cmag)
    paper = variants["CMAG (paper)"]
    assert (paper.stage, paper.criterion, paper.threshold_quantile) == ("gr", "both", 0.0)
    assert paper.global_reconstructor_ is cmag.global_reconstructor_ and paper.threshold_ssim_ == \
        cmag.calibration_["ssim_gr"].min()
    assert variants["CMAG fmr ssim"].confidence_test is False
    assert cmag.stage == "fmr" and cmag.thresholds_.equals(before)
    dafar = DAFARDetector(FrozenEstimator(small_victim), anomaly_max_epochs=1, **fast).fit(X)
    no_c = _variants("DAFAR", dafar)["DAFAR (no C)"]
    assert not no_c.scores_with_anomaly_detector_ and dafar.scores_with_anomaly_detector_
    l2 = dafar.calibration_["l2"]
    assert no_c.threshold_ == pytest.approx(l2.mean() + dafar.z * l2.std(ddof=1))


def test_throughput_is_the_best_of_its_runs(monkeypatch):
    # One slow run (a busy machine) must not set the figure: the best run does.
    from advdetect import benchmark
    clock = iter([0.0, 2.0, 10.0, 10.5, 20.0, 21.0])  # runs of 2.0, 0.5 and 1.0 s
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    calls = []
    [ips] = benchmark.throughputs([lambda X: calls.append(len(X))], np.zeros((100, 1)),
                                   repeats=3)
    assert calls == [64, 100, 100, 100]  # a warm-up on 64 images, then three timed runs
    assert ips == pytest.approx(100 / 0.5)


def testthroughputs_interleave_their_runs(monkeypatch):
    # A detector and the classifier are timed turn by turn, so a slow spell hits both.
    from advdetect import benchmark
    clock = iter(np.arange(0.0, 100.0))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    calls = []
    ips = benchmark.throughputs([lambda X: calls.append(("a", len(X))),
                                  lambda X: calls.append(("b", len(X)))],
                                 np.zeros((100, 1)), repeats=2)
    # Warm-ups on 64 images, then the timed runs alternate.
    assert calls == [("a", 64), ("b", 64)] + [("a", 100), ("b", 100)] * 2
    assert ips == [100.0, 100.0]  # every fake run takes one second


def test_parse_attack_and_markdown():
    assert parse_attack("pgd:0.3") == ("pgd", {"eps": 0.3})
    assert parse_attack("cw_l2:19") == ("cw_l2", {"confidence": 19.0})
    import pandas as pd
    md = to_markdown(pd.DataFrame({"a": [1.23456, np.nan], "b": ["x", "y"]}))
    assert md.splitlines()[0] == "| a | b |" and "1.235" in md


def test_cli_benchmark_quick(tmp_path, capsys):
    code = main(["benchmark", "--dataset", "digits", "--attacks", "fgsm:0.3", "--detectors",
                 "cmag", "--n-train", "150", "--n-test", "40", "--n-attack", "20",
                 "--victim-epochs", "2", "--detector-epochs", "1", "--output", str(tmp_path),
                 "--no-plots", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "Cost" in printed
    assert (tmp_path / "results.csv").exists()
    with pytest.raises(SystemExit):
        main(["benchmark", "--detectors", "nope"])


def test_prepare_benchmark_cache_reuses_victim_and_attacks(tmp_path):
    from advdetect.benchmark import prepare_benchmark

    logs = []
    kw = dict(n_train=300, n_test=60, n_attack=30, victim_epochs=3, cache_dir=str(tmp_path),
              log=logs.append)
    first = prepare_benchmark("digits", ["fgsm:0.3", "pgd:0.3"], **kw)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3 and sum(f.startswith("attack-") for f in files) == 2
    second = prepare_benchmark("digits", ["fgsm:0.3", "pgd:0.3"], **kw)
    assert any("loaded from" in line for line in logs[len(logs) // 2:])
    assert not first["attacks"]["cached"].any() and second["attacks"]["cached"].all()
    np.testing.assert_array_equal(first["victim"].predict_proba(first["X_test"]),
                                  second["victim"].predict_proba(second["X_test"]))
    for spec, res in first["results"].items():
        again = second["results"][spec]
        np.testing.assert_array_equal(res.x_adv, again.x_adv)
        np.testing.assert_array_equal(res.success, again.success)
        assert again.params == json.loads(json.dumps(again.params))
    # Another setting is another key: nothing stale is reused.
    prepare_benchmark("digits", ["fgsm:0.2"], **kw)
    assert len(os.listdir(tmp_path)) == 4
    # Another test subsample is another attack key but the same victim.
    logs.clear()
    prepare_benchmark("digits", ["fgsm:0.2"], **dict(kw, n_test=50))
    assert "loaded from" in logs[0] and len(os.listdir(tmp_path)) == 5


def test_an_attack_that_fools_nothing_is_reported_not_dropped(tmp_path):
    logs = []
    tables = run_benchmark(dataset="digits", attacks=["fgsm:0.3", "fgsm:0.001"],
                           detectors=["squeeze"], n_train=200, n_test=60, n_attack=30,
                           victim_epochs=3, output=str(tmp_path), verbose=0,
                           log=logs.append)
    attacks = tables["attacks"].set_index("attack")
    assert attacks.loc["fgsm:0.001", "success_rate"] == 0
    assert any("fgsm:0.001: no successful adversarial examples" in line for line in logs)
    assert set(tables["results"]["attack"]) == {"fgsm:0.3"}
    for name in ("results.csv", "results.md", "attacks.csv"):
        assert (tmp_path / name).is_file()
    assert "fgsm:0.001" in (tmp_path / "attacks.csv").read_text()


def test_no_scored_attack_still_gives_a_results_table(tmp_path):
    tables = run_benchmark(dataset="digits", attacks=["fgsm:0.001"], detectors=["squeeze"],
                           n_train=200, n_test=60, n_attack=30, victim_epochs=3,
                           output=str(tmp_path), verbose=0, log=lambda *_: None)
    assert tables["results"].empty and "roc_auc" in tables["results"].columns
    assert (tmp_path / "results.md").is_file()


def _quiet(*_):
    pass


def test_cli_prints_the_headline_first_and_settings_only_when_verbose(tmp_path, capsys):
    args = ["benchmark", "--dataset", "digits", "--attacks", "fgsm:0.3", "--detectors",
            "magnet", "--n-train", "150", "--n-test", "40", "--n-attack", "20",
            "--victim-epochs", "2", "--detector-epochs", "1", "--output", str(tmp_path),
            "--no-plots", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines[0].startswith("digits, seed 0: victim SmallCNN")
    assert lines[1].startswith("ROC-AUC")
    assert '"n_train"' not in printed and "## Settings" not in printed
    written = [line for line in lines if line.startswith("Written to")]
    assert len(written) == 1 and str(tmp_path) in written[0] and "settings.json" in written[0]
    assert len(lines) < 25
    # The full settings are in the file, and on the terminal only when asked for.
    assert json.loads((tmp_path / "settings.json").read_text())["n_train"] == 150
    assert main(args + ["--verbose"]) == 0
    assert '"n_train": 150' in capsys.readouterr().out


def test_quick_run_says_it_is_a_smoke_test(tmp_path, capsys):
    from advdetect.benchmark import QUICK, QUICK_BANNER
    assert main(["benchmark", "--quick", "--dataset", "digits", "--detectors", "magnet",
                 "--attacks", "fgsm:0.3", "--n-attack", "20", "--output", str(tmp_path),
                 "--no-plots", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith(QUICK_BANNER)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["quick"] is True and settings["complete"] is True
    # The preset's sizes, except what was given on the command line.
    assert settings["n_train"] == QUICK["n_train"] and settings["n_attack"] == 20
    assert settings["victim_epochs"] == QUICK["victim_epochs"]
    assert QUICK_BANNER in (tmp_path / "results.md").read_text()


def test_a_full_run_is_not_marked_quick(tiny_run):
    tables, out = tiny_run
    settings = json.loads((out / "settings.json").read_text())
    assert settings["quick"] is False and settings["complete"] is True
    from advdetect.benchmark import QUICK_BANNER
    assert QUICK_BANNER not in (out / "results.md").read_text()


def test_tables_are_written_as_soon_as_they_exist(tmp_path, monkeypatch):
    # An interrupted run keeps what it measured: here the second detector's fit fails.
    from advdetect.squeeze import FeatureSqueezingDetector

    def broken_fit(self, X, y=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureSqueezingDetector, "fit", broken_fit)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(dataset="digits", attacks=["fgsm:0.3"], detectors=["magnet", "squeeze"],
                      n_train=150, n_test=40, n_attack=20, victim_epochs=2, detector_epochs=1,
                      output=str(tmp_path), verbose=0, log=_quiet)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["complete"] is False and "victim_accuracy" in settings
    assert "fgsm:0.3" in (tmp_path / "attacks.csv").read_text()
    timing = (tmp_path / "timing.csv").read_text()
    assert "MagNet" in timing and "Feature Squeezing" not in timing
    assert not list(tmp_path.glob("*.tmp"))


def test_settings_record_the_cache_relative_to_the_output(tmp_path):
    tables = run_benchmark(dataset="digits", attacks=["fgsm:0.3"], detectors=["magnet"],
                           n_train=150, n_test=40, n_attack=20, victim_epochs=2,
                           detector_epochs=1, output=str(tmp_path / "out"),
                           cache_dir=str(tmp_path / "cache"), plots=False, verbose=0, log=_quiet)
    recorded = json.loads((tmp_path / "out" / "settings.json").read_text())["cache_dir"]
    assert recorded == os.path.join("..", "cache") == tables["settings"]["cache_dir"]
    assert str(tmp_path) not in (tmp_path / "out" / "settings.json").read_text()


def test_cli_prints_each_warning_once_after_the_tables(tmp_path, capsys, monkeypatch):
    from advdetect import benchmark

    real = benchmark.run_benchmark

    def warning_run(**kwargs):
        import warnings
        for _ in range(3):
            warnings.warn("few clean images for the threshold", UserWarning)
        return real(**kwargs)

    monkeypatch.setattr("advdetect.cli.run_benchmark", warning_run)
    assert main(["benchmark", "--dataset", "digits", "--attacks", "fgsm:0.3", "--detectors",
                 "magnet", "--n-train", "150", "--n-test", "40", "--n-attack", "20",
                 "--victim-epochs", "2", "--detector-epochs", "1", "--output", str(tmp_path),
                 "--no-plots", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("few clean images for the threshold") == 1
    assert printed.index("ROC-AUC") < printed.index("warning(s) during the run")
def test_victim_n_train_trains_the_victim_on_more_images_than_the_detectors():
    from advdetect.benchmark import prepare_benchmark, victim_settings

    quiet = dict(n_train=200, n_test=50, n_attack=5, victim_epochs=1, log=lambda *_: None)
    base = prepare_benchmark("digits", [], **quiet)
    more = prepare_benchmark("digits", [], victim_n_train=0, **quiet)
    # The detectors' training images and the test images stay the same ...
    np.testing.assert_array_equal(base["X_train"], more["X_train"])
    np.testing.assert_array_equal(base["X_test"], more["X_test"])
    # ... while the victim learns from the whole training part (0 = all of it).
    assert base["victim_n_train"] == 200 and more["victim_n_train"] > 1000
    assert victim_settings("fashion", "brief") == dict(victim_n_train=0, victim_epochs=1)
    with pytest.raises(ValueError, match="victim"):
        victim_settings("subset", "careful")
