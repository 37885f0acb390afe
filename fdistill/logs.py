"""Logging: fdistill's own lines (stages, resumes, results) on the console and in the run's log file;
library chatter only at WARNING+ in the log file and ERROR+ on the console; library progress bars off
(fdistill's own tqdm bars stay). Hydra installs the handlers from ``conf/hydra/job_logging/fdistill.yaml``,
which uses the filters and the formatter below."""

from __future__ import annotations

import logging

OURS = ("fdistill", "__main__")
#: library messages that carry no information a user can act on: accelerate's note that the tied
#: embedding copies are not stored twice in a checkpoint (they are tied again when it is loaded)
HARMLESS = ("Removed shared tensor",)


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] in OURS


def _is_harmless(record: logging.LogRecord) -> bool:
    return any(text in str(record.msg) for text in HARMLESS)


class ConsoleFilter(logging.Filter):
    """Ours from INFO, libraries from ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_ours(record):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.ERROR and not _is_harmless(record)


class FileFilter(logging.Filter):
    """Ours from INFO, libraries from WARNING (without the harmless ones)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_ours(record):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING and not _is_harmless(record)


class ConsoleFormatter(logging.Formatter):
    """Our messages as they are; a library's with its name and level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message if _is_ours(record) else f"[{record.name}][{record.levelname}] {message}"


def quiet_libraries() -> None:
    """Route transformers' and datasets' loggers through the root handlers (they print to stderr on their
    own otherwise), switch their progress bars off, and silence the warnings that say nothing a user can act on:
    FSDP2's note that a model returned a view (the hidden states pre-distillation reads; fdistill never writes
    into a model's outputs)."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for name in ("transformers", "datasets"):
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True
        library.setLevel(logging.WARNING)
