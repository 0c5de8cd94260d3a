"""One contract, checked the same way for every registered comparison kind (``comparisons.kinds``): what a kind
declares in its :class:`KindSpec` is what the request checks, the service, the API schema, the store and the files do.

* hostile options: every value an option declares hostile is refused by the request with a typed error naming
  ``options.NAME`` (and the service refuses it too); an unknown option names the kind's options;
* the API schema: the request with every option at its example validates against ``GET /api/kinds``' schema and
  is a valid request; a value of the wrong JSON type is refused by both;
* asked twice: the second answer comes from the store (computing again fails the test) with the same files;
* files by role: every exported file plays a role the spec names, the document role is one JSON file per pair that
  the pull schema (``results/schemas.py``) accepts, and the figures are in the asked format;
* served: the service's result page and ``GET /api/results/{key}`` show the stored result, every file listed.

The models are the session's small digits checkpoint and copies of it (side kinds: members with their stored
predictions perturbed, as tests/test_population_store.py makes them).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from helpers import computed_anyway

from hubcompare.comparisons.kinds import kind_for, kind_names, spec_for, specs
from hubcompare.comparisons.requests import ComparisonRequest
from hubcompare.comparisons.run import export, files_of, run_request
from hubcompare.errors import InvalidRequestError, ServiceRequestError
from hubcompare.results.limits import PullLimits
from hubcompare.results.schemas import KIND_DOCUMENTS, check_document
from hubcompare.results.store import ResultStore
from hubcompare.service.api import request_schema
from hubcompare.service.checks import check_request
from hubcompare.service.config import ServiceConfig

KINDS = kind_names()


def _base(kind: str, options: dict | None = None) -> dict:
    """A request of ``kind`` as JSON that its spec allows: as few references as it takes, its fixed fields kept."""
    spec = spec_for(kind)
    ref = "population:digits" if spec.sides else "timm:resnet18"
    data = {"kind": kind, "refs": [ref] * spec.refs[0], "options": options or {}}
    if spec.sized:
        data["examples"] = 100
    return data


def test_every_kind_is_registered_once_with_a_document_and_a_figure():
    assert len(set(KINDS)) == len(KINDS) >= 9
    for spec in specs():
        assert spec.refs[0] >= 1 and spec.refs[1] >= spec.refs[0], spec.name
        assert {"document", "figure"} <= set(spec.files), spec.name
        assert kind_for(spec.name).spec is spec
    with pytest.raises(InvalidRequestError) as e:
        ComparisonRequest("no-such-kind", ("a",))
    assert e.value.field == "kind" and "cross-cka" in str(e.value)
    # a pulled result is checked against the shapes this version knows (results/schemas.py, below the kinds): one
    # for every registered kind, none for a kind that is not
    assert sorted(KIND_DOCUMENTS) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_options_are_refused_naming_the_option(kind):
    spec = spec_for(kind)
    config = ServiceConfig()
    for opt in spec.options:
        for bad in opt.hostile():
            with pytest.raises(InvalidRequestError) as e:
                ComparisonRequest.from_json(_base(kind, {opt.name: bad}))
            assert e.value.field.startswith(f"options.{opt.name}"), (opt.name, bad, e.value.field)
            assert f"options.{opt.name}" in str(e.value)
            with pytest.raises((InvalidRequestError, ServiceRequestError)):
                check_request(_base(kind, {opt.name: bad}), config)
    with pytest.raises(InvalidRequestError) as e:
        ComparisonRequest.from_json(_base(kind, {"no_such_option": 1}))
    assert e.value.field == "options.no_such_option"
    assert all(o.name in str(e.value) for o in spec.options) and (spec.options or "none" in str(e.value))


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_schema_and_the_request_agree(kind):
    spec = spec_for(kind)
    schema = request_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = _base(kind, {o.name: o.example() for o in spec.options})
    jsonschema.validate(good, schema)
    ComparisonRequest.from_json(good)
    for opt in spec.options:
        wrong = _base(kind, {opt.name: {"an": "object"}})  # no option takes an object
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
        with pytest.raises(InvalidRequestError):
            ComparisonRequest.from_json(wrong)
    too_many = _base(kind) | {"refs": ["timm:resnet18"] * (spec.refs[1] + 1)}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(too_many, schema)
    with pytest.raises(InvalidRequestError) as e:
        ComparisonRequest.from_json(too_many)
    assert e.value.field == "refs"
    for name, default in spec.fixed.items():  # a field that does not apply is refused, saying why
        other = {"split": "train", "layers": ["*"], "batch_size": 64, "passes": 2, "seed": 1, "examples": 64,
                 "labels": ["x"] * 2}[name]
        with pytest.raises(InvalidRequestError) as e:
            ComparisonRequest.from_json(_base(kind) | {name: other})
        assert e.value.field == name and spec.fixed_why in str(e.value)


def test_the_form_takes_each_kinds_arity_from_its_spec():
    from hubcompare.service.checks import form_request

    config = ServiceConfig()
    alone = form_request({"kind": "grounding", "model_a": "population:seeds", "examples": "100"}, config)
    assert alone.refs == ("population:seeds",)  # the control side is optional
    both = form_request({"kind": "grounding", "model_a": "population:seeds", "model_b": "population:shuffled",
                         "examples": "100", "measures": "rsa, rbf-cka(frac=0.5)"}, config)
    assert both.refs == ("population:seeds", "population:shuffled")
    assert both.options["measures"] == ["rsa", "rbf-cka(frac=0.5)"]
    assert form_request({"kind": "cka", "model_a": "timm:resnet18", "model_b": "ignored", "examples": "100"},
                        config).refs == ("timm:resnet18",)
    with pytest.raises(ServiceRequestError, match="model B is empty"):
        form_request({"kind": "agreement", "model_a": "population:seeds"}, config)
    sides = form_request({"kind": "cross-cka", "model_a": "population:a", "model_b": "population:b", "examples": "100"},
                         config)
    assert sides.kind == spec_for("cross-cka").many_sides_kind == "across-seeds"


# --- every kind run twice, on small digits models ------------------------------------------------------------------
def _perturb(folder: Path, seed: int) -> None:
    """Other stored predictions for a copy of the model (another member, as far as the population kinds go)."""
    from hubcompare.models.checkpoint import CONFIG_FILE
    from hubcompare.models.predictions import Predictions

    p = Predictions.load(folder / "predictions.safetensors")
    g = np.random.default_rng(seed)
    logits = p.logits.clone()
    rows = np.flatnonzero(g.random(len(p.ids)) < 0.2)
    logits[rows] = 0.0
    logits[rows, torch.from_numpy(g.integers(0, logits.shape[1], rows.size))] = 1.0
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["hubcompare"]["predictions"] = Predictions(logits, p.labels, p.ids, p.dataset).save(folder / "predictions.safetensors")
    (folder / CONFIG_FILE).write_text(json.dumps(config))


@pytest.fixture(scope="module")
def members(tmp_path_factory, trained_run) -> list[str]:
    root = tmp_path_factory.mktemp("contract-members")
    out = []
    for i in range(6):
        folder = shutil.copytree(trained_run, root / f"m{i}")
        _perturb(folder, 200 + i)
        out.append(str(folder))
    return out


def _request(kind: str, members: list[str]) -> ComparisonRequest:
    """A small request of ``kind`` (tens of digits examples): what the contract runs twice."""
    pass_settings = {"examples": 64, "batch_size": 32}
    one = {"refs": (members[0],)}
    sides = {"refs": ("+".join(members[:3]), "+".join(members[3:]))}
    by_kind = {
        "cross-cka": {"refs": tuple(members[:3]), **pass_settings},
        "compare": {"refs": tuple(members[:2]), **pass_settings, "options": {"measures": ["cka", "rsa"]}},
        "cka": one | pass_settings,
        "blocks": one | pass_settings | {"options": {"pc_examples": 64}},
        "agreement": sides | {"options": {"splits": 20, "permutations": 20}},
        "class-diff": sides | {"options": {"splits": 20}},
        "across-seeds": sides | pass_settings | {"options": {"pc_examples": 64}},
        "probes": one | {"examples": 64, "options": {"train_examples": 128, "max_iter": 20, "l2": [1e-3]}},
        "delete-blocks": one | {"examples": 64},
        "grounding": {"refs": ("+".join(members[:5]), members[5]), "examples": 64,
                      "options": {"measures": ["cka", "rsa"], "pc_steps": 2, "pc_layers": 1}},
    }
    if kind not in by_kind:
        pytest.fail(f"the contract has no small request for the kind {kind!r}: add one to _request")
    return ComparisonRequest(kind, **by_kind[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_asked_twice_comes_from_the_store_with_every_file_in_a_role(kind, members, tmp_path, monkeypatch):
    spec = spec_for(kind)
    store = ResultStore(tmp_path / "store")
    req = _request(kind, members)
    first = run_request(req, store=store, device="cpu")
    assert not first.from_store
    monkeypatch.setattr(type(kind_for(kind)), "compute", computed_anyway)
    second = run_request(req, store=store, device="cpu")
    assert second.from_store and second.key == first.key

    for stored_name in second.stored.files:  # what the store holds: each file in a role (figures stored as PNG)
        assert spec.role_of(stored_name) is not None, f"{kind} stores {stored_name}, which no role of its spec names"
    written = export(second, replace(req, fmt="svg"), tmp_path / "out")
    roles = {p.name: spec.role_of(p.name, "svg") for p in written}
    assert None not in roles.values(), f"{kind} writes files no role names: {roles}"
    assert "figure" in roles.values() and all(p.suffix == ".svg" for p in written if roles[p.name] == "figure")
    documents = files_of(replace(req, fmt="svg"), written, "document")
    assert documents, kind
    for doc in documents:  # the document is one the pull schema accepts (the same shape a pulled result must have)
        check_document(kind, doc.name, json.loads(doc.read_text()), "test", PullLimits())
    again = export(second, req, tmp_path / "again")
    assert [p.name for p in files_of(req, again, "document")] == [p.name for p in documents]

    from fastapi.testclient import TestClient

    from hubcompare.service.app import create_app

    config = ServiceConfig(registry_path=tmp_path / "registry.sqlite", results_dir=tmp_path / "store")
    with TestClient(create_app(config), base_url="http://127.0.0.1:8765") as client:
        page = client.get(f"/results/{second.key}")
        assert page.status_code == 200, page.text[:500]
        assert all(f"/results/{second.key}/files/{name}" in page.text for name in second.stored.files), kind
        listed = client.get(f"/api/results/{second.key}").json()
        assert listed["kind"] == kind and sorted(listed["files"]) == sorted(second.stored.files)
        # what the spec says the page draws: a heatmap (SVG) for a kind that keeps them, the document's row tables
        assert ('<svg id="heatmap"' in page.text) == (spec.heatmaps is not None), kind
        document = json.loads(documents[0].read_text())
        for table in spec.tables:
            assert (f'<table id="{table}"' in page.text) == bool(document.get(table)), (kind, table)
