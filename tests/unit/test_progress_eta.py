"""The version import's ETA rule and progress within a model, without services: no ETA
until enough of the run is done to estimate one (a model finished in no time once said
`ETA 22h08m`), then elapsed * todo / done; a large model's statements move its rows."""

from __future__ import annotations

import pytest

from cachework.importers.progress import ESTIMATE_FRACTION, ESTIMATE_SECONDS, RunProgress, estimate


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("elapsed", "done", "total", "eta"),
    [
        (0.01, 8, 500_008, None),  # the zero-time first step: no rate to extrapolate
        (30.0, 8, 500_008, None),  # long, but too little done
        (1.0, 250_004, 500_008, None),  # half done, but too soon to tell
        (2.0, 25_000, 500_000, 38.0),  # both thresholds reached: 2 s per 5%
        (10.0, 400, 1_000, 15.0),
        (10.0, 1_000, 1_000, 0.0),  # done
        (0.0, 0, 0, 0.0),  # nothing to do is done
        (5.0, 10, None, None),  # rows unknown
    ],
)
def test_estimate(elapsed, done, total, eta):
    assert estimate(elapsed, done, total) == eta


def test_thresholds_are_the_documented_ones():
    assert (ESTIMATE_FRACTION, ESTIMATE_SECONDS) == (0.05, 2.0)
    assert estimate(ESTIMATE_SECONDS, 50, 1_000) == pytest.approx(38.0)
    assert estimate(ESTIMATE_SECONDS - 0.001, 50, 1_000) is None
    assert estimate(ESTIMATE_SECONDS, 49, 1_000) is None


def _events(model: str, rows: int, parts: int) -> list[dict]:
    head = {"model": model, "index": 2, "total": 2}
    steps = [{**head, "stage": "checking", "part": k, "parts": parts} for k in range(1, parts)]
    return [{**head, "stage": "checking"}, *steps, {**head, "stage": "done", "created": rows}]


def test_a_large_model_moves_within_itself_and_the_eta_waits():
    clock = Clock()
    run = RunProgress(clock)
    run({"stage": "planned", "rows": {"Category": 8, "Product": 100_000}})
    clock.now += 0.01
    run({"model": "Category", "index": 1, "total": 2, "stage": "done", "created": 8})
    assert run.eta is None and "ETA estimating" in run.line()  # was: ETA 34m43s
    seen = []
    for event in _events("Product", 100_000, 5):
        clock.now += 1.0
        run(event)
        seen.append((run.percent, run.eta, run.snapshot()))
    percents = [p for p, _eta, _meta in seen]
    assert percents == sorted(percents) and percents[-1] == 100.0
    inside = {round(p, 3) for p in percents if 0 < p < 100}
    assert len(inside) >= 3, percents
    for percent, eta, meta in seen:
        assert meta["percent"] == round(percent, 1) and meta["total"] == 100_008
        assert meta["model"] == "Product" and meta["units"] == 2
        assert meta["eta_seconds"] == (None if eta is None else round(eta))
    # "checking" at 1.01 s with 8 rows done: no ETA; at 2.01 s with 20% done, the rate
    assert seen[0][1] is None and seen[0][2]["eta_seconds"] is None
    elapsed, done = 2.01, 8 + 20_000
    assert seen[1][1] == pytest.approx(elapsed * (100_008 - done) / done)
    assert seen[-1][1] == 0.0


def test_a_part_never_moves_a_model_backwards_and_a_snapshot_reads_back():
    clock = Clock()
    run = RunProgress(clock)
    run({"stage": "planned", "rows": {"Product": 10_000}})
    run({"model": "Product", "stage": "checking", "part": 3, "parts": 5})
    run({"model": "Product", "stage": "checking", "part": 1, "parts": 5})  # out of order
    assert run.done == 6_000
    clock.now += 4.0
    meta = run.snapshot()
    assert {k: meta[k] for k in ("percent", "done", "total", "eta_seconds", "model")} == {
        "percent": 60.0, "done": 6_000, "total": 10_000, "eta_seconds": 3, "model": "Product",
    }  # fmt: skip
    back = RunProgress.from_snapshot(meta)
    assert (back.rows, back.done, back.eta) == (10_000, 6_000, pytest.approx(4.0 * 4 / 6))
    assert back.snapshot()["total"] == 10_000
