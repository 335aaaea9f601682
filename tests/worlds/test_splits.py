"""The caption splits: disjoint, at least 10% held out for test, compositional (every part of a
held-out combination is trained on), and the trainers' draws stay in the training split."""

from __future__ import annotations

import numpy as np
import pytest

from worldserve.worlds import COLORS, GROUNDS, KINDS, caption_of, parse_caption
from worldserve.worlds.splits import (
    SPLITS,
    TEST_RULES,
    VAL_RULES,
    all_specs,
    check_split,
    random_spec_in,
    split_of,
    split_specs,
)


def test_the_grammar_has_2028_captions_and_the_splits_partition_them() -> None:
    specs = all_specs()
    assert len({caption_of(s) for s in specs}) == len(specs) == 2028
    parts = {s: split_specs(s) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == 2028
    assert len(parts["test"]) >= 0.10 * 2028
    assert len(parts["val"]) > 0
    assert not {caption_of(s) for s in parts["test"]} & {caption_of(s) for s in parts["train"]}


@pytest.mark.parametrize(
    ("caption", "split"),
    [
        ("a pink box on the left, snow", "test"),
        ("a pink box on the left, grass", "train"),  # pink boxes are trained on ...
        ("a red door on the right, snow", "train"),  # ... and so is snow
        ("a cyan door on the right, grass, night", "test"),
        ("a cyan door on the left, grass, night", "train"),
        ("a yellow box on the left, sand, rain", "test"),
        ("a yellow box on the left, sand", "train"),
        ("a purple door on the left, grass", "val"),
        ("a blue box on the left, snow, rain", "val"),
        ("a pink box on the left, a purple door on the right, snow", "test"),  # test wins over val
    ],
)
def test_split_of_reads_the_combination_not_the_parts(caption: str, split: str) -> None:
    assert split_of(parse_caption(caption)) == split


def test_every_part_of_a_held_out_combination_is_in_training_captions() -> None:
    train = split_specs("train")
    colours = {o.color for s in train for o in s.objects}
    kinds = {o.kind for s in train for o in s.objects}
    assert colours == set(COLORS) and kinds == set(KINDS)
    assert {s.ground for s in train} == set(GROUNDS)
    pairs = {(o.color, o.kind, s.ground) for s in train for o in s.objects}
    assert ("pink", "box", "snow") not in pairs  # the combination itself never is
    assert ("pink", "box", "grass") in pairs and ("red", "box", "snow") in pairs
    assert len(TEST_RULES) >= 3 and len(VAL_RULES) >= 2


def test_random_spec_in_draws_only_its_split_and_unknown_splits_name_the_value() -> None:
    rng = np.random.default_rng(0)
    for split in SPLITS:
        assert all(split_of(random_spec_in(rng, split)) == split for _ in range(200))
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        check_split("holdout")


def test_the_trainers_draw_training_captions_only() -> None:
    from worldserve.train.data import caption_batch, make_trajectories
    from worldserve.train.image_trainer import training_batch

    caps = make_trajectories(range(40), 1).captions
    caps += caption_batch(np.random.default_rng(1), 100)[0]
    caps += training_batch(0, 3, 100, 0.5)[0]  # half of them reworded: parse them back
    assert len(caps) == 240 and {split_of(parse_caption(c)) for c in caps} == {"train"}
