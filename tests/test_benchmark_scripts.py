"""The scripts in benchmarks/ run end to end (a smoke run on digits, tiny sizes)."""

import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, attacks, expect", [
    ("bench_cmag.py", ["fgsm:0.3"], ["Tables 6-7", "CMAG (paper)", "Against the targets"]),
    ("bench_dafar.py", ["fgsm:0.3", "pgd:0.3"], ["Table 4", "Table 5", "Fig. 9", "Fig. 10",
                                                 "DAFAR (no C)", "Threshold rules"]),
    ("bench_detectors.py", ["fgsm:0.3"], ["ROC-AUC", "Published figures", "Timing"]),
    ("bench_attacks.py", ["fgsm:0.3", "cw:0"], ["seconds_per_1000", "CW-L2 target"]),
    ("bench_transfer.py", ["fgsm:0.1", "fgsm:0.3"], ["Binary (input, fgsm:0.1)", "Mahalanobis",
                                                     "ROC-AUC", "Cost"]),
    ("bench_purifiers.py", ["fgsm:0.3", "pgd:0.3"], ["Defense-GAN G(z*)", "binary filter",
                                                     "The paper's Fig. 9", "ROC-AUC", "Timing"]),
])
def test_benchmark_script_smoke(script, attacks, expect, tmp_path):
    args = [sys.executable, str(BENCH / script), "--quick", "--dataset", "digits",
            "--cache-dir", "", "--output", str(tmp_path), "--attacks", *attacks]
    if script == "bench_detectors.py":
        args += ["--detectors", "cmag", "squeeze", "--no-plots"]
    if script == "bench_purifiers.py":
        args += ["--detection-attacks", "fgsm:0.3"]
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("settings: {")
    for text in expect:
        assert text in proc.stdout, text
    report = {"bench_attacks.py": "attacks.md", "bench_transfer.py": "transfer.md",
              "bench_purifiers.py": "purifiers.md"}.get(script, "report.md")
    assert "## Settings" in (tmp_path / report).read_text()


def test_victims_script_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "bench_victims.py"), "--quick",
                           "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("settings: {")
    import pandas as pd
    table = pd.read_csv(tmp_path / "victims.csv")
    assert table["source"].tolist() == ["digits", "digits"]
    assert table["recipe"].tolist() == ["benchmark", "plain"]
    assert table["test_accuracy"].between(0, 1).all() and (table["n_test"] > 0).all()
    assert "## Victim accuracy" in (tmp_path / "victims.md").read_text()


def test_architectures_script_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "bench_architectures.py"),
                           "--image-size", "32", "--n-images", "4", "--width", "4",
                           "--n-classes", "3", "--runs", "dafar", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("settings: {")
    report = (tmp_path / "report.md").read_text()
    assert "## Settings" in report and "feedback_decoder_ (FeedbackDecoder)" in report
    assert "layer3.1 (16, 2, 2)" in report and "| True |" in report


def test_scripts_and_examples_import_public_names_only():
    """ARCHITECTURE's rule 5: benchmarks/ and examples/ use advdetect's public names only."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    private = []
    for path in sorted((root / "benchmarks").glob("*.py")) + sorted(
            (root / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("advdetect"):
                modules = node.module.split(".")
                names = [a.name for a in node.names]
                private += [f"{path.name}: from {node.module} import {n}" for n in names
                            if n.startswith("_")]
                private += [f"{path.name}: {node.module}" for m in modules if m.startswith("_")]
            elif isinstance(node, ast.Import):
                private += [f"{path.name}: import {a.name}" for a in node.names
                            if a.name.startswith("advdetect") and any(
                                m.startswith("_") for m in a.name.split("."))]
    assert private == []
