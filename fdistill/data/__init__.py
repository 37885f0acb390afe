"""Dataset adapters -> normalised :class:`Example` records, and the synthetic task with exact checks.

``load_examples(name, split, data_dir=None, **overrides)`` is the entry point; ``name`` is one of
``conf/dataset/*.yaml`` (dart, xsum, wmt16_en_ro, commonsense_dialogue, dolly, synthetic).
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
