"""The ratios the tunnel benchmark prints against the performance goals."""
from benchmarks.bench_tunnel import ratio, rtt_added

SUMMARY = {"underlay": {"rtt_med_us": 80.0}, "flatnet": {"rtt_med_us": 250.0}, "nebula": {"rtt_med_us": 410.0}}


def test_rtt_added_is_over_the_underlay_of_the_same_run():
    assert rtt_added(SUMMARY, "flatnet") == 170.0
    assert ratio(rtt_added(SUMMARY, "flatnet"), rtt_added(SUMMARY, "nebula")) == "0.52x"


def test_missing_numbers_print_a_dash_not_an_error():
    assert rtt_added(SUMMARY, "underlay") is None
    assert rtt_added({"flatnet": {"rtt_med_us": 250.0}}, "flatnet") is None  # no underlay measured
    assert rtt_added({"underlay": {"rtt_med_us": None}, "flatnet": {"rtt_med_us": 1.0}}, "flatnet") is None
    assert ratio(None, 3.0) == "-" and ratio(3.0, 0) == "-" and ratio(3.0, None) == "-"
    assert ratio(180.0, 50.0) == "3.60x"
