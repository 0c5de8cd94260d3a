"""Push a checkpoint, find it by tags, pull it pinned into a fresh cache, load it; offline, pickles, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hubcompare.models.weights import load_model


def _outputs(model, seed=0):
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.rand(4, c, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def pushed(hub, trained_run):
    from hubcompare.hub.client import push

    return push(trained_run, "alice/digits-r8")


def test_push_find_by_tags_pull_fresh_cache_identical(hub, pushed, trained_run, tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import pull
    from hubcompare.models.checkpoint import load_checkpoint

    assert len(pushed.commit_sha) == 40 and not pushed.skipped
    record = json.loads((trained_run / ".hub" / "pushes.json").read_text())
    assert record[f"{hub.endpoint}/alice/digits-r8"]["commit_sha"] == pushed.commit_sha

    meta = load_checkpoint(trained_run).meta
    found = list(HfApi().list_models(author="alice", filter=["hubcompare", "depth-8", "width-1", "dataset-digits",
                                                             f"seed-{meta.seed}", "fraction-1"], cardData=True))
    assert [m.id for m in found] == ["alice/digits-r8"]
    assert found[0].card_data.to_dict()["hubcompare"]["test_accuracy"] == pytest.approx(meta.test_accuracy, abs=1e-6)

    pulled = pull("alice/digits-r8", cache_dir=tmp_path / "fresh-cache")
    assert pulled.commit_sha == pushed.commit_sha and str(pulled.path).startswith(str(tmp_path / "fresh-cache"))
    assert pulled.path.name == pushed.commit_sha
    local, remote = load_model(load_checkpoint(trained_run)), load_model(load_checkpoint(pulled.path))
    assert torch.equal(_outputs(local), _outputs(remote))
    assert (pulled.path / "predictions.safetensors").read_bytes() == (trained_run / "predictions.safetensors").read_bytes()


def test_push_same_content_is_skipped_without_a_new_commit(pushed, trained_run):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import push

    before = len(HfApi().list_repo_commits("alice/digits-r8"))
    again = push(trained_run, "alice/digits-r8")
    assert again.skipped and again.commit_sha == pushed.commit_sha
    assert len(HfApi().list_repo_commits("alice/digits-r8")) == before


def test_pushed_model_loads_with_plain_timm(pushed, trained_run):
    import timm

    import hubcompare  # noqa: F401
    from hubcompare.models.checkpoint import load_checkpoint

    model = timm.create_model("hf-hub:alice/digits-r8", pretrained=True)
    assert torch.equal(_outputs(model), _outputs(load_model(load_checkpoint(trained_run))))


def test_pinned_revision_survives_a_later_commit(hub, trained_run, tmp_path):
    from helpers import one_epoch_recipe

    from hubcompare.hub.client import pull, push
    from hubcompare.models.checkpoint import load_checkpoint
    from hubcompare.training.loop import train

    first = push(trained_run, "alice/pinned")
    other = tmp_path / "other-seed"
    train(one_epoch_recipe(7), other)
    second = push(other, "alice/pinned")
    assert second.commit_sha != first.commit_sha and not second.skipped

    old = pull("alice/pinned", first.commit_sha)
    new = pull("alice/pinned")
    assert (old.commit_sha, new.commit_sha) == (first.commit_sha, second.commit_sha)
    assert torch.equal(_outputs(load_model(load_checkpoint(old.path))), _outputs(load_model(load_checkpoint(trained_run))))
    assert torch.equal(_outputs(load_model(load_checkpoint(new.path))), _outputs(load_model(load_checkpoint(other))))
    # a reference pinned with @sha resolves to the old weights too
    from hubcompare.hub.references import resolve_reference

    resolved = resolve_reference(f"hf-hub:alice/pinned@{first.commit_sha}")
    assert resolved.commit_sha == first.commit_sha and resolved.meta.seed == load_checkpoint(trained_run).meta.seed


def test_offline_pull_from_cache(pushed, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from hubcompare.errors import NotInCacheError
    from hubcompare.hub.client import pull

    cache = tmp_path / "cache"
    online = pull("alice/digits-r8", cache_dir=cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = pull("alice/digits-r8", cache_dir=cache)
    assert offline.offline and offline.commit_sha == online.commit_sha and offline.path == online.path
    with pytest.raises(NotInCacheError, match="alice/never-pulled"):
        pull("alice/never-pulled", cache_dir=cache)


@pytest.mark.slow  # two `hubcompare` processes (~8 s)
def test_offline_cli_pull_with_hf_hub_offline_env_and_no_server(pushed, tmp_path):
    """HF_HUB_OFFLINE=1 as a user sets it, with the Hub unreachable: served from the cache."""
    from hubcompare.hub.client import pull

    pull("alice/digits-r8")  # into the session cache
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HUBCOMPARE_HOME=str(tmp_path))
    cli = Path(sys.executable).parent / "hubcompare"
    out = subprocess.run([str(cli), "pull", "hf-hub:alice/digits-r8", "--name", "offline-r8"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert pushed.commit_sha in out.stdout.replace("\n", "")
    out = subprocess.run([str(cli), "pull", "hf-hub:alice/not-cached"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "NotInCacheError" in out.stderr and "alice/not-cached" in out.stderr


def test_pickle_only_repo_is_refused(hub, tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.errors import PickleWeightsRefusedError
    from hubcompare.hub.client import pull

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    HfApi().create_repo("mallory/pickled")
    HfApi().upload_folder(repo_id="mallory/pickled", folder_path=folder)
    cache = tmp_path / "cache"
    with pytest.raises(PickleWeightsRefusedError, match="pytorch_model.bin") as e:
        pull("mallory/pickled", cache_dir=cache)
    assert "safetensors" in str(e.value)
    assert not list(cache.rglob("pytorch_model.bin"))


def test_missing_repo_revision_and_file_name_the_culprit(pushed):
    from huggingface_hub import HfApi

    from hubcompare.errors import HubFileNotFoundError, HubRepoNotFoundError, HubRevisionNotFoundError
    from hubcompare.hub.client import pull

    with pytest.raises(HubRepoNotFoundError, match="alice/no-such-model"):
        pull("alice/no-such-model")
    with pytest.raises(HubRevisionNotFoundError, match="'no-such-branch'") as e:
        pull("alice/digits-r8", "no-such-branch")
    assert "alice/digits-r8" in str(e.value)
    HfApi().create_repo("alice/empty")
    with pytest.raises(HubFileNotFoundError, match="alice/empty.*model.safetensors"):
        pull("alice/empty")


def test_concurrent_pulls_of_one_model_share_a_sound_cache(pushed, tmp_path):
    from hubcompare.hub.client import pull
    from hubcompare.models.checkpoint import load_checkpoint

    cache, results, errors = tmp_path / "cache", [], []

    def one():
        try:
            results.append(pull("alice/digits-r8", cache_dir=cache))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({r.path for r in results}) == 1
    load_model(load_checkpoint(results[0].path))  # weights hash verified on load
    assert not list(cache.rglob("*.incomplete"))


def test_timm_pushed_model_can_be_registered_and_loaded(hub, tmp_path):
    """A model published by timm's own push_to_hf_hub (both safetensors and pickle files)."""
    import timm
    from timm.models import push_to_hf_hub

    from hubcompare.hub.references import resolve_reference
    from hubcompare.hub.registry import Registry, entry_from_meta

    model = timm.create_model("cifar_resnet", depth=14, width=2, num_classes=10).eval()
    push_to_hf_hub(model, "bob/timm-r14", model_args={"depth": 14, "width": 2})
    registry = Registry(tmp_path / "r.sqlite", curated_dirs=[])
    resolved = resolve_reference("hf-hub:bob/timm-r14", registry)
    registry.add(entry_from_meta("bob-r14", str(resolved.pinned), resolved.meta, resolved.commit_sha))
    assert not (resolved.path / "pytorch_model.bin").exists()  # the pickle was never downloaded
    entry = registry.get("bob-r14")
    assert (entry.depth, entry.width, entry.architecture) == (14, 2, "cifar_resnet")
    again = resolve_reference("bob-r14", registry)
    assert again.registry_name == "bob-r14" and again.commit_sha == resolved.commit_sha
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.model(x), model(x))


def test_timm_reference_loads_timm_pretrained_weights_from_the_hub(hub):
    """timm:NAME follows timm's pretrained config to its Hub repo (here the local hub) and loads safetensors."""
    import timm
    from timm.models import push_to_hf_hub

    from hubcompare.hub.references import resolve_reference

    original = timm.create_model("test_resnet.r160_in1k").eval()
    push_to_hf_hub(original, "timm/test_resnet.r160_in1k")
    resolved = resolve_reference("timm:test_resnet.r160_in1k")
    assert len(resolved.commit_sha) == 40 and resolved.config["architecture"] == "test_resnet"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(resolved.model(x), original(x))


def _cli_env(tmp_path, **extra) -> dict:
    """The environment a user's shell gives the command: huggingface_hub's bars forced on (TQDM_POSITION=-1), so that
    any bar it drew would show in the captured output."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return env | {"TQDM_POSITION": "-1", "HUBCOMPARE_HOME": str(tmp_path / "home"), "COLUMNS": "80"} | extra


def _cli(*args, env, timeout=300) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "hubcompare"
    return subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_offline_unpinned_pull_after_a_pinned_pull_uses_the_newest_cached_commit(pushed, monkeypatch, tmp_path):
    """The README's order: a pull pinned to a sha records no branch; offline, the unpinned name still resolves, to the
    newest cached commit, and the command names it."""
    from huggingface_hub import constants

    from hubcompare.hub.client import cached_commits, pull

    cache = tmp_path / "cache"
    pinned = pull("alice/digits-r8", pushed.commit_sha, cache_dir=cache)
    assert not (cache / "models--alice--digits-r8" / "refs" / "main").exists()  # what made the offline pull fail
    assert [sha for sha, _ in cached_commits("alice/digits-r8", cache)] == [pinned.commit_sha]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = pull("alice/digits-r8", cache_dir=cache)
    assert offline.commit_sha == pushed.commit_sha and offline.path == pinned.path
    assert pushed.commit_sha in offline.notice and "newest cached commit" in offline.notice
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.slow  # a `hubcompare` process (~4 s); the library test above keeps the behaviour in the fast lane
def test_offline_unpinned_cli_pull_names_the_newest_cached_commit(pushed, tmp_path):
    """The same through the command, with HF_HUB_OFFLINE=1 as a user sets it and the Hub unreachable."""
    from hubcompare.hub.client import pull

    cache = tmp_path / "cache"
    pull("alice/digits-r8", pushed.commit_sha, cache_dir=cache)
    env = _cli_env(tmp_path, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    out = _cli("pull", "hf-hub:alice/digits-r8", env=env)
    assert out.returncode == 0, out.stderr
    notice = " ".join(out.stderr.split())
    assert "newest cached commit" in notice and pushed.commit_sha in notice
    assert pushed.commit_sha in out.stdout.replace("\n", "").replace(" ", "").replace("│", "")


def test_offline_pull_of_a_repo_never_cached_is_still_not_in_cache(pushed, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from hubcompare.errors import NotInCacheError
    from hubcompare.hub.client import pull

    pull("alice/digits-r8", pushed.commit_sha, cache_dir=tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NotInCacheError, match="alice/other"):
        pull("alice/other", cache_dir=tmp_path)


def _cached_files(cache: Path) -> dict[str, int]:
    """Every file a snapshot of the cache holds, with its size (the blobs they link to)."""
    return {str(p.relative_to(cache)): p.stat().st_size for p in cache.glob("models--*/snapshots/*/*")}


def test_stored_predictions_side_downloads_no_weights(pushed, trained_run, monkeypatch, tmp_path):
    """Comparing stored predictions fetches predictions, config and card: never the weights (until a model must run)."""
    from huggingface_hub import constants

    from hubcompare.hub.references import resolve_reference
    from hubcompare.populations.sides import load_side

    cache = tmp_path / "cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    side = load_side(f"hf-hub:alice/digits-r8@{pushed.commit_sha}", "A", cache_dir=tmp_path / "preds")
    assert side.members[0].predictions == "stored" and side.members[0].commit_sha == pushed.commit_sha
    files = _cached_files(cache)
    assert sorted(Path(f).name for f in files) == ["README.md", "config.json", "predictions.safetensors"]
    assert not list(cache.rglob("*.incomplete"))
    weights = (trained_run / "model.safetensors").stat().st_size
    assert sum(p.stat().st_size for p in cache.glob("models--*/blobs/*")) < weights  # no weights blob either

    resolved = resolve_reference(f"hf-hub:alice/digits-r8@{pushed.commit_sha}", weights=False)
    assert not (resolved.path / "model.safetensors").exists()
    assert torch.equal(_outputs(resolved.model), _outputs(load_model(load_checkpoint_of(trained_run))))  # fetched now
    assert (resolved.path / "model.safetensors").is_file() and resolved.path.name == pushed.commit_sha


def load_checkpoint_of(path):
    from hubcompare.models.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.mark.slow  # two `hubcompare` processes (~5 s)
def test_cli_pull_and_push_print_no_huggingface_hub_progress_bars(pushed, trained_run, tmp_path):
    """One progress display, hubcompare's: no 'Fetching 4 files' or 'Upload 2 LFS files' from huggingface_hub."""
    env = _cli_env(tmp_path, HF_HUB_CACHE=str(tmp_path / "cache"))
    out = _cli("pull", f"hf-hub:alice/digits-r8@{pushed.commit_sha}", env=env)
    assert out.returncode == 0, out.stderr
    assert "Fetching" not in out.stdout + out.stderr and "it/s" not in out.stdout + out.stderr
    out = _cli("push", str(trained_run), "--repo", "alice/bars-r8", "--no-register", env=env)
    assert out.returncode == 0, out.stderr
    assert "Upload" not in out.stdout + out.stderr and "it/s" not in out.stdout + out.stderr


def test_info_and_eval_take_hub_and_registry_references(pushed, trained_run, monkeypatch, tmp_path):
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from hubcompare.cli.main import app
    from hubcompare.models.checkpoint import load_checkpoint

    meta = load_checkpoint(trained_run).meta
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    out = runner.invoke(app, ["info", "hf-hub:alice/digits-r8", "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["seed"] == meta.seed and info["resolved"]["commit_sha"] == pushed.commit_sha
    assert not list((tmp_path / "cache").rglob("model.safetensors"))  # info reads no weights

    out = runner.invoke(app, ["registry", "add", "r8", f"hf-hub:alice/digits-r8@{pushed.commit_sha}"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["eval", "r8", "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["commit_sha"] == pushed.commit_sha and report["resolved"] == f"hf-hub:alice/digits-r8@{pushed.commit_sha}"
    assert report["accuracy"] == pytest.approx(meta.test_accuracy, abs=1e-6) and report["agreement_with_stored"] == 1.0
    out = runner.invoke(app, ["info", "r8"])
    assert out.exit_code == 0 and "ResNet-8 (1x) on digits" in out.output and pushed.commit_sha[:12] in out.output
    out = runner.invoke(app, ["eval", "r8", "--write"])
    assert out.exit_code == 2 and "--write" in out.output and "Traceback" not in out.output
