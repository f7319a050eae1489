"""The paper's published numbers (``paper_numbers.yaml``, package data) for the report's "paper" columns."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

PAPER_NUMBERS_FILE = "paper_numbers.yaml"
NEURONS = ("2arg", "1arg", "relu")
SECTIONS = ("source", "note", "robust_accuracy", "corruption", "saddle", "clean_accuracy")


@cache
def paper_numbers() -> dict[str, Any]:
    """The published numbers with their source, read (never executed) from the package's data file."""
    text = resources.files("lit_dendrite.analysis").joinpath(PAPER_NUMBERS_FILE).read_text()
    numbers = yaml.safe_load(text)
    missing = [key for key in SECTIONS if key not in (numbers or {})]
    if missing:
        raise ValueError(f"{PAPER_NUMBERS_FILE} lacks {missing}; the package is damaged, reinstall it")
    return numbers


def published_robust_accuracy(dataset: str, net: str) -> dict[str, Any] | None:
    """Table 1's row of one data set and net (epsilon and robust accuracy in % per neuron), or None."""
    rows = paper_numbers()["robust_accuracy"]["rows"]
    return next((row for row in rows if row["dataset"] == dataset and row["net"] == net), None)


def published_corruption(dataset: str, net: str, neuron: str) -> dict[str, Any] | None:
    """The published mCE and relative mCE (%) of one condition, or None."""
    rows = paper_numbers()["corruption"]
    return next((r for r in rows if (r["dataset"], r["net"], r["neuron"]) == (dataset, net, neuron)), None)


def published_saddle(net: str) -> dict[str, Any] | None:
    """The published saddle fraction and binomial p of one net, or None."""
    return next((row for row in paper_numbers()["saddle"]["rows"] if row["net"] == net), None)


def authors_layer(net: str) -> int | None:
    """The learned-neuron layer (1-based) whose inputs the authors' soft-XOR analysis used, or None."""
    return paper_numbers()["saddle"]["layer"].get(net)
