"""Few labels, many unlabelled images (data.labelled): which samples keep their label, how the losses treat the
others, which methods take them, and a digits run where the distilled student beats the student alone."""

from __future__ import annotations

import pytest
import torch

from kdistill.api import fit
from kdistill.config import load_config
from kdistill.contracts import ConfigError
from kdistill.data import build_data
from kdistill.engine.builders import preflight
from kdistill.methods.ce import cross_entropy_loss

from helpers import digits_overrides

QUIET = {"log": lambda _: None}


def test_the_labelled_samples_are_the_ones_train_subset_takes(tmp_path):
    partly = load_config(overrides=digits_overrides(tmp_path, "partly", "data.labelled=100", "data.stream_seed=3"))
    subset = load_config(overrides=digits_overrides(tmp_path, "subset", "data.train_subset=100", "data.stream_seed=3"))
    partly_data, subset_data = build_data(partly.data, seed=0), build_data(subset.data, seed=0)
    items = [partly_data.train[i] for i in range(len(partly_data.train))]
    labelled = [(inputs, target) for inputs, target, _ in items if target >= 0]
    assert len(items) > 1000 and len(labelled) == 100
    assert sum(target == -1 for _, target, _ in items) == len(items) - 100
    subset_items = [subset_data.train[i][:2] for i in range(len(subset_data.train))]
    assert all(torch.equal(a, b) and ta == tb for (a, ta), (b, tb) in zip(labelled, subset_items))


def test_cross_entropy_leaves_unlabelled_samples_out():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    targets = torch.tensor([0, -1, 1])
    by_hand = (-torch.log_softmax(logits[0], 0)[0] - torch.log_softmax(logits[2], 0)[1]) / 3  # unlabelled: 0
    assert torch.allclose(cross_entropy_loss(logits, targets), by_hand)
    none = cross_entropy_loss(logits.requires_grad_(), torch.full((3,), -1))
    assert none.item() == 0.0
    none.backward()  # still part of the graph: a batch without labels trains nothing, but does not break the step
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize(
    "method, message", [("ce", "data.train_subset=100"), ("fitnet", "needs a label for every sample")]
)
def test_methods_that_need_every_label_are_refused(tmp_path, method, message):
    overrides = digits_overrides(tmp_path, "x", "data.labelled=100", f"method.name={method}")
    if method != "ce":
        overrides.append("teacher.name=mlp")
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(overrides=overrides))


def test_distilling_on_the_unlabelled_images_beats_the_student_alone_on_the_labelled_ones(tmp_path, digits_teacher):
    common = ["data.stream_seed=0", "train.epochs=6"]
    alone_overrides = digits_overrides(tmp_path, "alone", "data.train_subset=50", "data.batch_size=16", *common)
    alone = fit(load_config(overrides=alone_overrides), **QUIET)  # 3 steps an epoch: give it more epochs too
    alone_longer = fit(load_config(overrides=[*alone_overrides, "name=alone60", "train.epochs=60"]), **QUIET)
    distilled = fit(
        load_config(
            overrides=digits_overrides(
                tmp_path, "kd", "data.labelled=50", "method.name=kd", f"teacher.checkpoint={digits_teacher}", *common
            )
        ),
        **QUIET,
    )
    best_alone = max(alone["final_test_acc"], alone_longer["final_test_acc"])
    assert distilled["final_test_acc"] > best_alone + 5.0, (best_alone, distilled["final_test_acc"])
