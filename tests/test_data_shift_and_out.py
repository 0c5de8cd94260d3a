"""#25 item 3: a model compared on data unlike its training data is said (stderr, the result's JSON warnings, the
stored summary the service pages show), and default output folders never take another request's files."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import own_home_env, toy_dataset
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.cli.stored import default_out
from hubcompare.comparisons import population_kinds
from hubcompare.comparisons.population_kinds import AGREEMENT, options_of
from hubcompare.comparisons.requests import ComparisonRequest, Prepared
from hubcompare.data.datasets import ImageDataset
from hubcompare.hub.references import resolve_reference
from hubcompare.models.inputs import InputSpec, unlike_training_data
from hubcompare.populations.sides import Side
from hubcompare.results.store import ResultStore
from hubcompare.similarity.engine import CompareModel, compare

runner = CliRunner()
DIGITS_SPEC = InputSpec(1, (8, 8), (0.0,), (1.0,))


def test_the_warning_names_both_datasets_and_what_was_done_to_the_images():
    w = unlike_training_data("runs/digits-r8", "digits", "cifar10-jpeg", DIGITS_SPEC, (3, 32, 32))
    assert w == ("runs/digits-r8: trained on digits, compared on cifar10-jpeg: its images were resized 32x32 -> 8x8 and "
                 "made grey (3 channels -> 1), so it sees data unlike its training data (its CKA describes it on that data).")
    assert unlike_training_data("m", "digits", "digits", DIGITS_SPEC, (1, 8, 8)) is None  # its own data, as it is
    other = unlike_training_data("m", "cifar10", "cifar10-jpeg", InputSpec(3, (32, 32), (0.0,) * 3, (1.0,) * 3), (3, 32, 32))
    assert "trained on cifar10, compared on cifar10-jpeg" in other and "fed as they are (3x32x32)" in other
    rgb = unlike_training_data("timm:x", None, "digits", InputSpec(3, (224, 224), (0.5,) * 3, (0.5,) * 3), (1, 8, 8))
    assert "its card names no training dataset, compared on digits" in rgb
    assert "resized 8x8 -> 224x224 and grey repeated to 3 channels" in rgb
    assert unlike_training_data("m", None, "digits", DIGITS_SPEC, (1, 8, 8)) is None  # nothing known, nothing done


def _cifar_like(n: int = 64) -> ImageDataset:
    toy = toy_dataset(n, channels=3, size=32)
    return ImageDataset("cifar10-jpeg", "test", toy.images, toy.labels, toy.classes, toy.ids)


def test_the_engine_warns_once_per_model_and_each_pair_carries_its_models_line(trained_run):
    models = [CompareModel.from_resolved(resolve_reference(str(trained_run)), ["stem"], ref=ref)
              for ref in (str(trained_run), f"local-dir:{trained_run}")]
    comp = compare(models, _cifar_like(), batch_size=32, device="cpu")
    shifted = [w for w in comp.warnings if "compared on cifar10-jpeg" in w]
    assert [w.split(":")[0] for w in shifted] == [str(trained_run), "local-dir"]
    assert all("trained on digits" in w and "resized 32x32 -> 8x8 and made grey" in w for w in shifted)
    assert shifted[0] in comp.pair(0, 0).warnings and shifted[0] in comp.pair(0, 1).warnings
    own = compare(models[:1], toy_dataset(64), batch_size=32, device="cpu")  # 1x8x8 as trained: another dataset only
    assert [w for w in own.warnings if "compared on toy" in w and "fed as they are (1x8x8)" in w]


@pytest.mark.slow  # two CLI runs on CIFAR-sized data (~5 s on a loaded 2-core machine)
def test_cli_on_another_dataset_warns_on_stderr_in_the_json_and_the_stored_summary(trained_run, cifar10_jpeg, tmp_path):
    home = own_home_env(tmp_path)
    out = tmp_path / "out"
    r = runner.invoke(app, ["cka", str(trained_run), "--dataset", "cifar10-jpeg", "--data-dir", str(cifar10_jpeg),
                            "--examples", "64", "--layers", "stem", "--device", "cpu", "--out", str(out), "--json"], env=home)
    assert r.exit_code == 0, r.output
    line = (f"{trained_run}: trained on digits, compared on cifar10-jpeg: its images were resized 32x32 -> 8x8 and made "
            "grey (3 channels -> 1)")
    assert line in " ".join(r.stderr.split())  # stderr (folded at the terminal's width)
    printed = json.loads(r.stdout)
    assert any(w.startswith(line) for w in printed["warnings"])
    assert any(w.startswith(line) for w in json.loads((out / "cka.json").read_text())["warnings"])
    (stored,) = ResultStore(tmp_path / "home" / "results").list()
    assert any(w.startswith(line) for w in stored.summary["warnings"])  # what the service's result page lists
    from fastapi.testclient import TestClient  # the service's page of this result shows it

    from hubcompare.service.app import create_app
    from hubcompare.service.config import ServiceConfig

    client = TestClient(create_app(ServiceConfig(registry_path=tmp_path / "registry.sqlite",
                                                 results_dir=tmp_path / "home" / "results", keep_jobs=False)),
                        base_url="http://127.0.0.1:8765")
    page = client.get(f"/results/{stored.key}")
    assert page.status_code == 200 and "compared on cifar10-jpeg: its images were resized 32x32 -&gt; 8x8" in page.text
    again = runner.invoke(app, ["cka", str(trained_run), "--dataset", "cifar10-jpeg", "--data-dir", str(cifar10_jpeg),
                                "--examples", "64", "--layers", "stem", "--device", "cpu", "--out", str(out)], env=home)
    assert "stored result" in again.stderr and line in " ".join(again.stderr.split())  # a stored answer says it too


def test_the_default_folder_is_the_requests_own():
    """results/<stem>-<KEY8>: another key is another folder; labels (which change the files' contents) too."""
    def out(key, labels=None):
        return default_out("cka-r8", SimpleNamespace(key=key), ComparisonRequest("cka", ("r8",), labels=labels))

    a, b = "3f9a0c12" + "0" * 56, "3f9a0c13" + "0" * 56
    assert out(a) == Path("results") / "cka-r8-3f9a0c12" and out(b) == Path("results") / "cka-r8-3f9a0c13"
    assert out(a, ("mine",)) not in (out(a), out(a, ("yours",))) and out(a, ("mine",)) == out(a, ("mine",))
    assert out(a, (None,)) == out(a)  # no label given: the card's name, as without --label


@pytest.mark.slow  # six CLI runs (~8 s on a loaded 2-core machine); test_the_default_folder_is_the_requests_own is fast
def test_default_output_folders_never_take_another_requests_files(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = own_home_env(tmp_path)

    def cka(*args):
        r = runner.invoke(app, ["cka", str(trained_run), "--layers", "stem", "--layers", "*.out", "--device", "cpu",
                                "--json", *args], env=home)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        return doc, tmp_path / os.path.dirname(doc["files"][0])

    first, folder = cka("--examples", "128")
    assert folder.parent == tmp_path / "results" and folder.name.endswith("-" + first["result_key"][:8])
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    second, other = cka("--examples", "96")  # another request: its own folder; the first's files untouched
    assert other != folder and other.name.endswith("-" + second["result_key"][:8])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept
    assert json.loads((folder / "cka.json").read_text())["provenance"]["num_examples"] == 128
    assert json.loads((other / "cka.json").read_text())["provenance"]["num_examples"] == 96
    labelled, named = cka("--examples", "128", "--label", "mine")  # same key, other labels: the JSON differs, so apart
    assert labelled["result_key"] == first["result_key"] and named not in (folder, other)
    assert json.loads((folder / "cka.json").read_text())["label_a"] != "mine" == labelled["label_a"]
    same, again = cka("--examples", "128")  # the same request again: its own folder, the same files
    assert again == folder and {p.name: p.read_bytes() for p in folder.iterdir()} == kept
    explicit = tmp_path / "mine"
    cka("--examples", "128", "--out", str(explicit))
    doc, at = cka("--examples", "96", "--out", str(explicit))  # a folder the user names: replaced, as before
    assert at == explicit and json.loads((explicit / "cka.json").read_text())["provenance"]["num_examples"] == 96


def test_agreement_says_which_members_were_trained_on_other_data(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    sides = [Side.from_arrays(s, np.where(rng.random((3, 200)) < 0.8, labels, rng.integers(0, 10, (3, 200))), labels,
                              [str(k) for k in range(10)], dataset={"name": "cifar10-jpeg", "split": "test",
                              "num_examples": 200, "num_classes": 10, "fingerprint": "f" * 16}) for s in ("A", "B")]
    sides[0].members[1].info["dataset"] = "digits"  # one model's card names another dataset
    sides[1].members[0].info["dataset"] = "cifar10-jpeg"  # its own: nothing to say
    req = ComparisonRequest("agreement", ("A", "B"))
    monkeypatch.setattr(population_kinds, "plot_agreement", lambda r, path: path)  # the figure is not what is tested
    state = {"sides": sides, "options": options_of(req) | {"splits": 2, "permutations": 5}}
    _, warnings = AGREEMENT.compute(req, Prepared({}, "", [], "cifar10-jpeg", state=state), tmp_path)
    shifted = [w for w in warnings if "compared on cifar10-jpeg" in w]
    assert shifted == ["A[1]: trained on digits, compared on cifar10-jpeg: its predictions are on data unlike its "
                       "training data."]
    assert shifted[0] in json.loads((tmp_path / "agreement.json").read_text())["warnings"]  # what the CLI prints
