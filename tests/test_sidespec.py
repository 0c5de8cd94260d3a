"""The side grammar (hub/sidespec.py), read the same way by the CLI, the service, request checks and expand_side."""

from __future__ import annotations

import pytest

from hubcompare.comparisons.requests import ComparisonRequest
from hubcompare.errors import InvalidRequestError
from hubcompare.hub.sidespec import SideItem, is_local_folder, names_many_models, side_items
from hubcompare.populations.sides import expand_side
from hubcompare.service.checks import names_a_side


def test_items_of_a_side_in_order_with_their_schemes():
    assert side_items(" population:zoo + hf-hub:a/b@main+runs/x ") == [
        SideItem("population:zoo", "population", "zoo"), SideItem("hf-hub:a/b@main"), SideItem("runs/x")]
    assert side_items("registry:depth=8,width=2") == [SideItem("registry:depth=8,width=2", "registry", "depth=8,width=2")]
    assert side_items("@list.txt") == [SideItem("@list.txt")]  # the file lists the items
    assert side_items("a++b") == [SideItem("a"), SideItem(""), SideItem("b")]  # kept for the caller to refuse
    assert side_items("nope:x") == [SideItem("nope:x")]  # not a side scheme: a model reference


def test_a_folder_is_one_model_plus_sign_and_all(tmp_path):
    folder = tmp_path / "run+1"
    folder.mkdir()
    assert side_items(str(folder), is_local_folder) == [SideItem(str(folder))]
    assert not names_many_models(str(folder), is_local_folder)
    assert names_many_models(str(folder))  # a caller that opens no paths (the service) reads two models
    assert expand_side(str(folder)) == [str(folder)]


@pytest.mark.parametrize("spec, many", [("runs/a", False), ("hf-hub:a/b", False), ("a+b", True), ("@f", True),
                                        ("population:zoo", True), ("collection:a/b", True), ("hf-tag:x", True)])
def test_every_front_end_agrees_on_what_names_many_models(spec, many):
    assert names_many_models(spec) is many
    assert names_a_side(spec) is many  # the service


def test_requests_check_each_item_of_a_side():
    ok = ComparisonRequest.from_json({"kind": "agreement", "refs": ["population:a+hf-hub:o/n", "population:b"]},
                                     allow_paths=False)
    assert ok.refs == ("population:a+hf-hub:o/n", "population:b")
    with pytest.raises(InvalidRequestError, match="collection slug"):
        ComparisonRequest.from_json({"kind": "agreement", "refs": ["population:a+collection:../x", "population:b"]},
                                    allow_paths=False)
    with pytest.raises(InvalidRequestError, match="names a file on the server"):
        ComparisonRequest.from_json({"kind": "agreement", "refs": ["@/etc/passwd", "population:b"]}, allow_paths=False)
