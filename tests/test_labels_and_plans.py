"""What comparisons call models (labels, file names), how the batch size is chosen for the standard errors, and
where heatmap ticks go: pure functions, no model runs."""

from hubcompare.similarity.batchplan import choose_batch_plan
from hubcompare.similarity.labels import file_slugs, short_reference, unique_labels
from hubcompare.similarity.plots import tick_plan


def _meta(depth, width, seed=0, fraction=1.0):
    return {"architecture": "cifar_resnet", "depth": depth, "width": width, "seed": seed, "data_fraction": fraction,
            "dataset": "cifar10"}


def test_labels_are_card_names_told_apart_by_what_differs():
    refs = ["runs/a-s0", "hf-hub:alice/r20-s1@0123abc", "runs/wide/", "timm:resnet18"]
    infos = [_meta(20, 1, 0), _meta(20, 1, 1), _meta(14, 2), {"architecture": "resnet18"}]
    assert unique_labels(infos, refs) == ["ResNet-20 (1x), seed 0", "ResNet-20 (1x), seed 1", "ResNet-14 (2x)", "resnet18"]
    assert unique_labels([_meta(20, 1), _meta(20, 1, fraction=0.25)], ["x", "y"]) == [
        "ResNet-20 (1x), all the data", "ResNet-20 (1x), 1/4 of the data"]
    # nothing in the metadata differs: the short reference, then the position
    assert unique_labels([_meta(20, 1)] * 2, ["runs/a", "local-dir:runs/b"]) == ["ResNet-20 (1x) [a]", "ResNet-20 (1x) [b]"]
    assert unique_labels([_meta(20, 1)] * 2, ["runs/a", "local-dir:runs/a"]) == ["ResNet-20 (1x) [a] #1", "ResNet-20 (1x) [a] #2"]
    assert unique_labels([_meta(20, 1)] * 2, ["x", "y"], ["mine", None]) == ["mine", "ResNet-20 (1x)"]
    assert [short_reference(r) for r in refs] == ["a-s0", "r20-s1", "wide", "resnet18"]
    assert file_slugs(["ResNet-20 (1x), seed 0", "a/b", "a b", "..."]) == ["ResNet-20_1x_seed_0", "a_b-1", "a_b-2", "model"]


def test_batch_plan_leaves_minibatches_for_the_standard_error():
    auto = choose_batch_plan(500)  # the digits test split: 256 would leave 2 minibatches
    assert (auto.batch_size, auto.batches_per_pass, auto.standard_error, auto.warning()) == (63, 8, "jackknife", None)
    assert choose_batch_plan(10_000).batch_size == 256 and choose_batch_plan(10_000).batches_per_pass == 40
    assert choose_batch_plan(100).batch_size == 32  # never below 32: 3 minibatches, and said to be rough
    assert choose_batch_plan(100).standard_error == "rough"
    given = choose_batch_plan(500, 256, passes=1)
    assert given.num_batches == 2 and given.standard_error == "none" and "(e.g. 63)" in given.warning()
    assert choose_batch_plan(500, 256, passes=2).standard_error == "rough"  # 4 minibatches over two passes
    assert choose_batch_plan(500, 166).batches_per_pass == 3  # the short last slice (2 examples) joins the one before


def test_deep_resnet_ticks_name_blocks_and_other_models_keep_real_names():
    names = ["stem"] + [f"stage{s}.block{b}.{k}" for s in (1, 2, 3) for b in range(1, 10) for k in ("branch", "out")] + ["pool", "logits"]
    assert len(names) == 57  # a ResNet-56's taps
    pos, labels = tick_plan(names)
    assert len(pos) <= 24 and labels[0] == "stem" and labels[-2:] == ["pool", "logits"]
    assert {"stage1.block1", "stage2.block1", "stage3.block1"} <= set(labels)
    assert all(names[p].startswith(lab) for p, lab in zip(pos, labels))  # each tick sits on a layer of the block it names
    other = [f"layers.{i}.mlp.fc{i % 2}" for i in range(60)]
    pos, labels = tick_plan(other)
    assert len(pos) <= 24 and labels == [other[p] for p in pos]
    assert tick_plan(names[:10]) == (list(range(10)), names[:10])


def test_a_plan_already_at_the_smallest_batch_never_advises_the_same_batch():
    from hubcompare.similarity.batchplan import choose_batch_plan

    plan = choose_batch_plan(100)  # 4 minibatches of 32, the smallest automatic batch
    assert plan.batch_size == 32 and "smaller --batch-size" not in plan.warning()
    assert "compare more examples" in plan.warning()
