"""Dataset adapters -> normalised :class:`Example` records, and the synthetic task with exact checks.

``load_examples(name, split, data_dir=None, **overrides)`` is the entry point (``split``: train,
validation, test; the release names dev/valid/val are accepted); ``load_from_config(node, split)``
does the same from a ``conf/dataset/<name>.yaml`` node. Without ``data_dir`` an adapter loads the hub
copy; with it, the official release files:

| name | hub (``datasets.load_dataset``) | ``data_dir`` layout | example = |
| --- | --- | --- | --- |
| dart | Yale-LILY/dart | dart-v1.1.1-full-{train,dev,test}.json | triple set, all annotations as references |
| xsum | EdinburghNLP/xsum | {train,validation,test}.jsonl (document, summary, id) | document |
| wmt16_en_ro | wmt/wmt16, ro-en | {train,val,test}.{source,target} | sentence pair; train subsampled to 100K |
| commonsense_dialogue | official GitHub files (alexa/Commonsense-Dialogues) | {train,valid,test}.json | turn |
| dolly | databricks/databricks-dolly-15k | databricks-dolly-15k.jsonl, split by seed | instruction |
| synthetic | generated in code | (none) | record; see :mod:`fdistill.data.synthetic` |
"""

from fdistill.data import commonsense_dialogue, dart, dolly, synthetic, wmt16, xsum  # noqa: F401  (register adapters)
from fdistill.data.base import (
    SPLITS,
    DataError,
    DatasetAdapter,
    Example,
    MissingDataFileError,
    available_datasets,
    canonical_split,
    load_examples,
    load_from_config,
    training_pairs,
)
from fdistill.data.synthetic import SyntheticTask

__all__ = [
    "SPLITS",
    "DataError",
    "DatasetAdapter",
    "Example",
    "MissingDataFileError",
    "SyntheticTask",
    "available_datasets",
    "canonical_split",
    "load_examples",
    "load_from_config",
    "training_pairs",
]
