"""Evaluate a run's robustness: python launch/evaluate.py RUN_DIR [--corruptions ...] [--attacks ...] [--n N]."""

from lit_dendrite.robustness.cli import main

if __name__ == "__main__":
    main()
