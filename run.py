"""fdistill runner: `python run.py` runs the embedded default (synthetic task, tiny BART, TVD, CPU);
`python run.py +experiment=dart_tvd` a paper setting; `-m` sweeps (Hydra multirun).

fdistill's own errors (config, data, cache, run dir, a diverged training stage) print their message alone
and exit with code 2; unexpected errors keep their traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fdistill.cli import guarded, precheck
from fdistill.config import register_configs
from fdistill.pipeline import run_pipeline

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    with guarded():
        run_pipeline(cfg, hydra_config.runtime.output_dir, list(hydra_config.overrides.task))


if __name__ == "__main__":
    precheck(sys.argv[1:], CONFIG_DIR)
    main()
