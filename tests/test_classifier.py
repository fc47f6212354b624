import torch

from trust.world.classifier import HEADS, ClassifierTrainConfig, heldout_accuracy, labelled_batch, train_classifier
from trust.world.scenes import random_scene, render, to_model_range
from trust.utils.seeding import numpy_rng


def test_shipped_classifier_heldout_accuracy(shipped_classifier):
    acc = heldout_accuracy(shipped_classifier, seed=424242, n_batches=3)
    assert all(v >= 0.98 for v in acc.values()), acc


def test_shipped_classifier_says_none_for_noise_and_empty_backgrounds(shipped_classifier):
    cfg = ClassifierTrainConfig(p_noise=1.0, batch_size=64)
    noise, _ = labelled_batch(99, 0, cfg)
    pred = shipped_classifier.predict(noise)
    assert sum(p == "none" for p in pred["shape"]) >= 0.95 * 64
    rng = numpy_rng(5)
    empty = torch.from_numpy(to_model_range(__import__("numpy").stack([render(random_scene(rng, empty=True), 16) for _ in range(32)])))
    pred = shipped_classifier.predict(empty)
    assert all(p == "none" for p in pred["shape"]) and all(p == "none" for p in pred["colour"])


def test_concept_probability_is_differentiable(shipped_classifier):
    x = torch.zeros(2, 3, 16, 16, requires_grad=True)
    p = shipped_classifier.concept_probability(x, shape="circle", colour="red")
    p.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()


def test_short_classifier_training_learns(tmp_path):
    from trust.world.classifier import ConceptClassifier

    model, losses = train_classifier(ClassifierTrainConfig(steps=150, batch_size=64, width=16), progress=False)
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])
    model.save(tmp_path)
    loaded = ConceptClassifier.load(tmp_path)
    x, _ = labelled_batch(3, 0, ClassifierTrainConfig(batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(model(x).values(), loaded(x).values()))
    assert set(loaded(x)) == set(HEADS)
