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
                                                 "DAFAR (no C)"]),
    ("bench_detectors.py", ["fgsm:0.3"], ["ROC-AUC", "Published figures", "Timing"]),
])
def test_benchmark_script_smoke(script, attacks, expect, tmp_path):
    args = [sys.executable, str(BENCH / script), "--quick", "--dataset", "digits",
            "--cache-dir", "", "--output", str(tmp_path), "--attacks", *attacks]
    if script == "bench_detectors.py":
        args += ["--detectors", "cmag", "squeeze", "--no-plots"]
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("settings: {")
    for text in expect:
        assert text in proc.stdout, text
    assert (tmp_path / "report.md").read_text().strip()
