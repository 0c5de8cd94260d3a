"""Every command, fed broken input, answers with one clear error and exit code 2, never a traceback.

The cases are listed per command and the list is checked against the Typer app, so a new command without
hostile cases fails :func:`test_every_command_has_hostile_cases`. Broken inputs: missing paths, a file where a
folder is expected, garbage references, bad numbers (0, -1, inf, nan, huge integers), a corrupt
``registry.sqlite`` (``HUBCOMPARE_HOME``), corrupt curated files (``HUBCOMPARE_REGISTRY_DIRS``) and corrupt
checkpoint files. No Hub server is started here: the few cases that reach the Hub run offline
(``HF_HUB_OFFLINE``) or against whatever ``HF_ENDPOINT`` answers, with one attempt and no backoff.

In-process (``CliRunner``) an unexpected exception is caught by the runner, not printed: so a case asserts
that the command ended by ``SystemExit`` (the app's own exit), as well as the exit code and the message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import typer
from helpers import small_recipe
from typer.testing import CliRunner

from hubcompare.cli.main import app

runner = CliRunner()
HUGE = str(2**64 + 1)
NO_FOLDER = "no folder .*missing exists|missing does not exist"
ABSENT_CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"  # a CUDA device not here


@dataclass
class Case:
    command: str  # the command path, e.g. "registry add"
    args: tuple[str, ...]  # after the command path; {placeholders} name the lab's files (see ``lab``)
    expect: str  # a regex the (whitespace-normalised) output must match: the error names the problem
    env: dict[str, str] = field(default_factory=dict)
    offline: bool = False  # HF_HUB_OFFLINE for this case
    pending: str = ""  # a known traceback whose fix is someone else's work in progress (the case xfails, not strictly)
    endpoint: str = ""  # HF_ENDPOINT as huggingface_hub read it (constants.ENDPOINT) for this case

    @property
    def id(self) -> str:
        where = f" {self.endpoint}" if self.endpoint else ""
        return re.sub(r"[^\w.=+-]+", "_", f"{self.command} {' '.join(self.args)} {' '.join(self.env)}{where}").strip("_")[:90]


def _cases() -> list[Case]:
    out: list[Case] = []

    def add(command: str, *args: str, expect: str, env: dict | None = None, offline: bool = False, pending: str = "",
            endpoint: str = "") -> None:
        out.append(Case(command, args, expect, env or {}, offline, pending, endpoint))

    corrupt_home = {"HUBCOMPARE_HOME": "{corrupt_home}"}
    home_is_file = {"HUBCOMPARE_HOME": "{file}"}
    name_only = {"HUBCOMPARE_REGISTRY_DIRS": "{curated_name_only}"}
    not_utf8 = {"HUBCOMPARE_REGISTRY_DIRS": "{curated_not_utf8}"}
    bad_ref_line = {"HUBCOMPARE_REGISTRY_DIRS": "{curated_bad_ref}"}
    db = "registry database .*registry.sqlite"

    # --- train ---------------------------------------------------------------------------------
    t = ("--depth", "8", "--epochs", "3")  # the digits recipe warms up for 2 epochs
    add("train", "no-such-recipe", "--out", "{new}", expect="recipe 'no-such-recipe' not found")
    add("train", "{recipe_garbage}", "--out", "{new}", expect="not valid YAML")
    add("train", "{recipe_list}", "--out", "{new}", expect="expected a mapping")
    add("train", "{recipe_not_utf8}", "--out", "{new}", expect="not UTF-8")
    add("train", "{recipe_huge_seed}", "--out", "{new}", expect="train.seed")
    add("train", "{recipe_inf_lr}", "--out", "{new}", expect="train.lr.*finite")
    add("train", "{folder}", "--out", "{new}", expect="not found")
    for depth in ("0", "-1", "21", str(10**30)):
        add("train", "digits", "--depth", depth, "--out", "{new}", expect="6n\\+2")
    for width in ("0", "-1"):
        add("train", "digits", "--width", width, "--out", "{new}", expect="width")
    for width in ("inf", "nan", "-inf"):
        add("train", "digits", "--width", width, "--out", "{new}", expect="'--width'.*not a finite number")
    add("train", "digits", "--depth", "8", "--width", "1e9", "--out", "{new}", expect="does not fit in memory.*--width")
    add("train", "digits", "--seed", HUGE, "--out", "{new}", expect="'--seed'")
    add("train", "digits", "--seed", "-1", "--out", "{new}", expect="'--seed'")
    for threads in ("0", "-1"):
        add("train", "digits", "--threads", threads, "--out", "{new}", expect="'--threads'")
    for epochs in ("0", "-1", "-3"):
        add("train", "digits", "--epochs", epochs, "--out", "{new}", expect="'--epochs'")
    add("train", "my-recipe.yaml", "--out", "{new}", expect="recipe file my-recipe.yaml not found: .*does not exist")
    add("train", "digts", "--out", "{new}", expect="did you mean digits")
    for frac in ("0", "2", "abc", "1/0", "nan"):
        add("train", "digits", *t, "--data-fraction", frac, "--out", "{new}", expect="'--data-fraction'")
    add("train", "digits", *t, "--dataset", "nope", "--out", "{new}", expect="unknown dataset 'nope'")
    add("train", "digits", *t, "--out", "{file}", expect="'--out'.*a-file.txt is a file")
    add("train", "digits", *t, "--out", "{file}/sub", expect="'--out'.*a-file.txt is a file, so")
    add("train", "digits", *t, "--out", "{run}", expect="already holds a finished checkpoint.*--overwrite")
    add("train", "cifar10", *t, "--data-dir", "{file}", "--out", "{new}", expect="--data-dir")
    add("train", "digits", "--epochs", "abc", expect="'--epochs'")

    # --- grid (each fails before any run trains) ----------------------------------------------
    add("grid", "{missing}", expect="grid file .*missing.* not found.*digits-zoo")
    add("grid", "{folder}", expect="is a folder")
    add("grid", "{recipe_garbage}", expect="not valid YAML")
    add("grid", "{recipe_list}", expect="expected a mapping")
    add("grid", "{recipe_not_utf8}", expect="not UTF-8")
    add("grid", "{grid_bad_axis}", expect="unknown axis 'colour'")
    add("grid", "{grid_bad_depth}", expect="run model.depth=21: .*6n\\+2")
    add("grid", "{grid_dupe}", expect="are the same run")
    add("grid", "{grid_no_recipe}", expect="'recipe' is required")
    add("grid", "{grid_ok}", "--backend", "nope", expect="'--backend'")
    for opt in ("--max-retries", "--workers", "--threads"):
        add("grid", "{grid_ok}", opt, "-1", expect=f"'{opt}'")
    for value in ("nan", "-1"):
        add("grid", "{grid_ok}", "--cpus-per-run", value, expect="'--cpus-per-run'")
    add("grid", "{grid_ok}", "--ray-address", "auto", expect="--ray-address needs --backend ray")
    add("grid", "{grid_ok}", "--push", expect="--push needs --owner")
    add("grid", "{grid_ok}", "--push", "--owner", "bad owner!", expect="bad owner!")
    add("grid", "{grid_ok}", "--push", "--owner", "me", "--population", "bad name!", expect="bad name!")
    add("grid", "{grid_ok}", "--out", "{file}", expect="'--out'.*a-file.txt is a file")
    add("grid", "{grid_ok}", "--device", "nope", expect="device 'nope'")

    # --- eval, info ----------------------------------------------------------------------------
    for cmd in ("eval", "info"):
        add(cmd, "{missing}", expect=NO_FOLDER)
        add(cmd, "{file}", expect="a-file.txt")
        add(cmd, "{folder}", expect="config.json")
        add(cmd, "{bad_config}", expect="config.json")
        add(cmd, "{config_list}", expect="config.json")
        add(cmd, "{config_block_string}", expect="config.json.*hubcompare")
    add("eval", "{bad_weights}", expect="model.safetensors")
    add("eval", "{run}", "--batch-size", "0", expect="'--batch-size'")
    add("eval", "{run}", "--batch-size", "-1", expect="'--batch-size'")
    add("eval", "{run}", "--threads", "-1", expect="'--threads'")
    add("info", "{bad_config}", "--json", expect="config.json")
    add("info", "{bad_card}", expect="README.md.*YAML metadata.*delete the file")
    add("info", "{card_not_utf8}", expect="README.md.*YAML metadata")
    for cmd in ("eval", "info"):  # any model reference, so the reference errors too
        add(cmd, "hf:someone/x", expect="accepted forms")
        add(cmd, "hf-hub:nobody/nothing", offline=True, expect="nobody/nothing")
        add(cmd, "no-such-entry", expect="no registry entry 'no-such-entry'")

    # --- push, push-population -----------------------------------------------------------------
    add("push", "{missing}", "--repo", "me/x", expect="does not exist")
    add("push", "{file}", "--repo", "me/x", expect="a-file.txt")
    add("push", "{bad_config}", "--repo", "me/x", expect="config.json")
    add("push", "{run}", "--repo", "not a repo", expect="not a repo")
    add("push", "{run}", "--repo", "a/b/c", expect="a/b/c")
    add("push", "{run}", "--repo", "me/x", "--name", "bad/name", expect="registry name 'bad/name'")
    add("push", "{run}", expect="Missing option '--repo'")
    add("push-population", "{missing}", "--population", "p", "--owner", "me", expect="does not exist")
    add("push-population", "{run}", "--population", "p", "--owner", "me", "--workers", "0", expect="'--workers'")
    add("push-population", "{run}", "--population", "bad name!", "--owner", "me", expect="bad name!")
    add("push-population", "{run}", "--population", "p", "--owner", "bad owner!", expect="bad owner!")
    add("push-population", "--population", "p", "--owner", "me", expect="Missing argument")

    # --- references: pull, layers, registry add ------------------------------------------------
    for cmd in ("pull", "layers"):
        add(cmd, "hf:someone/x", expect="accepted forms")
        add(cmd, "{missing}", expect=NO_FOLDER)
        add(cmd, "{file}", expect="a-file.txt")
        add(cmd, "{bad_weights}", expect="model.safetensors")
        add(cmd, "hf-hub:a/b@bad..rev", expect="bad..rev")
        add(cmd, "no-such-entry", expect="no registry entry 'no-such-entry'")
        add(cmd, "no-such-entry", env=corrupt_home, expect=db)
        add(cmd, "hf-hub:nobody/nothing", offline=True, expect="nobody/nothing")
        add(cmd, "hf-hub:nobody/nothing", expect="nobody/nothing")  # not found, or no answer: one quick attempt
        add(cmd, "timm:no_such_architecture", expect="no_such_architecture")
        add(cmd, "", expect="empty|accepted forms")
    add("pull", "{run}", env=home_is_file, expect="registry database")
    add("pull", "x", env=name_only, expect="names no model")
    add("pull", "x", env=not_utf8, expect="not UTF-8")
    add("layers", "{run}", "--layers", "no-such-layer*", expect="no-such-layer")
    add("registry add", "bad/name", "{run}", expect="registry name 'bad/name'")
    add("registry add", "x", "garbage:thing", expect="accepted forms|garbage")
    add("registry add", "x", "{missing}", expect=NO_FOLDER)
    add("registry add", "x", "{bad_config}", expect="config.json")
    add("registry add", "x", "timm-resnet18-a1", expect="is a registry name")
    add("registry add", "x", "{run}", env=corrupt_home, expect=db)
    add("registry add", "x", "{run}", env=bad_ref_line, expect="curated_bad_ref.*a.txt:1")

    # --- registry list, show, remove, sync -----------------------------------------------------
    add("registry list", env=corrupt_home, expect=db)
    add("registry list", env=home_is_file, expect="cannot open the registry database.*HUBCOMPARE_HOME")
    add("registry list", env=name_only, expect="a.txt:2: 'onlyname' names no model")
    add("registry list", env=not_utf8, expect="not UTF-8")
    add("registry list", env={"HUBCOMPARE_REGISTRY_DIRS": "{curated_txt_folder}"}, expect="cannot read the curated")
    for frac in ("abc", "1/0", "0", "nan"):
        add("registry list", "--fraction", frac, expect="'--fraction'")
    for width in ("nan", "inf"):
        add("registry list", "--width", width, expect="'--width'")
    add("registry list", "--depth", "abc", expect="'--depth'")
    add("registry show", "no-such-entry", expect="no registry entry 'no-such-entry'")
    add("registry show", "x", env=corrupt_home, expect=db)
    add("registry show", "x", env=name_only, expect="names no model")
    add("registry remove", "no-such-entry", expect="no registry entry")
    add("registry remove", "timm-resnet18-a1", expect="curated entry")
    add("registry remove", "x", env=corrupt_home, expect=db)
    add("registry sync", "--author", "bad owner!", expect="bad owner!")
    add("registry sync", "--author", "me", "--population", "bad name!", expect="bad name!")
    add("registry sync", "--author", "me", env=corrupt_home, expect=db)
    add("registry sync", "--author", "me", offline=True, expect="HF_HUB_OFFLINE is set")
    add("registry sync", expect="Missing option '--author'")

    # --- comparisons: cka, cross-cka, blocks -----------------------------------------------------
    for cmd in ("cka", "blocks"):
        add(cmd, "{missing}", expect=NO_FOLDER)
        add(cmd, "{bad_weights}", expect="model.safetensors")
        add(cmd, "{run}", "--batch-size", "0", expect="batch")
        add(cmd, "{run}", "--batch-size", "-1", expect="batch")
        add(cmd, "{run}", "--passes", "0", expect="passes")
        add(cmd, "{run}", "--examples", "0", expect="examples")
        add(cmd, "{run}", "--examples", "-1", expect="examples")
        add(cmd, "{run}", "--seed", HUGE, expect="seed")
        add(cmd, "{run}", "--split", "nope", expect="nope")
        add(cmd, "{run}", "--dataset", "nope", expect="nope")
        add(cmd, "{run}", "--dataset", "cifar10", "--data-dir", "{file}", expect="--data-dir")
        add(cmd, "{run}", "--threads", "-1", expect="'--threads'")
        add(cmd, "{run}", "--layers", "no-such-layer*", expect="no-such-layer")
        add(cmd, "{run}", "--examples", "50", "--out", "{file}", expect="'--out'.*is a file")
    add("cross-cka", "{run}", expect="at least two models")
    add("cross-cka", "{run}", "{missing}", expect=NO_FOLDER)
    add("cross-cka", "{run}", "{run}", "--batch-size", "0", expect="batch")
    add("cross-cka", "{run}", "{run}", "--passes", "-1", expect="passes")
    add("cross-cka", "{run}", "{run}", "--examples", "0", expect="examples")
    add("cross-cka", "{run}", "{run}", "--seed", HUGE, expect="seed")
    add("cross-cka", "{run}", "hf:x/y", expect="accepted forms")
    add("compare", "{run}", expect="at least two models")
    add("compare", "{run}", "{missing}", expect=NO_FOLDER)
    add("compare", "{run}", "{run}", "--measure", "cca", expect="'cca' is not a measure: choose from cka, rbf-cka, rsa")
    add("compare", "{run}", "{run}", "--measure", "rbf-cka", "--param", "rbf-cka.frac=-1", expect="frac = -1 is out of range")
    add("compare", "{run}", "{run}", "--measure", "mknn", "--param", "mknn.k=2.5", expect="k = 2.5 .*whole number")
    add("compare", "{run}", "{run}", "--param", "frac=2", expect="MEASURE.NAME=NUMBER")
    add("compare", "{run}", "{run}", "--measure", "cka", "--param", "mknn.k=3", expect="not among the chosen measures")
    add("compare", "{run}", "{run}", "--measure", "mknn", "--batch-size", "8", expect="more than k examples.*--batch-size")
    add("compare", "{run}", "{run}", "--examples", "50", "--out", "{file}", expect="'--out'.*is a file")
    five = "{run}+{run2}+{missing}+{folder}+{file}"  # five names, the third not a folder
    add("grounding", "{run}+{run2}", expect="names 2 models; grounding needs at least 5 seeds")
    add("grounding", five, expect=NO_FOLDER)
    add("grounding", "{run}+{run2}+{run}+{run2}+{run}", expect="more than once: list each model once")
    add("grounding", five, "--measure", "cca", expect="'cca' is not a measure")
    add("grounding", five, "--measure", "mknn", "--param", "mknn.k=2.5", expect="k = 2.5 .*whole number")
    add("grounding", five, "--examples", "4", expect="'--examples'")
    add("grounding", five, "--pc-steps", "0", expect="'--pc-steps'")
    add("grounding", five, "--out", "{file}", expect="'--out'.*is a file")
    add("train", "digits", "--shuffle-labels", "2", "--out", "{new}", expect="'--shuffle-labels'")
    add("measures", "rsa", expect="unexpected extra argument")
    add("measures", "--measure", "rsa", expect="No such option")
    add("measures", "--json", "rsa", expect="unexpected extra argument")
    add("blocks", "{run}", "--pc-examples", "0", expect="'--pc-examples'")
    add("blocks", "{run}", "--pc-examples", "-1", expect="'--pc-examples'")
    for opt in ("--pc1-threshold", "--cka-threshold", "--min-mean-pc1"):
        for value in ("nan", "inf", "2", "-1"):
            add("blocks", "{run}", opt, value, expect=opt)
    add("blocks", "{run}", "--min-size", "0", expect="--min-size")
    add("cka", "{run}", "--examples", "50", env=home_is_file, expect="ResultStoreError.*cannot use the result store.*HUBCOMPARE_HOME")
    add("blocks", "{run}", "--max-gap", "-1", expect="--max-gap")
    # sharded CKA: refused before any model is loaded or Ray is started (port 1: nothing answers on loopback)
    for cmd, args in (("cka", ("{run}",)), ("blocks", ("{run}",)), ("cross-cka", ("{run}", "{run}"))):
        add(cmd, *args, "--backend", "nope", expect="'--backend'.*choose one of local, ray")
        for workers in ("0", "-1", "abc"):
            add(cmd, *args, "--backend", "ray", "--workers", workers, expect="'--workers'")
        add(cmd, *args, "--workers", "2", expect="--workers needs --backend ray")
        add(cmd, *args, "--ray-address", "127.0.0.1:1", expect="--ray-address needs --backend ray")
        for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
            add(cmd, *args, "--backend", "ray", "--ray-address", address,
                expect="CompareBackendError.*cannot start or reach Ray at .*127.0.0.1:1.*--ray-address")

    # --- populations: agreement, class-diff -------------------------------------------------------
    two = "{run}+{run2}"  # class-diff needs two models a side
    for cmd in ("agreement", "class-diff"):
        add(cmd, "{run}", "{missing}", expect=NO_FOLDER)
        add(cmd, "{run}", "@{missing}", expect="missing")
        add(cmd, "{run}", "@{not_utf8_list}", expect="UTF-8")
        add(cmd, "{run}", "population:no-such-pop", expect="no-such-pop")
        add(cmd, "{run}", "registry:depth=abc", expect="depth")
        add(cmd, "{run}", "registry:colour=red", expect="colour")
        add(cmd, "{run}", "hf-tag:nothing-has-this", offline=True, expect="HF_HUB_OFFLINE is set")
        add(cmd, "{run}", "collection:nobody/nothing", offline=True, expect="HF_HUB_OFFLINE is set")
        add(cmd, "{run}", "{bad_preds}", expect="predictions")
        add(cmd, two, two, "--splits", "0", expect="'--splits'")
        add(cmd, two, two, "--seed", HUGE, expect="'--seed'")
        add(cmd, two, two, "--seed", "-1", expect="'--seed'")
        add(cmd, two, two, "--null-side", "x", expect="'--null-side'")
        add(cmd, two, two, "--dataset", "nope", expect="nope")
        add(cmd, two, "population:p", env=corrupt_home, expect=db)
        add(cmd, two, two, "--out", "{file}", expect="'--out'.*is a file")
    add("agreement", two, two, "--permutations", "0", expect="'--permutations'")
    for alpha in ("0", "1", "nan", "inf"):
        add("class-diff", two, two, "--alpha", alpha, expect="'--alpha'")
    add("class-diff", two, two, "--top", "0", expect="'--top'")
    add("class-diff", "{run}", "{run2}", expect="at least 2 models per side")

    # --- what a block does: probes, delete-blocks ---------------------------------------------------
    for cmd in ("probes", "delete-blocks"):
        add(cmd, "{missing}", expect=NO_FOLDER)
        add(cmd, "{bad_weights}", expect="model.safetensors")
        add(cmd, "{run}", "--examples", "0", expect="'--examples'")
        add(cmd, "{run}", "--batch-size", "0", expect="'--batch-size'")
        add(cmd, "{run}", "--dataset", "nope", expect="nope")
        add(cmd, "{run}", "--dataset", "cifar10", "--data-dir", "{file}", expect="--data-dir")
        add(cmd, "{run}", "--blocks", "nope", expect="'--blocks'.*not auto, none or a JSON file")
        add(cmd, "{run}", "--blocks", "{file}", "--examples", "50", expect="'--blocks'.*not a blocks JSON")
        add(cmd, "{run}", "--format", "gif", expect="'--format'")
        add(cmd, "{run}", "--out", "{file}", expect="'--out'.*is a file")
    for value in ("0", "-1", "nan", "inf"):
        add("probes", "{run}", "--l2", value, expect="'--l2'")
    for value in ("0", "1", "nan"):
        add("probes", "{run}", "--validation-fraction", value, expect="'--validation-fraction'")
    add("probes", "{run}", "--memory-gb", "0", expect="'--memory-gb'")
    add("probes", "{run}", "--memory-gb", "1e-6", "--blocks", "none", expect="ProbeError.*stem has 1,024 features.*GiB")
    add("probes", "{run}", "--train-examples", "1", expect="'--train-examples'")
    for cmd, args in (("probes", ("{run}",)), ("delete-blocks", ("{run}",)), ("across-seeds", ("{run}", "{run2}"))):
        add(cmd, *args, env=home_is_file, expect="ResultStoreError.*cannot use the result store")  # stored results
    add("probes", "{run}", "--layers", "no-such-layer*", "--blocks", "none", expect="no-such-layer")
    # --- figure formats and labels of the comparison commands -------------------------------------
    for cmd, args in (("cka", ("{run}",)), ("blocks", ("{run}",)), ("cross-cka", ("{run}", "{run}")),
                      ("agreement", ("{run}", "{run2}")), ("class-diff", (two, two))):
        add(cmd, *args, "--format", "gif", expect="'--format'.*choose one of png, pdf, svg")
    add("cross-cka", "{run}", "{run}", "--label", "only one", expect="'--label': 1 label for 2 models")
    add("cross-cka", "{run}", "{run}", "--label", "a", "--label", "b", "--label", "c", expect="3 labels for 2 models")
    add("layers", "{run}", "--json", "--layers", "no-such-layer*", expect="no-such-layer")

    # --- --device, on every command that runs a model: refused before any model is loaded -----------
    device_args = {"train": ("digits", *t, "--out", "{new}"), "eval": ("{run}",), "layers": ("{run}",), "cka": ("{run}",),
                   "blocks": ("{run}",), "cross-cka": ("{run}", "{run}"), "agreement": ("{run}", "{run2}"),
                   "class-diff": (two, two), "probes": ("{run}",), "delete-blocks": ("{run}",)}
    for cmd, args in device_args.items():
        add(cmd, *args, "--device", "nonsense", expect="DeviceError.*device 'nonsense' is not one of auto, cpu, cuda.*--device")
        add(cmd, *args, "--device", ABSENT_CUDA, expect="DeviceError.*(CUDA is not available|no CUDA device).*--device")
    add("train", "digits", *t, "--device", "cuda:x", "--out", "{new}", expect="device 'cuda:x' is not one of.*--device")
    add("cka", "{run}", "--device", "", expect="device '' is not one of.*--device")

    # --- across-seeds (and cross-cka given population sides), report ------------------------------
    add("across-seeds", "{run}", "{missing}", expect=NO_FOLDER)
    add("across-seeds", "{run}", "population:no-such-pop", expect="no-such-pop")
    add("across-seeds", "{run}", "{run}", "--examples", "50", expect="OverlappingSidesError.*same model")
    add("across-seeds", "{run}+{bad_config}", "{run2}", expect="config.json")
    for value in ("0", "nan", "-1"):
        add("across-seeds", "{run}", "{run2}", "--max-memory", value, expect="'--max-memory'")
    add("across-seeds", "{run}", "{run2}", "--split", "train", "--examples", "512", "--batch-size", "512", "--max-memory", "0.01",
        expect="ComparisonTooLargeError.*fewer layers")
    add("across-seeds", "{run}", "{run2}", "--pc-examples", "1", expect="'--pc-examples'")
    add("across-seeds", "{run}", "{run2}", "--batch-size", "0", expect="batch")
    add("across-seeds", "{run}", "{run2}", "--workers", "2", expect="--workers needs --backend ray")
    add("across-seeds", "{run}", "{run2}", "--out", "{file}", expect="'--out'.*is a file")
    add("cross-cka", "{run}+{run2}", "{run}", "{run2}", expect="two at a time")
    add("report", "{missing}", expect=NO_FOLDER)
    add("report", "{bad_weights}", expect="model.safetensors")
    add("report", "{run}", "--out", "{file}", expect="'--out'.*is a file: give a folder")
    add("report", "{run}", "--out", "{file}/sub", expect="'--out'.*a-file.txt is a file")
    add("report", "{run}", "--out", "{file}/sub/r.html", expect="'--out'.*a-file.txt is a file")
    add("report", "{run}", "--batch-size", "0", expect="batch")
    add("report", "{run}", "--pc-examples", "0", expect="'--pc-examples'")
    add("report", "{run}", "--probe-examples", "1", expect="'--probe-examples'")

    # --- the result store: results list/show/rm/pull, push-result ------------------------------
    results_db = "result index .*index.sqlite is not a readable result index"
    add("results list", "--limit", "0", expect="'--limit'")
    add("results list", env={"HUBCOMPARE_HOME": "{corrupt_results_home}"}, expect=results_db)
    add("results list", env=home_is_file, expect="cannot use the result store")
    for cmd in ("results show", "results rm", "results verify"):
        add(cmd, "zz", expect="'zz' is not a result key")
        add(cmd, "../../etc/passwd", expect="is not a result key")
        add(cmd, "abc", expect="too short to name a result: give at least 6")
        add(cmd, "abcdef", expect="no stored result has a key starting 'abcdef'.*hubcompare results list")
    add("results verify", "abcdef", "--tolerance", "-1", expect="'--tolerance'")
    add("results show", "hf-hub-result:no-owner", expect="not a Hub repo id.*hf-hub-result:OWNER/NAME")
    add("results rm", "abcdef", "--yes", env={"HUBCOMPARE_HOME": "{corrupt_results_home}"}, expect=results_db)
    add("results pull", "hf-hub:alice/model", expect="not a shared-result reference.*hf-hub-result:OWNER/NAME")
    add("results pull", "hf-hub-result:alice/x@a..b", expect="hf-hub-result:OWNER/NAME")
    add("results pull", "hf-hub-result:alice/never-shared", offline=True, expect="not in the Hugging Face cache")
    add("push-result", "abcdef", expect="Missing option '--repo'")
    add("push-result", "abcdef", "--repo", "not a repo", expect="not a Hub repo id")
    add("push-result", "zz", "--repo", "alice/x", expect="'zz' is not a result key")
    add("push-result", "abcdef", "--repo", "alice/x", expect="no stored result has a key starting 'abcdef'")

    # --- hub serve (fails before serving: no server starts) --------------------------------------
    add("hub serve", expect="Missing option '--data'")
    add("hub serve", "--data", "{new}", "--port", "abc", expect="'--port'")
    add("hub serve", "--data", "{new}", "--port", "70000", expect="Invalid value for '--port'")
    add("hub serve", "--data", "{file}", "--port", "0", expect="data folder .*a-file.txt is a file.*--data")

    # --- serve (refused before uvicorn starts: nothing listens) -----------------------------------
    add("serve", "--host", "0.0.0.0", "--port", "0", expect="not a loopback address, without a token.*--token",
        env={"HUBCOMPARE_TOKEN": ""})
    add("serve", "--host", "0.0.0.0", "--port", "0", "--token", "short", expect="at least 16 printable characters")
    add("serve", "--port", "70000", expect="Invalid value for '--port'")
    add("serve", "--workers", "0", expect="'--workers'")
    add("serve", "--max-examples", "0", expect="'--max-examples'")
    add("serve", "--data-dir", "{file}", "--port", "0", expect="data folder .*a-file.txt is a file.*--data-dir")
    add("serve", "--backend", "gpu", "--port", "0", expect="'--backend'")
    add("serve", "--ray-address", "127.0.0.1:1", "--port", "0", expect="only used with the ray backend.*--backend ray")
    add("serve", "--threads", "0", "--port", "0", expect="'--threads'")
    add("serve", "--port", "0", env={"HUBCOMPARE_HOME": "{corrupt_jobs_home}"},
        expect="job journal .*jobs.sqlite cannot be opened.*remove it")
    add("serve", "--backend", "ray", "--ray-address", "127.0.0.1:1", "--port", "0", expect="cannot start or reach Ray at 127.0.0.1:1")
    _trust_boundary_cases(add, two)
    return out


# --- trust boundaries (#23 items 11, 13, 19): collection slugs, registry names, Hub addresses, a dead Hub --------------
HOSTILE_SLUGS = ("../../api/models", "a/../../b", "..", "\u0430lice/zoo", "alice/zoo?full=true")
LOOKALIKE = "digits-r1\u0430"  # a Cyrillic а
BAD_ENDPOINTS = ("notaurl", "127.0.0.1:8080", "ftp://x", "http://u:p@127.0.0.1")
UNPARSABLE_ENDPOINTS = ("http://[::1", "http://127.0.0.1:99999")  # `import huggingface_hub` itself fails on these
DEAD = "http://127.0.0.1:1"  # a closed port on loopback


def _trust_boundary_cases(add, two: str) -> None:
    slug_rule = "collection slug .*push-population"
    for slug in HOSTILE_SLUGS:
        add("agreement", "{run}", f"collection:{slug}", expect=slug_rule)
        add("class-diff", two, f"{two}+collection:{slug}", expect=slug_rule)
        add("across-seeds", "{run}", f"collection:{slug}", expect=slug_rule)
        add("cross-cka", "{run}+{run2}", f"collection:{slug}", expect=slug_rule)
    ascii_rule = "registry name 'digits-r1.' .*U\\+0430 CYRILLIC SMALL LETTER A, not ASCII"
    add("registry add", LOOKALIKE, "{run}", expect=ascii_rule)
    add("push", "{run}", "--repo", "me/x", "--name", LOOKALIKE, expect=ascii_rule)
    add("pull", "{run}", "--name", LOOKALIKE, expect=ascii_rule)
    add("push-population", "{run}", "--population", "zoo-\u2163", "--owner", "me", expect="population name .*not ASCII")
    add("registry sync", "--author", "me", "--population", "zoo-\u0430", expect="population .*not ASCII")
    for url in BAD_ENDPOINTS:
        rule = f"HF_ENDPOINT '{re.escape(url)}' is not a Hub address: .*http\\(s\\)://HOST"
        add("pull", "hf-hub:a/b", endpoint=url, expect=rule)
        add("registry sync", "--author", "me", endpoint=url, expect=rule)
        add("push", "{run}", "--repo", "me/x", endpoint=url, expect=rule)
        add("agreement", "{run}", "collection:alice/zoo", endpoint=url, expect=rule)
        add("results pull", "hf-hub-result:alice/x", endpoint=url, expect=rule)
    add("push-population", "{run}", "--population", "p", "--owner", "me", endpoint="notaurl", expect="HF_ENDPOINT 'notaurl'")
    add("grid", "{grid_ok}", "--push", "--owner", "me", endpoint="notaurl", expect="HF_ENDPOINT 'notaurl'")  # before training
    for url in UNPARSABLE_ENDPOINTS:  # the environment variable: refused before any command runs
        for command in ("pull", "registry list"):
            add(command, *(("hf-hub:a/b",) if command == "pull" else ()), env={"HF_ENDPOINT": url},
                expect=f"HF_ENDPOINT '{re.escape(url)}' is not a Hub address")
    dead = f"the Hub {DEAD} did not answer after [15] attempts?( in 0 s)?: nothing answers there .*refused.*hub serve.*HF_ENDPOINT"
    add("registry sync", "--author", "me", endpoint=DEAD, expect=f"registry sync: list the models of me: {dead}")
    add("pull", "hf-hub:a/b", endpoint=DEAD, expect=dead)
    add("push", "{run}", "--repo", "me/x", endpoint=DEAD, expect=dead)
    add("agreement", "{run}", "collection:alice/zoo", endpoint=DEAD, expect=dead)
    add("agreement", "{run}", "hf-tag:population-zoo", endpoint=DEAD, expect=dead)


CASES = _cases()


def _command_paths(group, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every runnable command of a (Typer's own click) group, as "registry add"."""
    out: set[str] = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-group
            out |= _command_paths(command, (*prefix, name))
        else:
            out.add(" ".join((*prefix, name)))
    return out


def test_every_command_has_hostile_cases():
    commands = _command_paths(typer.main.get_command(app))
    covered = {c.command for c in CASES}
    assert commands - covered == set(), "commands without hostile cases: add them to _cases()"
    assert covered - commands == set(), "cases for commands the app does not have"
    thin = {c: n for c in commands if (n := sum(k.command == c for k in CASES)) < 3}
    assert not thin, f"fewer than 3 hostile cases: {thin}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, str]:
    """Broken inputs next to one small good checkpoint (ResNet-8 on digits, one epoch)."""
    from hubcompare.training.loop import train

    root = tmp_path_factory.mktemp("hostile")
    run = root / "run"
    train(small_recipe(**{"train.epochs": 1, "train.warmup_epochs": 0}), run)
    paths = {"run": run, "missing": root / "missing", "file": root / "a-file.txt", "folder": root / "empty-folder"}
    paths["file"].write_text("not a folder\n")
    paths["folder"].mkdir()
    paths["run2"] = shutil.copytree(run, root / "run2")  # a second member (same weights) for two-model sides

    def broken(name: str, file: str, data: bytes) -> None:
        paths[name] = shutil.copytree(run, root / name)
        (paths[name] / file).write_bytes(data)

    broken("bad_config", "config.json", b"{not json")
    broken("config_list", "config.json", b"[1, 2, 3]")
    config = json.loads((run / "config.json").read_text())
    broken("config_block_string", "config.json", json.dumps(config | {"hubcompare": "not a block"}).encode())
    broken("bad_weights", "model.safetensors", b"\x00garbage")
    broken("bad_preds", "predictions.safetensors", b"garbage")
    broken("bad_card", "README.md", b"---\nfoo: [unclosed\n---\nbody\n")
    broken("card_not_utf8", "README.md", b"---\ntags: [\xff\xfe]\n---\n")

    def write(name: str, relative: str, data: bytes) -> None:
        paths[name] = root / name
        (root / name / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / name / relative).write_bytes(data)

    write("corrupt_home", "registry.sqlite", b"this is not an SQLite database" * 10)
    write("corrupt_results_home", "results/index.sqlite", b"this is not an SQLite database" * 10)
    write("corrupt_jobs_home", "results/jobs.sqlite", b"this is not an SQLite database" * 10)
    write("curated_name_only", "a.txt", b"# a name without a reference\nonlyname\n")
    write("curated_not_utf8", "a.txt", b"x hf-hub:a/b depth=\xff\xfe\n")
    write("curated_bad_ref", "a.txt", b"x hf-hub:not-a-repo\n")
    paths["curated_txt_folder"] = root / "curated_txt_folder"
    (paths["curated_txt_folder"] / "dir.txt").mkdir(parents=True)
    for name, text in (("recipe_garbage", b"model: [unclosed\n"), ("recipe_list", b"- 1\n- 2\n"),
                       ("recipe_not_utf8", b"name: \xff\xfe\n"),
                       ("recipe_huge_seed", b"model: {depth: 8, width: 1}\ndata: {dataset: digits}\n"
                                            b"train: {epochs: 2, batch_size: 64, lr: 0.05, seed: 99999999999999999999}\n"),
                       ("recipe_inf_lr", b"model: {depth: 8, width: 1}\ndata: {dataset: digits}\n"
                                         b"train: {epochs: 2, batch_size: 64, lr: .inf}\n")):
        write(name, "recipe.yaml", text)
        paths[name] = paths[name] / "recipe.yaml"
    for name, text in (("grid_bad_axis", b"recipe: digits\naxes: {colour: [red]}\n"),
                       ("grid_bad_depth", b"recipe: digits\naxes: {depth: [8, 21]}\n"),
                       ("grid_dupe", b"recipe: digits\naxes: {seed: [1, 1]}\n"),
                       ("grid_no_recipe", b"axes: {seed: [1]}\n"),
                       ("grid_ok", b"recipe: digits\noverrides: {train.epochs: 3, model.depth: 8}\naxes: {seed: [0]}\n")):
        write(name, "grid.yaml", text)
        paths[name] = paths[name] / "grid.yaml"
    write("not_utf8_list", "refs.txt", b"\xff\xfe\n")
    paths["not_utf8_list"] = paths["not_utf8_list"] / "refs.txt"
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def quick_hub(monkeypatch):
    """One attempt, no backoff, for the cases that reach the Hub (whether or not anything answers there)."""
    import inspect

    from hubcompare.hub import client

    quick = {"attempts": 1, "base_wait": 0.0, "max_wait": 0.0}
    params = [p for p in inspect.signature(client.with_retries).parameters.values() if p.default is not p.empty]
    assert quick.keys() <= {p.name for p in params}, "with_retries changed: update quick_hub"
    monkeypatch.setattr(client.with_retries, "__defaults__", tuple(quick.get(p.name, p.default) for p in params))


def _flat(text: str) -> str:
    """Output with rich's box drawing and line wrapping undone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.pending)] if c.pending else [])
                                  for c in CASES])
def test_hostile_input_is_one_typed_error(case: Case, lab, tmp_path, quick_hub, monkeypatch):
    from huggingface_hub import constants

    fill = dict(lab, new=str(tmp_path / "new"))
    args = [*case.command.split(), *(a.format(**fill) for a in case.args)]
    env = {k: v.format(**fill) for k, v in case.env.items()}
    env.setdefault("HUBCOMPARE_HOME", str(tmp_path / "home"))
    env.setdefault("HUBCOMPARE_REGISTRY_DIRS", "")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", case.offline)
    if case.endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", case.endpoint)
    monkeypatch.chdir(tmp_path)  # default output folders (runs/, results/) land here
    r = runner.invoke(app, args, env=env)
    out = _flat(r.output)
    assert isinstance(r.exception, SystemExit), f"unhandled {type(r.exception).__name__}: {r.exception}\n{r.output}"
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert re.search(case.expect, out), f"expected /{case.expect}/ in:\n{out}"
    if "Error (" in out:  # a typed error: one line, naming its class
        assert len([line for line in r.output.splitlines() if line.startswith("Error (")]) == 1, r.output


def test_eval_write_repairs_corrupt_predictions(lab, tmp_path):
    """The advice for an unreadable predictions file (`hubcompare eval --write`) works on that very file."""
    run = shutil.copytree(lab["bad_preds"], tmp_path / "run")
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "not compared" in _flat(r.output) and "eval --write" in _flat(r.output)
    r = runner.invoke(app, ["eval", str(run), "--write"])
    assert r.exit_code == 0, r.output
    assert "replaced the stored predictions, which were not usable" in _flat(r.output)
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 0 and "argmax agreement with stored predictions" in r.output and "warning" not in r.output


@pytest.mark.parametrize("args, env, expect", [
    (["registry", "list"], {"HUBCOMPARE_HOME": "{corrupt_home}"}, "Error (RegistryCorruptError)"),
    (["train", "digits", "--width", "inf", "--out", "{missing}"], {}, "not a finite number"),
], ids=["corrupt-registry", "width-inf"])
def test_console_script_prints_no_traceback(lab, args, env, expect):
    """The installed `hubcompare` script (its own process, real stderr) ends the same way."""
    script = Path(sys.executable).with_name("hubcompare")
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from hubcompare.cli.main import main; main()"]
    full_env = dict(os.environ, **{k: v.format(**lab) for k, v in env.items()}, COLUMNS="200")
    p = subprocess.run([*command, *(a.format(**lab) for a in args)], capture_output=True, text=True, env=full_env, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert expect in _flat(p.stderr)


@pytest.mark.slow  # five `hubcompare` processes (~5 s each on 2 cores: imports)
def test_trust_boundaries_from_the_console_script(lab, tmp_path):
    """#23 items 11 and 19 as a user meets them: the installed script, real environment variables, a closed port."""
    import time

    from helpers import free_port

    script = Path(sys.executable).with_name("hubcompare")
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from hubcompare.cli.main import main; main()"]
    dead = f"http://127.0.0.1:{free_port()}"
    runs = [({"HF_ENDPOINT": "notaurl"}, ["pull", "hf-hub:a/b"], "HF_ENDPOINT 'notaurl' is not a Hub address"),
            ({"HF_ENDPOINT": "http://[::1"}, ["pull", "hf-hub:a/b"], "HF_ENDPOINT 'http://[::1' is not a Hub address"),
            ({"HF_ENDPOINT": dead}, ["registry", "sync", "--author", "alice"], f"the Hub {dead} did not answer after 5 attempts"),
            ({}, ["agreement", lab["run"], "collection:../../api/models"], "collection slug '../../api/models'"),
            ({}, ["across-seeds", lab["run"], "collection:a/../../b"], "collection slug 'a/../../b'")]
    for env, args, expect in runs:
        full_env = dict(os.environ, HUBCOMPARE_HOME=str(tmp_path / "home"), COLUMNS="300", **env)
        start = time.monotonic()
        p = subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        assert expect in _flat(p.stderr) and time.monotonic() - start < 40, (args, p.stderr)  # sync: ~7.5 s of looks
