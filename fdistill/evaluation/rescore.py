"""Re-score a run's saved predictions without re-generating: ``python -m fdistill.evaluation --run-dir DIR``.

The metric list comes from ``--metrics`` or the run's saved Hydra config (``DIR/.hydra/config.yaml``,
else ``DIR/config.yaml``: ``dataset.metrics``; encoders from ``pipeline.evaluate.bertscore_encoder``,
``.moverscore_encoder``, ``.bleurt_checkpoint``). Text-metric values replace
those in ``metrics.json``; every other value (the model-based analyses) is kept. ``synthetic_exact``
needs the task object, so it is only computed by the evaluation stage and kept as is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fdistill.errors import ConfigError, RunDirError
from fdistill.evaluation.io import PREDICTIONS_FILE, read_metrics, read_predictions, write_metrics
from fdistill.evaluation.text_metrics import evaluate_predictions

SAVED_CONFIG_PATHS = (".hydra/config.yaml", "config.yaml")
ENCODER_OPTIONS = ("bertscore_encoder", "moverscore_encoder", "bleurt_checkpoint")


def saved_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved config as a plain dict ({} when the run saved none)."""
    from omegaconf import OmegaConf

    for relative in SAVED_CONFIG_PATHS:
        if (run_dir / relative).is_file():
            return OmegaConf.to_container(OmegaConf.load(run_dir / relative), resolve=False)
    return {}


def check_evaluated_run_dir(run_dir: Path) -> None:
    """`run_dir` is a run dir whose evaluate stage finished (predictions.jsonl is there and readable)."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} does not exist; pass a run dir (outputs/runs/<run_name>/<overrides>)")
    if not (run_dir / "config.json").is_file() and not (run_dir / "stages").is_dir():
        raise RunDirError(f"{run_dir} is not an fdistill run dir (it has no config.json and no stages/); pass the "
                          "directory a run wrote (outputs/runs/<run_name>/<overrides>, or a multirun job's dir)")
    marker = run_dir / "stages" / "evaluate.json"
    if not marker.is_file() or not (run_dir / PREDICTIONS_FILE).is_file():
        raise RunDirError(f"{run_dir} has no finished evaluate stage (no {'stages/evaluate.json' if not marker.is_file() else PREDICTIONS_FILE}): "
                          "run the pipeline in it first (the same command resumes it), then re-score")


def rescore_run(run_dir: str | Path, metrics: list[str] | None = None, **encoder_options: str | None) -> Path:
    """Score ``predictions.jsonl`` of ``run_dir`` and merge the result into its ``metrics.json``.

    ``encoder_options`` (bertscore_encoder, moverscore_encoder, bleurt_checkpoint) override the saved
    config's ``pipeline.evaluate`` section.
    """
    run_dir = Path(run_dir)
    check_evaluated_run_dir(run_dir)
    config = saved_run_config(run_dir)
    if metrics is None:
        metrics = list((config.get("dataset") or {}).get("metrics") or [])
        if not metrics:
            raise ConfigError(f"no metric list: {run_dir} has no saved config with dataset.metrics "
                             f"(looked for {', '.join(SAVED_CONFIG_PATHS)}); pass --metrics a,b,c")
    unknown_options = set(encoder_options) - set(ENCODER_OPTIONS)
    if unknown_options:
        raise ConfigError(f"unknown options {sorted(unknown_options)}; valid: {list(ENCODER_OPTIONS)}")
    saved_options = (config.get("pipeline") or {}).get("evaluate") or {}
    options = {name: encoder_options.get(name) or saved_options.get(name) for name in ENCODER_OPTIONS}
    records = read_predictions(run_dir)
    text_metrics = [name for name in metrics if name != "synthetic_exact"]
    values, metadata = evaluate_predictions([record["prediction"] for record in records],
                                            [record["references"] for record in records], text_metrics,
                                            sources=[record["source"] for record in records], **options)
    old_values, old_metadata = read_metrics(run_dir)
    merged_metadata = {**old_metadata, **metadata}
    for key in ("signatures", "scales"):
        merged_metadata[key] = {**old_metadata.get(key, {}), **metadata.get(key, {})}
    return write_metrics(run_dir, {**old_values, **values}, merged_metadata)
