"""Scrape cadences (exporter/cadence.py): a regular scraper is a chain of three requests at
equal gaps, so keep_warm can build each scraper's body just before it asks, also for an HA
pair scraping the same variant."""

from __future__ import annotations

import pytest

from exporter.cadence import HISTORY, Cadences


def test_one_scraper_is_predicted_and_built_for_once_per_request() -> None:
    c = Cadences(1.0, 300.0)
    c.note(100.0)
    c.note(115.0)
    assert c.take_due(129.7, 0.4) is None  # two requests are no cadence yet
    c.note(130.0)
    assert c.take_due(144.0, 0.4) is None  # next due at 145: not within the lead yet
    assert c.take_due(144.7, 0.4) == pytest.approx(145.0)
    assert c.take_due(144.8, 0.4) is None  # built for that request already
    c.note(145.1)  # on time (a little late): the chain goes on
    assert c.take_due(159.8, 0.4) == pytest.approx(160.2)


def test_an_ha_pair_on_the_same_variant_is_two_chains() -> None:
    """Two Prometheus servers, both every 15 s, 4 s apart: each request is predicted."""
    c = Cadences(1.0, 300.0)
    for t in (0.0, 4.0, 15.0, 19.0, 30.0):
        c.note(t)
    assert c.predictions(30.0) == [pytest.approx(45.0)]  # the second server has two requests so far
    c.note(34.0)
    assert sorted(c.predictions(34.0)) == [pytest.approx(45.0), pytest.approx(49.0)]
    assert c.take_due(44.7, 0.4) == pytest.approx(45.0)
    c.note(45.0)
    assert c.take_due(48.7, 0.4) == pytest.approx(49.0)


def test_different_intervals_and_a_stopped_scraper() -> None:
    c = Cadences(1.0, 300.0)
    for t in (0.0, 5.0, 15.0, 30.0, 35.0):  # A every 15 s from 0, B every 30 s from 5
        c.note(t)
    assert c.take_due(44.8, 0.4) == pytest.approx(45.0)  # A
    c.note(65.0)  # A stopped (nothing at 45 or 60); B asks on time
    assert c.predictions(65.0) == [pytest.approx(95.0)]  # A's missed turn predicts nothing


def test_bursts_and_one_offs_predict_nothing_and_history_is_bounded() -> None:
    c = Cadences(1.0, 300.0)
    for i in range(40):
        c.note(i * 0.1)  # gaps below the shortest interval are no cadence
    assert c.predictions(4.0) == [] and len(c._times) == HISTORY
    c.note(50.0)
    c.note(90.0)  # 40 s apart, but nothing 40 s before 50: no chain
    assert c.predictions(90.0) == []


def test_no_predictions_from_multiples_of_the_gap() -> None:
    """Every other request also forms a chain (gap 4 s for a 2 s scraper): only the real one counts,
    or each scrape would cost extra renders."""
    c = Cadences(1.0, 300.0)
    for t in (0.0, 0.3, 2.0, 2.3, 4.0, 4.3, 6.0, 6.3, 8.0, 8.3, 10.0, 10.3):
        c.note(t)
    assert sorted(c.predictions(10.5)) == [pytest.approx(12.0), pytest.approx(12.3)]
