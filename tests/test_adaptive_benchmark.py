"""The adaptive benchmark's front ends and its floor detectors."""

import numpy as np
import pandas as pd
import pytest
import torch

from advdetect import MaxSoftmaxDetector, benchmark, cli


def test_cli_adaptive_dispatches(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake(dataset, detectors, **kwargs):
        seen.update(kwargs, dataset=dataset, detectors=detectors)
        rows = [dict(dataset=dataset, detector="MagNet", fpr=0.05, norm="linf", eps=0.3,
                     nonadaptive_bypass=0.25, adaptive_bypass=0.75, mean_l2=2.0,
                     mean_linf=0.3)]
        return dict(results=pd.DataFrame(rows), settings={"dataset": dataset})

    monkeypatch.setattr(cli, "run_adaptive_benchmark", fake)
    code = cli.main(["benchmark", "--adaptive", "--dataset", "fashion", "--detectors",
                     "magnet", "--n-attack", "1000", "--output", str(tmp_path)])
    assert code == 0
    assert seen["dataset"] == "fashion" and seen["detectors"] == ["magnet"]
    assert seen["n_attack"] == 200          # capped: the adaptive attack is costly
    assert "0.25 → 0.75" in capsys.readouterr().out


def test_floor_and_no_detector_are_differentiable(digits_small, small_victim):
    X, _ = digits_small
    floor = MaxSoftmaxDetector(small_victim, device="cpu").fit(X[:200])
    floor.calibrate(X[200:], fpr=0.05)
    assert np.mean(floor.predict(X[200:]) == -1) <= 0.05
    x = torch.from_numpy(X[:10].copy()).requires_grad_(True)
    out = floor.to_torch()(x)
    np.testing.assert_allclose(out.detach().numpy(), floor.decision_function(X[:10]),
                               atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    none = benchmark._NoDetector().calibrate(X, fpr=0.05)
    assert (none.predict(X[:5]) == 1).all()
    assert (none.to_torch()(torch.from_numpy(X[:5])) > 0).all()
