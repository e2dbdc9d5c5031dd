"""`flatnet gateway run/stop`: the errors an operator sees, without starting nginx."""
import os

from flatnet.main import main


def test_partial_tls_options_are_refused(tmp_path, capsys):
    assert main(["gateway", "run", "--prefix", str(tmp_path), "--tls-cert", "/x.crt"]) == 1
    assert "--tls-cert and --tls-key need --tls-listen IP:PORT" in capsys.readouterr().err
    assert main(["gateway", "run", "--prefix", str(tmp_path), "--tls-listen", "127.0.0.1:443", "--tls-key", "k"]) == 1
    assert "give both --tls-cert and --tls-key, or neither" in capsys.readouterr().err


def test_render_only_writes_the_config(tmp_path, capsys):
    assert main(["gateway", "render", "--prefix", str(tmp_path), "--overlay-timeout", "2.5"]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path}/nginx.conf"
    assert "overlay_timeout = 2.5 " in open(tmp_path / "nginx.conf").read()
    assert not os.path.exists(tmp_path / "nginx.pid")


def test_overlay_timeout_out_of_range(tmp_path, capsys):
    assert main(["gateway", "run", "--prefix", str(tmp_path), "--overlay-timeout", "0"]) == 1
    assert "overlay timeout 0 s: expected 0.1 to 300 seconds" in capsys.readouterr().err


def test_a_config_nginx_refuses_is_reported_and_nothing_starts(tmp_path, capsys):
    assert main(["gateway", "run", "--prefix", str(tmp_path), "--nginx", "/bin/false"]) == 1
    assert f"nginx refused {tmp_path}/nginx.conf" in capsys.readouterr().err
    conf = open(tmp_path / "nginx.conf").read()
    assert "overlay_timeout = 3 " in conf and "keepalive_timeout 1s;" in conf
    assert not os.path.exists(tmp_path / "nginx.pid")


def test_already_running_and_stop_without_a_gateway(tmp_path, capsys):
    (tmp_path / "nginx.pid").write_text(str(os.getpid()))  # a live pid: "running"
    assert main(["gateway", "run", "--prefix", str(tmp_path)]) == 1
    assert f"already runs with prefix {tmp_path} (pid {os.getpid()})" in capsys.readouterr().err
    (tmp_path / "nginx.pid").write_text("999999999")
    assert main(["gateway", "stop", "--prefix", str(tmp_path)]) == 0
    assert "no gateway runs with prefix" in capsys.readouterr().out
