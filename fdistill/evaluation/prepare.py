"""Install-time preparation of offline evaluation resources: ``python -m fdistill.evaluation.prepare``.

Currently: NLTK WordNet for METEOR (see :mod:`fdistill.evaluation.wordnet`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fdistill.evaluation.wordnet import default_cache_dir, ensure_wordnet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where to lay out corpora/wordnet (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    print(f"WordNet for METEOR (NLTK): {ensure_wordnet(args.cache_dir)}")


if __name__ == "__main__":
    main()
