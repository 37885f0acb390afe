"""fdistill runner: `python run.py` runs the embedded default (synthetic task, tiny BART, TVD, CPU);
`python run.py +experiment=dart_tvd` a paper setting; `-m` sweeps (Hydra multirun).

fdistill's own errors (config, data, cache, run dir, a diverged training stage) print their message alone
and exit with code 2; unexpected errors keep their traceback; Ctrl-C prints where the run stopped (exit 130).
In a multirun every job runs: a failing job is reported and the sweep goes on; the failures are listed at
the end and the exit code is 2 if any job failed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fdistill.cli import guarded, precheck, sweep_exit_code
from fdistill.config import register_configs
from fdistill.pipeline import run_pipeline

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    run_dir = hydra_config.runtime.output_dir
    job = None
    if hydra_config.mode == RunMode.MULTIRUN:
        job = f"{hydra_config.job.num} ({hydra_config.job.override_dirname or 'no overrides'})"
    with guarded(job, run_dir):
        run_pipeline(cfg, run_dir, list(hydra_config.overrides.task), link_latest=job is None)


def pin_root(argv: list[str]) -> list[str]:
    """The launch directory as ``paths.root`` unless given: what ``${hydra:runtime.cwd}`` means, but resolvable
    before a multirun's jobs start (the sweep dir is built from it). Excluded from run-dir names."""
    from hydra._internal.utils import get_args_parser

    if any(item.lstrip("+~").startswith("paths.root=") for item in argv):
        return argv
    # the overrides last and together (argparse takes no positional after an option's value, e.g. --cfg job)
    overrides = set(get_args_parser().parse_known_args(list(argv))[0].overrides)
    positional = [item for item in argv if item in overrides and ("=" in item or item.startswith("~"))]
    options = [item for item in argv if item not in positional]
    return [*options, *positional, f"paths.root={os.getcwd()}"]


if __name__ == "__main__":
    sys.argv[1:] = pin_root(sys.argv[1:])
    precheck(sys.argv[1:], CONFIG_DIR)
    main()
    raise SystemExit(sweep_exit_code())
