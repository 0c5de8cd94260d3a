"""Populations: several seeds pushed concurrently, found as a collection and by tag, resumable; registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import one_epoch_recipe

SEEDS = (11, 12, 13)


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory) -> list[Path]:
    from hubcompare.training.loop import train

    root = tmp_path_factory.mktemp("pop")
    runs = []
    for s in SEEDS:
        train(one_epoch_recipe(s), root / f"s{s}")
        runs.append(root / f"s{s}")
    return runs


class FailOnce:
    """An HfApi whose first commit to one repo dies like a dropped connection."""

    def __init__(self, api, repo_suffix):
        self._api, self._suffix, self.failed = api, repo_suffix, False

    def __getattr__(self, name):
        return getattr(self._api, name)

    def create_commit(self, repo_id, *args, **kwargs):
        if repo_id.endswith(self._suffix) and not self.failed:
            self.failed = True
            raise ValueError("simulated crash during the commit")
        return self._api.create_commit(repo_id, *args, **kwargs)


def test_population_pushed_concurrently_found_by_collection_and_tag_and_resumed(hub, seed_runs, tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import population_repo_name, push_population
    from hubcompare.hub.registry import Registry, sync
    from hubcompare.models.metadata import ModelMeta

    api = HfApi()
    flaky = FailOnce(api, f"-s{SEEDS[1]}")
    seen = []
    first = push_population(seed_runs, "zoo", "carol", workers=3, api=flaky, on_done=lambda d, r, e: seen.append(d))
    assert sorted(seen) == sorted(seed_runs)
    assert flaky.failed and list(first.failures) == [seed_runs[1]] and len(first.pushed) == 2

    # rerun: the failed member is pushed, the others are recognised and not committed again
    second = push_population(seed_runs, "zoo", "carol", workers=3, api=api)
    assert not second.failures and second.collection_slug == first.collection_slug
    assert [r.skipped for r in second.pushed] == [True, False, True]
    for r in second.pushed:
        assert len(api.list_repo_commits(r.repo_id)) == 2  # the repo's initial commit + exactly one push

    ids = sorted(r.repo_id for r in second.pushed)
    collection = api.get_collection(second.collection_slug)
    assert collection.title == "zoo" and sorted(i.item_id for i in collection.items) == ids
    assert sorted(m.id for m in api.list_models(filter=["hubcompare", "population-zoo"])) == ids
    assert [m.id for m in api.list_models(author="carol", filter=["population-zoo", f"seed-{SEEDS[2]}"])] == [
        f"carol/{population_repo_name(ModelMeta(dataset='digits', depth=8, width=1, data_fraction=1, seed=SEEDS[2]), 'zoo')}"]

    # the registry fills from list_models, pinned to each repo's sha; a population is a query over it
    registry = Registry(tmp_path / "registry.sqlite", curated_dirs=[])
    entries = sync(registry, "carol", "zoo")
    assert len(entries) == 3 and all(e.reference.startswith("hf-hub:carol/zoo-") and "@" in e.reference for e in entries)
    assert sorted(e.seed for e in registry.query(population="zoo", depth=8, width=1, dataset="digits")) == list(SEEDS)
    assert [e.seed for e in registry.query(population="zoo", seed=SEEDS[0])] == [SEEDS[0]]
    assert registry.query(population="zoo", depth=14) == []
    sha = {r.repo_id: r.commit_sha for r in second.pushed}
    assert all(e.commit_sha == sha[e.reference.split(":")[1].split("@")[0]] for e in entries)


def test_population_members_must_differ(hub, seed_runs, tmp_path):
    import shutil

    from huggingface_hub import HfApi

    from hubcompare.errors import PushError
    from hubcompare.hub.client import push_population

    copy = shutil.copytree(seed_runs[0], tmp_path / "copy")
    with pytest.raises(PushError, match="same repo"):
        push_population([seed_runs[0], copy], "dupes", "carol")
    assert not list(HfApi().list_models(filter=["population-dupes"]))  # refused before anything was pushed
