"""Loading untrusted checkpoint folders: config.json and the safetensors header decide nothing before they are checked.

Every hostile config or weights file must end in a typed :class:`~hubcompare.errors.HubcompareError`, within
seconds and without a big allocation. The fuzz passes are a seeded random mutator (no hypothesis) with a fixed
number of cases, so every run checks the same inputs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubcompare.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    HubcompareError,
    ModelConfigError,
    ModelTooLargeError,
)
from hubcompare.models.checkpoint import DEFAULT_MAX_PARAMS, PULL_FILES, load_checkpoint
from hubcompare.models.guard import cifar_resnet_size, estimate_size
from hubcompare.models.metadata import ModelMeta
from hubcompare.models.weights import load_model, write_checkpoint

REGISTRY = Path(__file__).resolve().parents[1] / "registry" / "timm-imagenet.txt"
FUZZ_MAX_PARAMS = 2_000_000  # the fuzz passes build at most this much, so a lucky mutation stays fast


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A real (untrained) ResNet-8 (0.5x) checkpoint folder, written the way `hubcompare train` writes one."""
    import timm

    model = timm.create_model("cifar_resnet", depth=8, width=0.5, num_classes=10, in_chans=1)
    meta = ModelMeta(architecture="cifar_resnet", depth=8, width=0.5, in_chans=1, num_classes=10, dataset="digits",
                     data_fraction=1.0, seed=0, test_accuracy=0.1, populations=["fuzz"])
    out = tmp_path_factory.mktemp("hostile") / "good"
    write_checkpoint(out, model, meta)
    load_model(load_checkpoint(out))  # the untouched folder loads
    return out


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    """A fresh copy of the good folder for a test to damage."""
    out = tmp_path / "run"
    out.mkdir()
    for f in good_run.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _write_config(run: Path, config) -> None:
    (run / "config.json").write_text(json.dumps(config))


def _load(run: Path, max_params: int = DEFAULT_MAX_PARAMS):
    ckpt = load_checkpoint(run)
    ckpt.meta.summary()
    return load_model(ckpt, max_params=max_params)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- specific hostile configs ---------------------------------------------------------------------
def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return edit


def _delete_hash(cfg):
    if isinstance(cfg.get("hubcompare"), dict):
        cfg["hubcompare"].pop("weights_sha256", None)


CASES = {
    "depth 999998": (_set("model_args.depth", 999998), ModelConfigError, "6n\\+2 from 8 to 1202"),
    "depth 1196 at width 10": (lambda c: c["model_args"].update(depth=1196, width=10), ModelTooLargeError, "max_params"),
    "width 1e9": (_set("model_args.width", 1e9), ModelTooLargeError, "max_params=300,000,000"),
    "width inf": (_set("model_args.width", math.inf), ModelConfigError, "finite"),
    "width nan": (_set("model_args.width", math.nan), ModelConfigError, "finite"),
    "width as text": (_set("model_args.width", "1"), ModelConfigError, "'width'"),
    "depth as float": (_set("model_args.depth", 8.0), ModelConfigError, "'depth'"),
    "depth as bool": (_set("model_args.depth", True), ModelConfigError, "'depth'"),
    "depth as list": (_set("model_args.depth", [8]), ModelConfigError, "'depth'"),
    "unknown model_args key": (_set("model_args.evil", 1), ModelConfigError, "'evil'"),
    "device in model_args": (_set("model_args.device", "cuda"), ModelConfigError, "'device'"),
    "bad init": (_set("model_args.init", "pickle"), ModelConfigError, "'init'"),
    "bn_momentum 0": (_set("model_args.bn_momentum", 0), ModelConfigError, "'bn_momentum'"),
    "model_args a list": (_set("model_args", [1, 2]), ModelConfigError, "'model_args'"),
    "model_args a string": (_set("model_args", "depth=8"), ModelConfigError, "'model_args'"),
    "architecture hf-hub": (_set("architecture", "hf-hub:other/repo"), ModelConfigError, "another repo"),
    "architecture local-dir": (_set("architecture", "local-dir:/tmp/x"), ModelConfigError, "another repo"),
    "architecture a path": (_set("architecture", "other/repo"), ModelConfigError, "another repo"),
    "architecture unknown": (_set("architecture", "no_such_net"), ModelConfigError, "no_such_net"),
    "architecture a number": (_set("architecture", 7), ModelConfigError, "'architecture'"),
    "num_classes as text": (_set("num_classes", "10"), ModelConfigError, "'num_classes'"),
    "num_classes 10**12": (_set("num_classes", 10**12), ModelConfigError, "'num_classes'"),
    "pretrained_cfg a string": (_set("pretrained_cfg", "x"), ModelConfigError, "'pretrained_cfg'"),
    "input_size lies": (_set("pretrained_cfg.input_size", [3, "a", 32]), ModelConfigError, "'input_size'"),
    "std zero": (_set("pretrained_cfg.std", [0.0]), ModelConfigError, "'std'"),
    "hubcompare block a string": (_set("hubcompare", "depth 8"), CheckpointCorruptError, "'hubcompare' block must be"),
    "hubcompare block a list": (_set("hubcompare", [1]), CheckpointCorruptError, "'hubcompare' block must be"),
    "hubcompare depth as text": (_set("hubcompare.depth", "eight"), CheckpointCorruptError, "'depth' must be an integer"),
    "hubcompare populations a string": (_set("hubcompare.populations", "zoo"), CheckpointCorruptError, "'populations'"),
    "config without architecture": (lambda c: c.clear() or c.update(_=1), CheckpointCorruptError, "architecture"),
    "giant timm architecture": (lambda c: c.update(architecture="vit_giant_patch14_224", model_args={}, num_classes=1000,
                                                  pretrained_cfg={}), ModelTooLargeError, "1,01\\d,\\d{3},\\d{3} parameters"),
    "structural timm argument": (lambda c: c.update(architecture="resnet50", model_args={"layers": [10**6] * 4},
                                                    pretrained_cfg={}), ModelConfigError, "'layers'"),
    "timm argument the architecture lacks": (lambda c: c.update(architecture="resnet18", model_args={"img_size": 64},
                                                                pretrained_cfg={}), ModelConfigError, "cannot be built"),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_config_is_a_typed_one_line_error(run, case):
    edit, error, pattern = CASES[case]
    cfg = _config(run)
    edit(cfg)
    _write_config(run, cfg)
    rss, start = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(error, match=pattern) as e:
        _load(run)
    assert time.perf_counter() - start < 2, "refused, but not before building"
    assert _peak_rss_mb() - rss < 500  # a 1B-parameter model would be 4 GB
    assert "\n" not in str(e.value) and "config.json" in str(e.value)
    if error is ModelTooLargeError:
        assert e.value.params == ("max_params",)


def test_max_params_is_the_callers_choice(run):
    with pytest.raises(ModelTooLargeError, match="max_params=1,000"):
        _load(run, max_params=1_000)
    assert _load(run, max_params=cifar_resnet_size(8, 0.5, 10, 1)[0] + 1_000) is not None


def test_pretrained_cfg_cannot_point_timm_at_other_weights(run):
    cfg = _config(run)
    cfg["pretrained_cfg"].update(hf_hub_id="other/repo", url="https://example.invalid/x.pth", file="/etc/passwd")
    _write_config(run, cfg)
    model = _load(run)
    assert not any(model.pretrained_cfg.get(k) for k in ("hf_hub_id", "url", "file"))


def test_hostile_json_text(run):
    for text in (b"[" * 100_000, b"9" * 10_000, b"\xff\xfe{}", b'{"architecture": "cifar_resnet",' * 3, b"[1, 2]", b'"x"'):
        (run / "config.json").write_bytes(text)
        with pytest.raises(CheckpointCorruptError, match="config.json"):
            _load(run)
    (run / "config.json").write_bytes(b" " * (17 << 20))
    with pytest.raises(CheckpointCorruptError, match="bytes: not a model config"):
        _load(run)


def test_weights_file_larger_than_the_model_could_be_is_not_read(run):
    with open(run / "model.safetensors", "ab") as f:
        f.truncate((run / "model.safetensors").stat().st_size + (64 << 20))  # sparse: no disk used
    with pytest.raises(CheckpointMismatchError, match="larger than any weights"):
        _load(run)


# --- limits: what fits the default ---------------------------------------------------------------
def test_family_and_curated_timm_entries_fit_the_default_limit():
    largest = cifar_resnet_size(164, 10)  # the family's largest member: ResNet-164 at width 10
    assert sum(largest) <= DEFAULT_MAX_PARAMS
    archs = sorted({f.split("=", 1)[1] for line in REGISTRY.read_text().splitlines() if not line.startswith("#")
                    for f in line.split() if f.startswith("architecture=")})
    assert "wide_resnet50_2" in archs and "resnet152" in archs
    for arch in archs:
        params, buffers = estimate_size(arch)
        assert params + buffers <= DEFAULT_MAX_PARAMS, arch
    assert sum(estimate_size("vit_giant_patch14_224")) > DEFAULT_MAX_PARAMS


@pytest.mark.parametrize("depth,width,classes,chans", [(8, 1, 10, 3), (14, 2, 100, 1), (20, 0.5, 0, 3), (26, 3.3, 7, 2)])
def test_cifar_estimate_is_exact(depth, width, classes, chans):
    import timm

    model = timm.create_model("cifar_resnet", depth=depth, width=width, num_classes=classes, in_chans=chans)
    built = (sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers()))
    assert cifar_resnet_size(depth, width, classes, chans) == built
    assert estimate_size("cifar_resnet", dict(depth=depth, width=width, num_classes=classes, in_chans=chans)) == built


# --- fuzz: config.json --------------------------------------------------------------------------
HOSTILE_VALUES = [
    None, True, False, 0, -1, 1, 2, 8, 14, 20, 999998, 2**31, 2**63, 10**30, -(10**30), 0.0, -0.0, 0.5, 1e-9, 1e9,
    1e308, math.inf, -math.inf, math.nan, "", "x", "8", "avg", "keras", "torch", "hf-hub:other/repo", "local-dir:/",
    "../../etc", "resnet50", "vit_giant_patch14_224", "cifar_resnet", "\x00", "é" * 50, [], [3], [3, 32, 32],
    [3, 10**9, 10**9], [-1, 2, 3], ["a", "b", "c"], [[[]]], {}, {"a": 1}, {"depth": 8}, [None] * 3,
]
KEYS = {
    "": ["architecture", "num_classes", "model_args", "pretrained_cfg", "hubcompare", "num_features", "global_pool", "zz"],
    "model_args": ["depth", "width", "in_chans", "num_classes", "drop_rate", "global_pool", "bn_momentum", "bn_eps",
                   "init", "layers", "img_size", "device", "pretrained", "zz"],
    "pretrained_cfg": ["input_size", "mean", "std", "num_classes", "fixed_input_size", "crop_pct", "interpolation",
                       "hf_hub_id", "url", "file", "architecture", "first_conv", "classifier", "zz"],
    "hubcompare": ["architecture", "depth", "width", "dataset", "data_fraction", "seed", "test_accuracy", "populations",
                   "class_names", "history", "test_data", "weights_sha256", "predictions", "zz"],
}


def _mutate(cfg: dict, rnd: random.Random) -> dict:
    cfg = copy.deepcopy(cfg)
    for _ in range(rnd.randint(1, 3)):
        section = rnd.choice(list(KEYS))
        node = cfg if not section else cfg.get(section)
        if not isinstance(node, dict):
            continue
        key = rnd.choice(KEYS[section])
        op = rnd.random()
        if op < 0.15:
            node.pop(key, None)
        elif op < 0.85:
            node[key] = copy.deepcopy(rnd.choice(HOSTILE_VALUES))
        elif op < 0.95 and isinstance(node.get(key), (int, float)) and not isinstance(node.get(key), bool):
            node[key] = node[key] * rnd.choice([-1, 2, 10, 1000, 0.5, 1e6])
        else:
            node[key] = {"nested": copy.deepcopy(node)} if rnd.random() < 0.5 else [copy.deepcopy(node)]
    if rnd.random() < 0.7:
        _delete_hash(cfg)  # let the mutation reach the model (a hash mismatch would stop it earlier)
    return cfg


def _outcome(load) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        load()
        outcome = "loaded"
    except HubcompareError as e:
        outcome = "typed" if "\n" not in str(e) else f"typed, several lines: {e}"
    except Exception as e:  # noqa: BLE001 - what the test counts
        outcome = f"untyped {type(e).__name__}: {e}"
    return outcome, time.perf_counter() - start


def _fuzz(run: Path, cases: int, seed: int, make) -> dict:
    rnd = random.Random(seed)
    outcomes, slowest = {}, 0.0
    for i in range(cases):
        make(run, rnd)
        outcome, took = _outcome(lambda: _load(run, max_params=FUZZ_MAX_PARAMS))
        slowest = max(slowest, took)
        key = outcome if outcome in ("loaded", "typed") else f"case {i}: {outcome[:300]}"
        outcomes[key] = outcomes.get(key, 0) + 1
    outcomes["slowest_s"] = round(slowest, 2)
    return outcomes


CONFIG_CASES = 2000


@pytest.mark.slow  # fuzzing (~6 s)
def test_fuzz_config_json(run):
    base = _config(run)
    # a second base reaches timm's other architectures (built on the meta device to estimate their size)
    timm_base = dict(base, architecture="test_resnet", model_args={"drop_rate": 0.1, "in_chans": 1})
    rss = _peak_rss_mb()
    outcomes = _fuzz(run, CONFIG_CASES, 16, lambda r, rnd: (r / "config.json").write_text(
        json.dumps(_mutate(rnd.choice([base, timm_base]), rnd))))
    bad = {k: v for k, v in outcomes.items() if k not in ("loaded", "typed", "slowest_s")}
    assert not bad, bad
    assert outcomes["typed"] > CONFIG_CASES // 2 and outcomes["slowest_s"] < 3, outcomes
    assert _peak_rss_mb() - rss < 500


# --- fuzz: the safetensors header ---------------------------------------------------------------
def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "BOOL", "F8_E5M2", "F8_E4M3", "F8_E8M0",
          "F4", "C64", "F99", "", 7]


def _mutate_weights(data: bytes, rnd: random.Random) -> bytes:
    header, body = _split(data)
    names = [k for k in header if k != "__metadata__"]
    op = rnd.randrange(9)
    if op == 0:  # truncated anywhere
        return data[: rnd.randrange(len(data))]
    if op == 1:  # a header length that lies
        raw = json.dumps(header).encode()
        return _join(raw, body, rnd.choice([0, 1, len(raw) - 1, len(raw) + 1, len(data), 2**32, 2**63, 2**64 - 1]))
    if op == 2:  # header JSON garbage
        raw = bytearray(json.dumps(header).encode())
        for _ in range(rnd.randint(1, 8)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        return _join(bytes(raw), body)
    if op == 3:  # a header of the wrong JSON shape
        return _join(rnd.choice([[], [1], "x", 1, None, {"a": 1}, {"__metadata__": {"k": 1}}]), body)
    name = rnd.choice(names)
    entry = header[name]
    if op == 4:  # dtype lies
        entry["dtype"] = rnd.choice(DTYPES)
    elif op == 5:  # shape lies
        shape = entry["shape"]
        entry["shape"] = rnd.choice([shape[::-1], shape + [1], [0], [2**40, 2**40], [-1], ["x"], [], [math.prod(shape) * 2]])
    elif op == 6:  # offsets lie
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rnd.choice([[b, a], [a, b + 4], [0, len(body) + 8], [a, 2**62], [-1, b], [a]])
    elif op == 7:  # tensors renamed, dropped or duplicated
        choice = rnd.random()
        if choice < 0.4:
            header[name + ".x"] = header.pop(name)
        elif choice < 0.7:
            header.pop(name)
        else:
            header["extra"] = dict(entry)
    else:  # dtype and shape lie together, consistently with the byte count
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        entry.update(dtype="U8", shape=[size])
    return _join(header, body)


WEIGHTS_CASES = 1000


def test_fuzz_safetensors_header(run):
    cfg = _config(run)
    _delete_hash(cfg)  # the parser, not the hash, must catch each lie
    _write_config(run, cfg)
    good = (run / "model.safetensors").read_bytes()
    rss = _peak_rss_mb()
    outcomes = _fuzz(run, WEIGHTS_CASES, 17,
                     lambda r, rnd: (r / "model.safetensors").write_bytes(_mutate_weights(good, rnd)))
    bad = {k: v for k, v in outcomes.items() if k not in ("loaded", "typed", "slowest_s")}
    assert not bad, bad
    assert outcomes["typed"] > WEIGHTS_CASES * 0.9 and outcomes["slowest_s"] < 3, outcomes
    assert _peak_rss_mb() - rss < 500


# --- resolving and the command line ---------------------------------------------------------------
def test_resolved_reference_and_cli_apply_max_params(run):
    from typer.testing import CliRunner

    from hubcompare.cli import app
    from hubcompare.hub.references import resolve_reference

    resolved = resolve_reference(f"local-dir:{run}", max_params=1_000)
    with pytest.raises(ModelTooLargeError):
        resolved.model
    r = CliRunner().invoke(app, ["pull", str(run), "--max-params", "1000"])
    assert r.exit_code == 2 and "ModelTooLargeError" in r.output and "--max-params" in r.output, r.output
    assert "Traceback" not in r.output


def test_pull_downloads_only_what_loading_reads(hub, good_run, tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import pull

    folder = tmp_path / "repo"
    folder.mkdir()
    for f in good_run.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "predictions.safetensors").write_bytes(b"x")
    (folder / "huge.safetensors").write_bytes(b"\0" * 1000)
    (folder / "notes.txt").write_text("not needed")
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    HfApi().create_repo("mallory/extras")
    HfApi().upload_folder(repo_id="mallory/extras", folder_path=folder)
    pulled = pull("mallory/extras", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in pulled.path.rglob("*") if p.is_file() or p.is_symlink()) == sorted(PULL_FILES)
    load_model(load_checkpoint(pulled.path))


# --- temporary files of killed writes -----------------------------------------------------------
@pytest.mark.slow  # a killed process (~3 s)
def test_temporary_files_of_a_killed_write_are_removed_by_the_next(tmp_path):
    from hubcompare.provenance import atomic_write_json

    target = tmp_path / "config.json"
    code = ("import os, signal, sys; import hubcompare.provenance as p\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
            "p.atomic_write_bytes(sys.argv[1], b'x' * 1000)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(target)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".config.json.") and left[0].endswith(".tmp")
    live = tmp_path / f".config.json.{os.getpid()}.abcdefgh.tmp"  # a concurrent writer in this process
    fresh_legacy = tmp_path / ".config.json.abcdefgh.tmp"  # an older release's name, being written right now
    old_legacy = tmp_path / ".config.json.zyxwvuts.tmp"
    other = tmp_path / ".config.json.bak.1.abcdefgh.tmp"  # config.json.bak's
    for p in (live, fresh_legacy, old_legacy, other):
        p.write_bytes(b"")
    os.utime(old_legacy, (time.time() - 3600, time.time() - 3600))
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", live.name, fresh_legacy.name, other.name])
