"""Robustness: corruption metrics (mCE), adversarial evaluation behind an engine adapter, run evaluation."""
