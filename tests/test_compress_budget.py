"""kdistill compress: the budget and the search space are parsed and refused up front, with what is allowed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest

from kdistill.compress.budget import Budget, Limit, parse_budget, parse_limit
from kdistill.compress.search import (
    CANDIDATE,
    RUNG,
    SearchStudies,
    crowding_distances,
    next_promotion,
    pareto_ranks,
    promotion_order,
)
from kdistill.compress.space import FAMILIES, default_space_path, load_space, parse_space
from kdistill.contracts import ConfigError
from kdistill.methods import METHODS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("params=0.1x", Limit("params", 0.1, True)),
        ("params=100k", Limit("params", 100_000, False)),
        ("params=1.5M", Limit("params", 1_500_000, False)),
        ("flops=20M", Limit("flops", 20e6, False)),
        ("size=2MB", Limit("size", 2e6, False)),
        ("size=1.5MiB", Limit("size", 1.5 * 2**20, False)),
        ("latency=0.2x", Limit("latency", 0.2, True)),
        ("latency=300us", Limit("latency", 0.3, False)),
        ("latency=0.5", Limit("latency", 0.5, False)),
        ("latency=2s", Limit("latency", 2000, False)),
        ("throughput=5000", Limit("throughput", 5000, False, 64)),
        ("throughput=2x@128", Limit("throughput", 2, True, 128)),
    ],
)
def test_limits_parse_to_the_quantity_s_unit(text, expected):
    limit = parse_limit(text)
    assert limit.quantity == expected.quantity and limit.relative == expected.relative
    assert limit.batch == expected.batch and math.isclose(limit.value, expected.value)


@pytest.mark.parametrize(
    "items, message",
    [
        (["speed=0.2x"], "unknown quantity 'speed'; valid: params, flops, size, latency, throughput"),
        (["params"], "expected QUANTITY=VALUE"),
        (["params=ten"], "is not a number"),
        (["latency=3parsecs"], "unknown unit 'parsecs'"),
        (["params=0x"], "must be positive"),
        (["latency=0.2x@8"], "only throughput takes a batch"),
        (["throughput=2x@0"], "positive integer"),
        (["params=0.1x,params=50k"], "params limited twice"),
        ([], "no budget: give at least one --budget"),
    ],
)
def test_malformed_budgets_are_refused_with_what_is_allowed(items, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_budget(items)


def test_relative_limits_read_the_teacher_and_interleaved_ratios():
    budget = parse_budget(["params=0.1x,latency=0.2x", "throughput=2x@64"])
    teacher = {"params": 1_000_000.0, "latency": 1.0, "throughput@64": 100.0}
    good = {"params": 90_000.0, "latency": 0.5, "latency_ratio": 0.15, "throughput@64": 250.0}
    assert budget.misses(good, teacher) == []  # the latency ratio measured against the teacher decides, not 0.5/1.0
    bad = {"params": 120_000.0, "latency": 0.1, "latency_ratio": 0.3, "throughput@64": 150.0}
    missed = budget.misses(bad, teacher)
    assert [m.split()[0] for m in missed] == ["params", "latency", "throughput@64"]
    assert "0.3x the teacher's" in missed[1] and "throughput at batch 64 >= 2x" in missed[2]
    assert budget.primary.quantity == "latency" and budget.relative and budget.timed
    absolute = Budget((Limit("params", 50_000, False),))
    assert absolute.misses({"params": 50_000.0}, None) == [] and absolute.primary.quantity == "params"
    with pytest.raises(ConfigError, match="teacher's params was not measured"):
        parse_budget(["params=0.1x"]).misses({"params": 1.0}, {})


def test_the_shipped_spaces_load_and_name_only_known_families_and_methods():
    for shape in ((1, 28, 28), (3, 32, 32)):
        space = load_space(default_space_path(shape), METHODS.names())
        assert set(space.families) <= set(FAMILIES) and space.architectures()
        assert space.rungs(20)[0] == space.min_epochs and all(r < 20 for r in space.rungs(20))
    small = load_space(default_space_path((1, 8, 8)))
    assert small.rungs(20) == [2, 6, 18] and small.rungs(2) == [2]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"families": {"vit": {"depth": [2]}}}, "unknown family 'vit'; valid: mlp, cnn"),
        ({"families": {"mlp": {"width": [8]}}}, "family 'mlp' takes the knobs layers, width; missing: layers"),
        ({"families": {"mlp": {"layers": [1], "width": [8], "depth": [2]}}}, "unknown: depth"),
        ({"families": {"mlp": {"layers": [], "width": [8]}}}, "an empty list of values"),
        ({"families": {"mlp": {"layers": "int:3:1", "width": [8]}}}, "neither a list of values nor a range"),
        ({"families": {"mlp": {"layers": [1], "width": [8]}}, "methods": {"kdd": {}}}, "unknown method 'kdd'"),
        ({"families": {"mlp": {"layers": [1], "width": [8]}}, "search": {"eta": 1}}, "eta an int >= 2"),
        ({"famlies": {}}, "unknown section"),
        ({}, "no families"),
    ],
)
def test_a_space_with_an_unknown_family_knob_method_or_range_is_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(raw, "space.yaml", METHODS.names())


def test_a_space_grid_lists_every_architecture_and_ranges_by_their_ends():
    space = parse_space({"families": {"mlp": {"layers": "int:1:2", "width": [8, 16]}, "cnn": {
        "stages": [2], "width": [4], "hidden": "uniform:8:16", "head": ["avg"]}}})  # fmt: skip
    grid = space.architectures()
    assert ("mlp", {"layers": 2, "width": 16}) in grid and len(grid) == 2 * 2 + 2
    assert FAMILIES["mlp"].build({"layers": 2, "width": 16}) == ("mlp", {"hidden": [16, 16]})


def test_the_patch_cnn_family_builds_the_cnn_with_a_patchify_first_stage():
    name, kwargs = FAMILIES["patch_cnn"].build({"patch": 4, "stages": 2, "width": 8, "hidden": 32})
    assert name == "cnn" and kwargs["patch"] == 4 and kwargs["channels"] == [8, 16] and kwargs["head"] == "flatten"
    space = parse_space({"families": {"patch_cnn": {"patch": [2, 7], "stages": [1], "width": [8], "hidden": [0]}}})
    assert [knobs["patch"] for _, knobs in space.architectures()] == [2, 7]


def test_pareto_ranks_sort_accuracy_up_and_cost_down_into_layers():
    points = [(90.0, 0.5), (89.0, 0.2), (88.0, 0.3), (85.0, 0.1), (91.0, 0.9), (80.0, 0.95), (89.0, 0.2)]
    # (88, 0.3) is beaten by (89, 0.2); (80, 0.95) by everything cheaper and better; equal points tie on the front
    assert pareto_ranks(points) == [0, 0, 1, 0, 0, 2, 0]


def test_promotion_takes_the_cheap_end_of_the_trade_off_not_only_the_most_accurate():
    studies = SearchStudies(*(optuna.create_study(directions=["maximize", "minimize"]) for _ in range(2)))
    study = studies.sampling
    rung0 = [(91.0, 0.9), (90.5, 0.8), (90.2, 0.85), (88.0, 0.1), (86.0, 0.12), (85.0, 0.5)]
    for number, (accuracy, cost) in enumerate(rung0):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number}, distributions={"x": optuna.distributions.IntDistribution(0, 99)},
                values=[accuracy, cost], user_attrs={CANDIDATE: f"c{number}", RUNG: 0},
            )
        )  # fmt: skip
    spec = SimpleNamespace(space=SimpleNamespace(eta=3))  # top 6 // 3 = 2 promoted
    promoted = []
    for _ in range(2):
        params, attrs = next_promotion(spec, studies, [2, 6, 18])
        promoted.append(attrs[CANDIDATE])
        studies.promotions.enqueue_trial(params, user_attrs=attrs)
    # the front is c0, c1, c3; its ends go first: the most accurate (c0) and the cheapest (c3), not the runner-up c1
    assert sorted(promoted) == ["c0", "c3"] and next_promotion(spec, studies, [2, 6, 18]) is None
    assert pareto_ranks(rung0) == [0, 0, 1, 0, 1, 2]  # (85, 0.5) is beaten by (86, 0.12)
    assert promotion_order(rung0)[:3] in ([0, 3, 1], [3, 0, 1])


def test_crowding_distance_is_infinite_at_the_ends_and_the_normalised_gap_inside():
    distances = crowding_distances([(80.0, 0.1), (85.0, 0.2), (90.0, 0.6)])
    assert distances[0] == distances[2] == math.inf
    assert distances[1] == pytest.approx((90 - 80) / 10 + (0.6 - 0.1) / 0.5)
