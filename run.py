"""fdistill runner: `python run.py` runs the embedded default (synthetic task, tiny BART, TVD, CPU);
`python run.py +experiment=dart_tvd` a paper setting; `-m` sweeps (Hydra multirun)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fdistill.config import register_configs
from fdistill.pipeline import run_pipeline

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
