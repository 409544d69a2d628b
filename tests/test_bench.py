"""Smoke test of the speed benchmark (experiments.bench): it runs and writes its table.

Speed itself is measured by the benchmark, never asserted here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import credit  # noqa: E402
from experiments import bench  # noqa: E402


def _rows(text):
    """The table rows of the markdown: {method: cells after the method name}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("method",):
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_benchmark_has_a_row_per_method(tmp_path):
    out = tmp_path / "bench.md"
    results = bench.main(["--quick", "--models", "a", "--out", str(out)])

    text = out.read_text()
    assert text.startswith("# Benchmark")
    assert "## (a) MLP 784-256-256-10, batch 128" in text
    assert "## (b)" not in text and "## (c)" not in text
    assert not [p for p in os.listdir(tmp_path) if p != "bench.md"]  # no temp file left

    rows = _rows(text)
    expected = {"plain keras.Model.fit", "backprop", "backprop (blockwise)",
                *credit.available()}
    assert set(rows) == expected
    for method, (samples, vs_keras, vs_backprop, _, traces, note) in rows.items():
        if method == "kickback":  # a 10-class model: kickback needs a scalar output
            assert samples == "n/a"
            assert "scalar output" in note
            continue
        assert float(samples.replace(",", "")) > 0, (method, note)
        assert float(vs_keras) > 0 and float(vs_backprop) > 0
        assert traces == "1", f"{method}: train function traced {traces} times"

    # The returned runners agree with the table, and every target of model (a) is shown.
    _, runners = results["a"]
    assert {r.label for r in runners} == {"keras", "backprop", "backprop (blockwise)",
                                          *credit.available()}
    assert "| backprop through credit >= 0.95x plain Keras | (a) |" in text
    assert "| feedback alignment >= 0.9x backprop | (a) |" in text
