"""A data-to-text-like task whose output distribution is known exactly (the embedded default).

An input is a small record -- an entity and ``attributes_per_record`` attribute/value pairs from a
closed vocabulary -- written as ``record <entity> <attr> <value> ...``. Its outputs are K =
``num_modes`` verbalisations; template k has its own opening and closing word, attribute order,
connector and entity placement, and is drawn with probability ``mode_probs[k]`` proportional to
``mode_skew ** k``. K = 1 behaves like translation (one right answer), large K like dialogue (many).

Because the generator is known, predictions can be checked exactly (:meth:`SyntheticTask.is_valid`,
:meth:`SyntheticTask.mode_of`, :meth:`SyntheticTask.true_prob`): a blend of two templates
(mode averaging, f-DISTILL Sec. 2) starts with one template's opening word and ends with another's
closing word, so it matches no template and is invalid; the modes a student uses measure mode
collapse.

Splits come from one seeded generator: inputs are drawn from disjoint regions of the input space
(80% train, 10% validation, 10% test) and modes from split-specific random streams. Train examples
carry one sampled verbalisation as their single reference (the data); validation/test examples
carry the sampled verbalisation first and, with ``eval_references="all"`` (default), the other K-1
verbalisations after it, for multi-reference metrics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

from fdistill.data.base import SPLITS, DataError, DatasetAdapter, Example, canonical_split, register

SOURCE_MARKER = "record"
# One opening and one closing word per template: a splice of two templates can match neither.
OPENERS = ("indeed", "well", "so", "look", "now", "today", "notably", "honestly", "basically", "frankly",
           "apparently", "naturally", "briefly", "listen", "remember", "interestingly", "admittedly",
           "evidently", "reportedly", "officially", "certainly", "curiously", "fortunately", "luckily")
CLOSERS = ("overall", "anyway", "again", "too", "truly", "altogether", "exactly", "definitely", "clearly",
           "precisely", "obviously", "really", "completely", "entirely", "simply", "surely", "plainly",
           "absolutely", "generally", "mostly", "largely", "typically", "usually", "finally")
CONNECTORS = ("and", "plus", "with", "also")
ENTITY_PLACEMENTS = 3
ATTRIBUTES = {
    "color": ("red", "blue", "green", "black", "white", "yellow"),
    "size": ("tiny", "small", "medium", "large", "huge", "giant"),
    "city": ("paris", "rome", "oslo", "lima", "cairo", "dublin"),
    "food": ("rice", "bread", "soup", "cheese", "cake", "pasta"),
    "job": ("doctor", "farmer", "pilot", "baker", "singer", "teacher"),
    "pet": ("cat", "dog", "bird", "horse", "rabbit", "turtle"),
    "sport": ("tennis", "soccer", "golf", "rugby", "chess", "boxing"),
    "music": ("jazz", "blues", "opera", "reggae", "techno", "salsa"),
}
ENTITY_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "ni", "sa", "vu", "de", "po")
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
SPLIT_FRACTIONS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
EVAL_REFERENCE_POLICIES = ("all", "sampled")


@dataclass(frozen=True)
class Record:
    entity: str
    attributes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SyntheticTask:
    """Seeded generator with exact ground truth; the fields are the ``params`` of ``synthetic.yaml``."""

    num_modes: int = 6
    mode_skew: float = 0.5
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 500
    seed: int = 0
    num_entities: int = 40
    num_attributes: int = 6
    attributes_per_record: int = 3
    values_per_attribute: int = 5
    eval_references: str = "all"

    def __post_init__(self) -> None:
        limits = {
            "num_modes": (1, len(OPENERS)),
            "num_entities": (1, len(ENTITY_SYLLABLES) ** 2),
            "num_attributes": (1, len(ATTRIBUTES)),
            "attributes_per_record": (1, self.num_attributes),
            "values_per_attribute": (1, min(len(values) for values in ATTRIBUTES.values())),
            "seed": (0, 2**63 - 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DataError(f"synthetic: {name} must be an integer in [{low}, {high}], got {value!r}")
        if not (isinstance(self.mode_skew, (int, float)) and self.mode_skew > 0):
            raise DataError(f"synthetic: mode_skew must be > 0 (1.0 = uniform modes), got {self.mode_skew!r}")
        if self.eval_references not in EVAL_REFERENCE_POLICIES:
            raise DataError(f"synthetic: eval_references must be one of {EVAL_REFERENCE_POLICIES}, got {self.eval_references!r}")
        for split in SPLITS:
            size = getattr(self, f"num_{split}")
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self.region_size(split):
                raise DataError(f"synthetic: num_{split} must be an integer in [0, {self.region_size(split)}] "
                                f"(inputs available to this split), got {size!r}; raise num_entities or values_per_attribute for more")

    # ----- the true distribution -------------------------------------------------------------
    @cached_property
    def mode_probs(self) -> np.ndarray:
        """True probability of each template k, proportional to ``mode_skew ** k`` (read-only)."""
        weights = float(self.mode_skew) ** np.arange(self.num_modes, dtype=np.float64)
        probs = weights / weights.sum()
        probs.flags.writeable = False
        return probs

    @cached_property
    def entities(self) -> tuple[str, ...]:
        return tuple(a + b for a, b in itertools.product(ENTITY_SYLLABLES, repeat=2))[: self.num_entities]

    @cached_property
    def attribute_values(self) -> dict[str, tuple[str, ...]]:
        return {name: values[: self.values_per_attribute] for name, values in list(ATTRIBUTES.items())[: self.num_attributes]}

    @cached_property
    def attribute_subsets(self) -> list[tuple[str, ...]]:
        return list(itertools.combinations(self.attribute_values, self.attributes_per_record))

    @cached_property
    def slot_orders(self) -> list[tuple[int, ...]]:
        return list(itertools.permutations(range(self.attributes_per_record)))

    def vocabulary(self) -> list[str]:
        """Every word that can appear in a source or an output (for a word-level tokenizer)."""
        words = {SOURCE_MARKER, "has", "for", ":", ","}
        words.update(OPENERS[: self.num_modes], CLOSERS[: self.num_modes], CONNECTORS, self.entities)
        for name, values in self.attribute_values.items():
            words.add(name)
            words.update(values)
        return sorted(words)

    # ----- sources and verbalisations --------------------------------------------------------
    def source_of(self, record: Record) -> str:
        pairs = " ".join(f"{name} {value}" for name, value in record.attributes)
        return f"{SOURCE_MARKER} {record.entity} {pairs}"

    def parse_source(self, source: str) -> Record:
        """The record written in ``source``; ValueError if it is not a source of this task."""
        words = source.split()
        attribute_values = self.attribute_values
        expected_length = 2 + 2 * self.attributes_per_record
        if len(words) != expected_length or words[0] != SOURCE_MARKER or words[1] not in self.entities:
            raise ValueError(f"not a source of this synthetic task: {source!r} (expected "
                             f"'{SOURCE_MARKER} <entity>' and {self.attributes_per_record} attribute/value pairs)")
        pairs = tuple(zip(words[2::2], words[3::2], strict=True))
        names = [name for name, _ in pairs]
        if any(value not in attribute_values.get(name, ()) for name, value in pairs) or names != sorted(
            set(names), key=list(attribute_values).index
        ):
            raise ValueError(f"not a source of this synthetic task: {source!r} (unknown or unordered attribute/value)")
        return Record(words[1], pairs)

    def verbalise(self, record: Record, mode: int) -> str:
        """Template ``mode`` applied to ``record``."""
        orders = self.slot_orders
        slots = [" ".join(record.attributes[position]) for position in orders[mode % len(orders)]]
        connector = CONNECTORS[mode % len(CONNECTORS)]
        phrase = " , ".join(slots[:-1]) + f" {connector} {slots[-1]}" if len(slots) > 1 else slots[0]
        opener, closer = OPENERS[mode], CLOSERS[mode]
        placement = mode % ENTITY_PLACEMENTS
        if placement == 0:
            return f"{opener} {record.entity} has {phrase} {closer}"
        if placement == 1:
            return f"{opener} {phrase} for {record.entity} {closer}"
        return f"{opener} {record.entity} : {phrase} {closer}"

    def verbalisations(self, source: str) -> list[str]:
        """All K valid outputs of ``source``; index k is template k."""
        record = self.parse_source(source)
        return [self.verbalise(record, mode) for mode in range(self.num_modes)]

    # ----- exact checks ----------------------------------------------------------------------
    def mode_of(self, source: str, output: str) -> int | None:
        """Template index that produces ``output`` from ``source`` (whitespace-insensitive), else None."""
        words = output.split()
        for mode, verbalisation in enumerate(self.verbalisations(source)):
            if verbalisation.split() == words:
                return mode
        return None

    def is_valid(self, source: str, output: str) -> bool:
        return self.mode_of(source, output) is not None

    def true_prob(self, source: str, output: str) -> float:
        """True probability of ``output`` given ``source`` (0 for anything but the K verbalisations)."""
        mode = self.mode_of(source, output)
        return 0.0 if mode is None else float(self.mode_probs[mode])

    # ----- sampling --------------------------------------------------------------------------
    @property
    def num_inputs(self) -> int:
        return (self.num_entities * math.comb(self.num_attributes, self.attributes_per_record)
                * self.values_per_attribute ** self.attributes_per_record)

    def region_size(self, split: str) -> int:
        start, stop = SPLIT_FRACTIONS[canonical_split(split)]
        return int(stop * self.num_inputs) - int(start * self.num_inputs)

    def split_size(self, split: str) -> int:
        return getattr(self, f"num_{canonical_split(split)}")

    def record_at(self, index: int) -> Record:
        """Input number ``index`` of the enumeration entity x attribute subset x values."""
        attribute_values, subsets = self.attribute_values, self.attribute_subsets
        index, value_code = divmod(index, self.values_per_attribute ** self.attributes_per_record)
        entity_index, subset_index = divmod(index, len(subsets))
        values = np.unravel_index(value_code, (self.values_per_attribute,) * self.attributes_per_record)
        names = subsets[subset_index]
        return Record(self.entities[entity_index],
                      tuple((name, attribute_values[name][int(value)]) for name, value in zip(names, values, strict=True)))

    def sample(self, n: int, split: str) -> list[Example]:
        """The first ``n`` examples of ``split``: inputs from the split's own region of the input space
        (disjoint across splits), one template per input drawn from ``mode_probs``."""
        split = canonical_split(split)
        if not 0 <= n <= self.region_size(split):
            raise DataError(f"synthetic: cannot draw {n} distinct {split} inputs; the split has {self.region_size(split)}")
        order = np.random.default_rng([self.seed, 0]).permutation(self.num_inputs)
        start = int(SPLIT_FRACTIONS[split][0] * self.num_inputs)
        modes = np.random.default_rng([self.seed, 1, SPLIT_CODES[split]]).choice(self.num_modes, size=n, p=self.mode_probs)
        examples = []
        for position, (input_index, mode) in enumerate(zip(order[start : start + n], modes, strict=True)):
            record = self.record_at(int(input_index))
            outputs = [self.verbalise(record, k) for k in range(self.num_modes)]
            sampled = outputs[mode]
            if split == "train" or self.eval_references == "sampled":
                references = (sampled,)
            else:
                references = (sampled, *(output for k, output in enumerate(outputs) if k != mode))
            examples.append(Example(
                id=f"synthetic-{split}-{position}",
                source=self.source_of(record),
                references=references,
                meta={"mode": int(mode), "entity": record.entity, "attributes": dict(record.attributes)},
            ))
        return examples


@register
class SyntheticAdapter(DatasetAdapter):
    """``load_examples("synthetic", split, **params)``: the generator behind the usual adapter API."""

    name = "synthetic"
    defaults = {task_field.name: task_field.default for task_field in fields(SyntheticTask)}

    def read_rows(self, split: str) -> tuple[list[Example], str]:
        if self.data_dir is not None:
            raise DataError(f"synthetic: the task is generated in code, data_dir must be null (got {self.data_dir})")
        task = SyntheticTask(**self.params)
        return task.sample(task.split_size(split), split), f"synthetic generator (seed {task.seed})"

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        yield row
