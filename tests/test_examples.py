"""Every example in examples/ runs, at a tiny size (ADVDETECT_EXAMPLE_QUICK=1)."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script, tmp_path):
    env = dict(os.environ, ADVDETECT_EXAMPLE_QUICK="1", MPLBACKEND="Agg",
               PYTHONPATH=str(script.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One torch thread per worker, as in conftest.py: two examples with two
        # threads each on two cores spend most of their time waiting for each
        # other (measured: 70 s against 15 s for one example under load).
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "an example should print what it shows"


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"plot_quickstart", "plot_frozen_pretrained", "plot_grid_search",
            "plot_reconstructions", "plot_purification_pipeline"} <= names
