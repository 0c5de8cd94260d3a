"""Contract test: every huggingface_hub call hubcompare makes, plus timm's own push/load, against the
project's Hub-protocol server. A client upgrade that changes the protocol fails here first."""

from __future__ import annotations

import io

import pytest
import torch


def test_client_operations_round_trip(hub, tmp_path):
    from huggingface_hub import (
        CommitOperationAdd,
        CommitOperationDelete,
        HfApi,
        ModelCard,
        hf_hub_download,
        snapshot_download,
    )
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi()
    assert api.whoami()["name"] == "local"
    url = api.create_repo("contract/basic")
    assert url.repo_id == "contract/basic"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("contract/basic")
    assert e.value.response.status_code == 409
    assert api.create_repo("contract/basic", exist_ok=True).repo_id == "contract/basic"
    assert api.repo_exists("contract/basic") and not api.repo_exists("contract/absent")

    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("hello")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (folder / "README.md").write_text("---\ntags:\n- contract-tag\nlibrary_name: timm\n---\n# card\n")
    first = api.upload_folder(repo_id="contract/basic", folder_path=folder, commit_message="first")
    assert len(first.oid) == 40

    info = api.model_info("contract/basic", files_metadata=True)
    assert info.sha == first.oid
    assert {s.rfilename for s in info.siblings} == {".gitattributes", "a.txt", "sub/b.bin", "README.md"}
    assert "contract-tag" in info.tags and info.card_data.library_name == "timm"
    assert sorted(api.list_repo_files("contract/basic")) == [".gitattributes", "README.md", "a.txt", "sub/b.bin"]
    tree = {e.path: e for e in api.list_repo_tree("contract/basic", recursive=True)}
    assert tree["sub/b.bin"].size == 25600 and "sub" in tree
    assert [p.path for p in api.get_paths_info("contract/basic", ["a.txt", "nope"])] == ["a.txt"]
    assert api.file_exists("contract/basic", "a.txt") and not api.file_exists("contract/basic", "missing.txt")
    assert ModelCard.load("contract/basic").data.tags == ["contract-tag"]

    # upload_file, create_commit with delete, tags and branches, commits listing
    api.create_tag("contract/basic", tag="v1", revision=first.oid)
    second = api.create_commit(
        "contract/basic",
        [CommitOperationAdd("a.txt", io.BytesIO(b"changed")), CommitOperationDelete("sub/b.bin")],
        commit_message="second",
        parent_commit=first.oid,
    )
    api.upload_file(path_or_fileobj=b"x", path_in_repo="c.txt", repo_id="contract/basic")
    with pytest.raises(HfHubHTTPError) as e:  # stale parent commit
        api.create_commit("contract/basic", [CommitOperationAdd("d.txt", b"d")], commit_message="x", parent_commit=first.oid)
    assert e.value.response.status_code == 412
    api.create_branch("contract/basic", branch="dev", revision=second.oid)
    refs = api.list_repo_refs("contract/basic")
    assert {b.name for b in refs.branches} == {"main", "dev"} and refs.tags[0].target_commit == first.oid
    assert [c.title for c in api.list_repo_commits("contract/basic")][:3] == ["Upload c.txt with huggingface_hub", "second", "first"]

    # downloads: pinned to a tag, a branch and a commit; Range requests; errors
    assert open(hf_hub_download("contract/basic", "a.txt", revision="v1")).read() == "hello"
    assert open(hf_hub_download("contract/basic", "a.txt")).read() == "changed"
    snap = snapshot_download("contract/basic", revision=first.oid)
    assert open(f"{snap}/sub/b.bin", "rb").read() == bytes(range(256)) * 100
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url("contract/basic", "a.txt", revision="v1"))
    assert meta.commit_hash == first.oid and meta.size == len(b"hello")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("contract/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("contract/basic", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("contract/basic", "no-such-file.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("contract/absent", "a.txt")

    # list_models filters: author, search, tags (all must match), cardData
    found = list(api.list_models(author="contract", filter=["contract-tag"], cardData=True))
    assert [m.id for m in found] == ["contract/basic"] and found[0].card_data.tags == ["contract-tag"]
    assert list(api.list_models(search="basic", filter=["contract-tag", "not-there"])) == []
    assert "contract/basic" in [m.id for m in api.list_models(search="BASIC")]

    # collections
    c = api.create_collection("Contract pop", namespace="contract", description="d")
    again = api.create_collection("Contract pop", namespace="contract", exists_ok=True)
    assert again.slug == c.slug
    api.add_collection_item(c.slug, item_id="contract/basic", item_type="model", note="n")
    api.add_collection_item(c.slug, item_id="contract/basic", item_type="model", exists_ok=True)
    got = api.get_collection(c.slug)
    assert [(i.item_id, i.note) for i in got.items] == [("contract/basic", "n")]
    assert [x.slug for x in api.list_collections(owner="contract", item="models/contract/basic")] == [c.slug]
    api.delete_collection_item(c.slug, got.items[0].item_object_id)
    assert api.get_collection(c.slug).items == []
    api.delete_collection(c.slug)

    api.delete_branch("contract/basic", branch="dev")
    api.delete_tag("contract/basic", tag="v1")
    api.delete_repo("contract/basic")
    assert not api.repo_exists("contract/basic")


def test_timm_push_to_hf_hub_and_create_model(hub):
    """timm's own uploader and hf-hub: loader (with safetensors and the pickle fallback files) work."""
    import timm
    from huggingface_hub import HfApi
    from timm.models import push_to_hf_hub

    import hubcompare  # noqa: F401  (registers cifar_resnet)

    model = timm.create_model("cifar_resnet", depth=8, width=1, num_classes=10).eval()
    push_to_hf_hub(model, "contract/timm-pushed", model_args={"depth": 8, "width": 1})
    files = set(HfApi().list_repo_files("contract/timm-pushed"))
    assert {"model.safetensors", "pytorch_model.bin", "config.json", "README.md"} <= files
    loaded = timm.create_model("hf-hub:contract/timm-pushed", pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_hub_serve_command(tmp_path):
    """`hubcompare hub serve` as a user runs it: a real client talks to it; a busy port is a clear error."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import free_port
    from huggingface_hub import HfApi

    port = free_port()
    cli = str(Path(sys.executable).parent / "hubcompare")
    proc = subprocess.Popen([cli, "hub", "serve", "--data", str(tmp_path / "data"), "--port", str(port), "--verbose"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # piped: request lines only with --verbose
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        api = HfApi(endpoint=f"http://127.0.0.1:{port}")
        api.create_repo("served/x")
        api.upload_file(path_or_fileobj=b"hi", path_in_repo="a.txt", repo_id="served/x")
        assert api.list_repo_files("served/x") == [".gitattributes", "a.txt"]
        assert (tmp_path / "data" / "repos" / "models" / "served" / "x" / "refs.json").is_file()
        busy = subprocess.run([cli, "hub", "serve", "--data", str(tmp_path / "d2"), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and "Address already in use; choose another port" in busy.stderr and "--port" in busy.stderr
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"export HF_ENDPOINT=http://127.0.0.1:{port}" in out and '"POST /api/repos/create HTTP/1.1" 200' in err
