"""The rules of the tunnel comparison (benchmarks/tunnel_stats.py): receiver-side UDP
counts from a recorded iperf3 JSON, paired ratios, the rotated order, host CPU."""
import json
import pathlib

import pytest

from benchmarks.bench_tunnel import derive, ratios
from benchmarks.tunnel_stats import (fmt_ratio, host_cpu_ticks, iperf_tcp, iperf_udp_received, paired, rotation,
                                     spread)

DATA = pathlib.Path(__file__).parent / "data"


def recorded(name: str) -> dict:
    # iperf3 3.12 runs on this machine (1 s, in a namespace), trimmed of per-second intervals
    return json.loads((DATA / name).read_text())


def test_udp_is_counted_at_the_receiver_not_from_the_senders_sum():
    doc = recorded("iperf3_udp64.json")
    r = iperf_udp_received(doc)
    # the receiver read 3,354,560 bytes = 52,415 datagrams of 64 bytes in 1.003371 s
    assert r["rx_pkts"] == 52415
    assert r["rx_kpps"] == pytest.approx(52415 / 1.003371 / 1e3)
    assert r["tx_kpps"] == pytest.approx(97470 / 1.003371 / 1e3)
    assert r["loss_pct"] == pytest.approx(100 * (1 - 52415 / 97470))
    # end.sum holds the sender's bytes: read as received it would claim every datagram arrived
    assert doc["end"]["sum"]["bytes"] // 64 == 97470 != r["rx_pkts"]


def test_tcp_throughput_is_what_the_receiver_counted():
    r = iperf_tcp(recorded("iperf3_tcp1.json"))
    assert r["bytes"] == 2120613888 and r["retr"] == 27
    assert r["gbps"] == pytest.approx(16.937, abs=1e-3)


def test_a_failed_iperf3_run_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="unable to connect"):
        iperf_udp_received({"error": "unable to connect to server"})
    with pytest.raises(ValueError, match="no receiver sum"):
        iperf_tcp({"end": {"sum_sent": {"seconds": 1, "bytes": 1}}})
    doc = recorded("iperf3_udp64.json")
    del doc["end"]["sum_received"]  # never falls back to end.sum
    with pytest.raises(ValueError):
        iperf_udp_received(doc)


def test_order_rotates_each_repetition_so_each_system_takes_each_place():
    systems = ["underlay", "flatnet", "nebula"]
    orders = [rotation(systems, rep) for rep in range(6)]
    assert orders[:3] == [["underlay", "flatnet", "nebula"], ["flatnet", "nebula", "underlay"],
                          ["nebula", "underlay", "flatnet"]]
    assert orders[3:] == orders[:3]
    for place in range(3):
        assert {o[place] for o in orders[:3]} == set(systems)
    assert rotation([], 3) == []


def test_ratios_are_paired_within_each_repetition():
    # a slow repetition (noise hits both systems) must not mix with a fast one
    fn = [{"g": 3.0}, {"g": 1.5}, {"g": 3.3}]
    neb = [{"g": 1.0}, {"g": 0.5}, {"g": 1.0}]
    assert paired(fn, neb, "g") == [3.0, 3.0, 3.3]
    assert spread(paired(fn, neb, "g")) == (3.0, 3.0, 3.3)
    assert fmt_ratio(paired(fn, neb, "g")) == "3.00x (3.00-3.30)"
    # a repetition where either side failed is left out, not counted as zero
    assert paired([{"g": 2.0}, {}], [{"g": 1.0}, {"g": 1.0}], "g") == [2.0]
    assert paired([{"g": 2.0}], [{"g": 0}], "g") == []
    assert fmt_ratio([]) == "-" and spread([]) is None


def test_rtt_added_is_over_the_underlay_of_the_same_repetition():
    ul = [{"rtt": 80.0}, {"rtt": 60.0}]
    fn = [{"rtt": 250.0}, {"rtt": 200.0}]
    neb = [{"rtt": 420.0}, {"rtt": 410.0}]
    assert paired(fn, neb, "rtt", base=ul) == [pytest.approx(170 / 340), pytest.approx(140 / 350)]
    assert paired(fn, neb, "rtt", base=[{"rtt": None}, {}]) == []


def test_ratios_of_the_subject_against_every_other_system():
    runs = {"underlay": [{"tcp1_gbps": 10.0, "rtt_med_us": 80.0}],
            "flatnet": [{"tcp1_gbps": 3.0, "rtt_med_us": 250.0, "tcp1_gbit_per_daemon_s": 2.0}],
            "nebula": [{"tcp1_gbps": 1.0, "rtt_med_us": 420.0, "tcp1_gbit_per_daemon_s": 0.5}]}
    r = ratios(runs, "flatnet")
    assert set(r) == {"underlay", "nebula"}
    assert r["nebula"]["tcp1_gbps"] == [3.0] and r["underlay"]["tcp1_gbps"] == [0.3]
    assert r["nebula"]["tcp1_gbit_per_daemon_s"] == [4.0]
    assert r["nebula"]["rtt_added"] == [pytest.approx(0.5)] and r["underlay"]["rtt_added"] == []


def test_host_cpu_counts_busy_and_steal_from_proc_stat():
    stat = "cpu  100 5 50 1000 7 3 2 40 0 0\ncpu0 50 2 25 500 3 1 1 20 0 0\nintr 1 2 3\n"
    busy, steal, total = host_cpu_ticks(stat)
    assert (busy, steal, total) == (100 + 5 + 50 + 3 + 2, 40, 160 + 40 + 1000 + 7)
    with pytest.raises(ValueError):
        host_cpu_ticks("intr 1 2 3\n")


def test_cpu_per_unit_of_work():
    r = derive({"tcp1_bytes": 2e9, "tcp1_cpu_daemon_s": 4.0, "tcp1_cpu_host_s": 10.0,
                "udp64_rx_pkts": 500_000, "udp64_cpu_daemon_s": 2.0, "udp64_cpu_host_s": 5.0,
                "ping_replies": 200, "ping_cpu_daemon_s": 0.1, "ping_cpu_host_s": None})
    assert r["tcp1_daemon_s_per_gb"] == 2.0 and r["tcp1_host_s_per_gb"] == 5.0
    assert r["tcp1_gbit_per_daemon_s"] == 4.0
    assert r["udp64_daemon_s_per_mpkt"] == 4.0 and r["udp64_host_s_per_mpkt"] == 10.0
    assert r["ping_daemon_ms_per_ping"] == pytest.approx(0.5) and r["ping_host_ms_per_ping"] is None
    # the underlay has no daemon: no per-unit figure rather than a zero
    assert derive({"tcp1_bytes": 1e9, "tcp1_cpu_daemon_s": None})["tcp1_daemon_s_per_gb"] is None
    # a failed test moved nothing: no division by zero
    failed = derive({"tcp1_cpu_daemon_s": 1.0, "udp64_cpu_daemon_s": 1.0})
    assert failed["tcp1_daemon_s_per_gb"] is None and failed["tcp1_gbit_per_daemon_s"] is None
    assert failed["udp64_daemon_s_per_mpkt"] is None


def test_the_report_names_each_version_and_prints_paired_ratios_with_their_spread():
    import argparse

    from benchmarks.bench_tunnel import render
    summary = {"underlay": {"tcp1_gbps": 10.0, "rtt_med_us": 70.0},
               "flatnet": {"tcp1_gbps": 3.0, "tcp1_retr": 0, "udp64_rx_kpps": 150.0, "udp64_loss_pct": 5.0},
               "nebula": {"tcp1_gbps": 0.8}}
    knobs = {"flatnet": {"label": "flatnet abc1234"}, "nebula": {"label": "nebula 1.6.1 aes"}}
    rat = {"nebula": {"tcp1_gbps": [3.5, 3.9, 3.7], "rtt_added": [0.4]}, "underlay": {"tcp1_gbps": [0.3]}}
    a = argparse.Namespace(reps=3, time=8, udp_time=5, pings=200, subject="flatnet")
    text = render(summary, rat, knobs, a)
    assert "| flatnet abc1234 " in text and "| nebula 1.6.1 aes " in text
    assert "3.70x (3.50-3.90)" in text and "0.40x (0.40-0.40)" in text
    assert "150.0 (5%)" in text  # received kpps and loss
    assert "3 repetitions, system order rotated" in text
