"""docs/performance.md's CPU table is the committed benchmark results file's, as `neurons.py --markdown` prints it: a
benchmark rerun that is committed without regenerating the table (or a table edited by hand) fails here."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from neurons_table import markdown_table  # noqa: E402  (a script directory, not a package)

from lit_dendrite.sweeps.step_times import BENCHMARK_RESULTS, CPU_RESULTS  # noqa: E402


def test_the_performance_page_shows_the_committed_cpu_benchmark():
    table = markdown_table(json.loads((BENCHMARK_RESULTS / CPU_RESULTS).read_text()))
    page = (REPO / "docs" / "performance.md").read_text()
    assert table in page, "regenerate it: python benchmarks/neurons.py --markdown benchmarks/results/neurons_cpu.json"
