"""famkd.registry.closest: the "did you mean" hint, by meaning first, then by spelling."""

from __future__ import annotations

import pytest

from famkd.models import list_models
from famkd.registry import Registry, closest

ZOO = list_models()  # the model zoo's names
METHODS = ("at", "crd", "dkd", "fam_kd", "fam_kd_l2l", "fam_reviewkd", "fitnet", "kd", "reviewkd", "vanilla")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet21", "resnet20"),  # same family, nearest depth (by spelling: resnet32)
        ("resnet111", "resnet110"),
        ("resnet26", "resnet20"),  # resnet20 and resnet32 are both 6 away: the smaller
        ("resnet1000", "resnet110"),
        ("wrn_16_3", "wrn_16_2"),  # the stem is everything before the trailing number
        ("vgg10", "vgg11"),
        ("vgg9", "vgg8"),
    ],
)
def test_a_numbered_name_suggests_the_same_family_with_the_nearest_number(name, expected):
    assert closest(name, ZOO) == expected


def test_a_numbered_name_of_no_known_family_falls_back_to_spelling():
    assert closest("resnet8x5", ZOO) == "resnet8x4"  # stem "resnet8x": no choice has it
    assert closest("ShuffleV3", ZOO) == "ShuffleV2"


def test_a_synonym_suggests_the_choice_it_means():
    assert closest("gpu", ("cpu", "cuda", "auto")) == "cuda"
    assert closest("GPU", ("cpu", "cuda", "auto")) == "cuda"
    assert closest("fp32", ("off", "bf16", "fp16")) == "off"


def test_a_synonym_is_used_only_when_its_choice_is_offered():
    assert closest("gpu", ("cpu", "mps")) == "cpu"  # no cuda here: spelling decides


def test_a_typo_without_digits_is_matched_by_spelling():
    assert closest("fam_kdd", METHODS) == "fam_kd"
    assert closest("resnet8x", ZOO) == "resnet8x4"
    assert closest("vanila", METHODS) == "vanilla"


def test_nothing_close_gives_none():
    assert closest("transformer", METHODS) is None
    assert closest("xyz", ("cpu", "cuda", "auto")) is None
    assert closest("anything", ()) is None


def test_the_registry_error_names_the_suggestion():
    registry: Registry[int] = Registry("model")
    for index, name in enumerate(ZOO):
        registry.register(name)(index)
    with pytest.raises(KeyError, match="unknown model 'resnet21' \\(did you mean 'resnet20'\\?\\)"):
        registry.get("resnet21")
