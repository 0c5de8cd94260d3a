"""Model cards built with huggingface_hub's ``ModelCard``/``ModelCardData`` (never hand-written YAML).

The card's metadata carries searchable tags (architecture, depth-N, width-K, dataset, fraction,
seed) and a ``model-index`` entry with the test accuracy, so Hub search and ``ModelCard.load``
both see what the checkpoint is.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..errors import CheckpointCorruptError
from .metadata import ModelMeta

__all__ = ["build_card", "card_tags", "format_number", "read_card"]

# The card's machine-readable ``hubcompare`` block: what Hub search and `registry sync` read back.
CARD_KEYS = ("architecture", "depth", "width", "num_classes", "dataset", "data_fraction", "seed", "recipe_hash", "epochs", "test_accuracy")


def format_number(x: float) -> str:
    """1.0 -> '1', 0.25 -> '0.25' (for tags and titles)."""
    return f"{x:g}"


def card_tags(meta: ModelMeta) -> list[str]:
    tags = [
        "hubcompare",
        "timm",
        "image-classification",
        meta.architecture,
        f"depth-{meta.depth}",
        f"width-{format_number(meta.width)}",
        f"dataset-{meta.dataset}",
        f"fraction-{format_number(meta.data_fraction)}",
        f"seed-{meta.seed}",
    ]
    return tags + [f"population-{p}" for p in meta.populations]


def read_card(path: str | Path) -> ModelCard:
    """A checkpoint's README.md as a ``ModelCard``; unreadable metadata (bad YAML, not UTF-8, a malformed
    ``model-index``) is a CheckpointCorruptError naming the file."""
    try:
        card = ModelCard.load(path)
        card.data.eval_results  # noqa: B018 - parsed lazily in some versions: fail here, not while printing
    except (yaml.YAMLError, ValueError, TypeError, KeyError, OSError) as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointCorruptError(
            f"{path}: the model card's YAML metadata cannot be read ({type(e).__name__}: {detail}); fix its front "
            "matter, or delete the file (the checkpoint does not need it; a push writes a fresh card).", path) from None
    return card


def build_card(meta: ModelMeta, repo_id: str | None = None) -> ModelCard:
    """A model card for a checkpoint trained by hubcompare (``meta.is_hubcompare_run``)."""
    block = meta.to_dict()
    title = f"ResNet-{meta.depth} ({format_number(meta.width)}x) on {meta.dataset}, seed {meta.seed}"
    data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=card_tags(meta),
        datasets=[meta.dataset],
        metrics=["accuracy"],
        model_name=title,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=meta.dataset,
                dataset_name=meta.dataset,
                dataset_split="test",
                metric_type="accuracy",
                metric_value=round(float(meta.test_accuracy), 6),
            )
        ],
        hubcompare={k: block[k] for k in CARD_KEYS if k in block} | {"dataset_fingerprint": meta.test_fingerprint},
    )
    ref = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    recipe = meta.recipe or {}
    t = recipe.get("train", {})
    decay_on = "every parameter" if t.get("weight_decay_on") == "all" else "kernels only"
    test, train = meta.test_data or {}, meta.train_data or {}
    body = f"""
# {title}

A CIFAR ResNet v1 (depth {meta.depth} = 6n+2, width multiplier {format_number(meta.width)}) trained with
hubcompare for representation-similarity studies in the style of Nguyen, Raghu &
Kornblith, *Do Wide and Deep Networks Learn the Same Things?* (ICLR 2021).

| | |
|---|---|
| test accuracy | {meta.test_accuracy:.4f} on `{meta.dataset}` test split ({test.get('num_examples', '?')} examples) |
| training data | `{meta.dataset}` train, fraction {format_number(meta.data_fraction)} ({train.get('num_examples', '?')} examples, seeded class-stratified draw) |
| recipe | `{recipe.get('name', '?')}` (hash `{meta.recipe_hash}`): {meta.epochs} epochs, batch {t.get('batch_size', '?')}, SGD lr {t.get('lr', '?')} momentum {t.get('momentum', '?')}, {t.get('schedule', 'cosine')} schedule, weight decay {t.get('weight_decay', '?')} on {decay_on} |
| seed | {meta.seed} |
| dataset fingerprint | test `{test.get('fingerprint', '?')}`, train `{train.get('fingerprint', '?')}` |

The weights are the **last epoch** (never selected on the test set). Inputs are images scaled to [0, 1]
with no mean/std normalisation. `predictions.safetensors` holds the test-set logits keyed by example id.

## Use

```python
import hubcompare, timm  # importing hubcompare registers the cifar_resnet family with timm
model = timm.create_model("{ref}", pretrained=True).eval()
```

```bash
hubcompare info {ref.split(':', 1)[1]}
```

## Citation

```bibtex
@inproceedings{{nguyen2021wide,
  title={{Do Wide and Deep Networks Learn the Same Things? Uncovering How Neural Network Representations Vary with Width and Depth}},
  author={{Nguyen, Thao and Raghu, Maithra and Kornblith, Simon}},
  booktitle={{International Conference on Learning Representations}},
  year={{2021}}
}}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
