"""Frozen-feature evaluation math: weighted kNN by hand, the linear probe, key-hash splits."""

import pytest
import torch

from pipelines.eval_sets import HOLDOUT, key_fraction
from pipelines.evaluate import knn_top1, linear_probe_top1, weighted_knn_predict

torch.set_num_threads(1)


def test_weighted_knn_votes_by_exp_similarity_over_t():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit vectors
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.96, 0.28]])  # cos = 0.96 to #0, 0.936 to #1, 0.28 to #2
    # k=2: class 0 gets exp(0.96/T), class 1 exp(0.936/T): class 0 wins at any T
    assert weighted_knn_predict(bank, labels, query, 2, k=2, temperature=0.1).tolist() == [0]
    # k=3, T=1: class 1 gets e^0.936 + e^0.28 = 3.87 > e^0.96 = 2.61
    assert weighted_knn_predict(bank, labels, query, 2, k=3, temperature=1.0).tolist() == [1]
    # scaling features changes nothing (cosine)
    assert knn_top1(5 * bank, labels, 3 * query, torch.tensor([1]), 2, 3, 1.0) == 1.0


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y_train, y_test = torch.arange(90) % 3, torch.arange(30) % 3
    x_train = centres[y_train] + torch.randn(90, 16, generator=g) * 0.3
    x_test = centres[y_test] + torch.randn(30, 16, generator=g) * 0.3
    assert linear_probe_top1(x_train, y_train, x_test, y_test, 3, epochs=20, batch_size=32) == 1.0
    # labels unrelated to the features: near chance, not perfect
    shuffled = y_train[torch.randperm(90, generator=g)]
    assert linear_probe_top1(x_train, shuffled, x_test, y_test, 3, epochs=20) < 0.7


def test_linear_probe_needs_data():
    with pytest.raises(ValueError, match="labeled train and test"):
        linear_probe_top1(torch.zeros(0, 4), torch.zeros(0), torch.zeros(2, 4), torch.zeros(2), 2)


def test_key_hash_split_is_stable_and_about_the_holdout():
    keys = [f"class_{i % 10}/img_{i}.jpg" for i in range(5000)]
    fractions = [key_fraction(k) for k in keys]
    assert fractions == [key_fraction(k) for k in keys]  # a pure function of the key
    held = sum(f < HOLDOUT for f in fractions) / len(keys)
    assert 0.08 < held < 0.12
