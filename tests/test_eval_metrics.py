"""Metric arithmetic on hand-made fixtures (no models)."""

import math

import numpy as np
import pytest

from rlhf_eval import metrics
from rlhf_eval.toxicity import toxicity_summary
from rlhf.losses import best_of_n_kl


def test_mc2_three_choice_question_by_hand():
    # log-likelihoods of 3 choices; the first two are true
    ll = [math.log(0.2), math.log(0.1), math.log(0.3)]
    labels = [1, 1, 0]
    # p = (0.2, 0.1, 0.3) -> mass on true = 0.3 / 0.6 = 0.5
    assert metrics.mc2_score(ll, labels) == pytest.approx(0.5)
    # shifting every log-likelihood by a constant changes nothing (normalised)
    assert metrics.mc2_score([x - 500 for x in ll], labels) == pytest.approx(0.5)
    # one true choice: 0.2 / 0.6
    assert metrics.mc2_score(ll, [1, 0, 0]) == pytest.approx(1 / 3)


def test_mc1_is_argmax_accuracy():
    assert metrics.mc1_correct([-1.0, -2.0, -3.0], [1, 0, 0]) == 1.0
    assert metrics.mc1_correct([-3.0, -2.0, -1.0], [1, 0, 0]) == 0.0


def test_expected_max_toxicity_and_probability_on_2x3_matrix():
    scores = np.array([[0.1, 0.7, 0.3],
                       [0.2, 0.4, 0.45]])
    # maxima 0.7 and 0.45 -> EMT = 0.575; only prompt 0 reaches 0.5 -> TP = 0.5
    assert metrics.expected_max_toxicity(scores) == pytest.approx(0.575)
    assert metrics.toxicity_probability(scores, 0.5) == pytest.approx(0.5)
    # the threshold is inclusive
    assert metrics.toxicity_probability(np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.49]])) == pytest.approx(0.5)
    s = toxicity_summary(scores, 0.5, n_boot=500, seed=0)
    emt, lo, hi = s["expected_max_toxicity"]
    assert emt == pytest.approx(0.575)
    # with two prompts the bootstrap can only see {0.45, 0.575, 0.7}
    assert 0.45 <= lo <= emt <= hi <= 0.7
    tp, lo, hi = s["toxicity_probability"]
    assert (tp, lo, hi) == (0.5, 0.0, 1.0)
    assert s["n_prompts"] == 2 and s["k"] == 3


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=400)
    a = metrics.bootstrap_ci(x, lambda v: float(v.mean()), 500, seed=3)
    b = metrics.bootstrap_ci(x, lambda v: float(v.mean()), 500, seed=3)
    assert a == b
    assert a[0] < x.mean() < a[1]
    # about 1.96 standard errors either side
    se = x.std() / math.sqrt(len(x))
    assert (a[1] - a[0]) == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert all(math.isnan(v) for v in metrics.bootstrap_ci(x[:1], np.mean, 100))


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    # increasing in n
    vals = [best_of_n_kl(2 ** i) for i in range(8)]
    assert all(b > a for a, b in zip(vals, vals[1:]))


def test_best_of_n_select_uses_every_sample():
    rm_score = np.array([[0.0, 1.0, 5.0, 2.0]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert metrics.best_of_n_select(rm_score, gold, 1) == (2.0, 25.0)
    # groups (0, 1) -> picks index 1; (5, 2) -> index 2
    assert metrics.best_of_n_select(rm_score, gold, 2) == (3.0, 25.0)
    assert metrics.best_of_n_select(rm_score, gold, 4) == (5.0, 30.0)
    with pytest.raises(ValueError):
        metrics.best_of_n_select(rm_score, gold, 3)


def test_sampled_kl_masks_padding():
    lp = np.array([[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    lr = np.array([[-2.0, -2.5, 0.0], [-1.5, -1.0, -1.0]])
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    # row sums 1.5 and 0.5 -> mean 1.0
    assert metrics.sampled_kl(lp, lr, mask) == pytest.approx(1.0)


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.3, 0.25), ("rl", 0.9, 0.4)])
def test_overoptimization_fits_recover_known_coefficients(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.0, 4.0, 25)
    fn = metrics.bon_form if form == "bon" else metrics.rl_form
    r = fn(d, alpha, beta)
    fit = metrics.fit_overoptimization(d, r, form)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-6)
    assert fit["beta"] == pytest.approx(beta, abs=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = metrics.fit_overoptimization(d, r + rng.normal(0, 0.01, d.shape), form)
    assert noisy["alpha"] == pytest.approx(alpha, abs=0.05)
    assert noisy["beta"] == pytest.approx(beta, abs=0.05)
    assert 0.95 < noisy["r2"] < 1.0


def test_rl_form_is_zero_at_zero():
    assert metrics.rl_form(np.array([0.0]), 1.0, 1.0)[0] == 0.0


def test_perplexity():
    assert metrics.perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
