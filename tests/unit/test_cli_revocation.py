"""`flatnet cert revoke` / `cert show` and how `cert sign` / `cert renew` respect the
blocklist in the CA directory (the operator's side of revocation)."""
import os
import time

from flatnet.engine import pki
from flatnet.engine.proto import cert as certs, revocation as rv
from flatnet.main import main


def load(d, name):
    return certs.decode(pki.read_file(os.path.join(d, f"{name}.crt"), "certificate"))[0]


def test_revoke_by_name_then_re_enrol_with_a_new_key(tmp_path, capsys):
    d = str(tmp_path / "pki")
    assert main(["ca", "init", "--dir", d]) == 0
    assert main(["cert", "sign", "--ca-dir", d, "--name", "host-2"]) == 0
    old = load(d, "host-2")
    assert main(["cert", "revoke", "host-2", "--ca-dir", d]) == 0
    ca = pki.load_ca(os.path.join(d, "ca.crt"))
    bl = rv.load(pki.read_file(os.path.join(d, "blocklist.bin"), "blocklist"), ca)
    assert bl.reason(old) and "host-2" in bl.names
    # renewing the revoked key is refused; a new key is the way back
    assert main(["cert", "renew", "--ca-dir", d, "--name", "host-2"]) == 1
    assert "a revoked key gets no new certificate" in capsys.readouterr().err
    for ext in ("key", "crt"):
        os.unlink(os.path.join(d, f"host-2.{ext}"))
    assert main(["cert", "sign", "--ca-dir", d, "--name", "host-2"]) == 0
    new = load(d, "host-2")
    assert new.not_before > bl.names["host-2"] and bl.reason(new) is None
    time.sleep(max(0.0, new.not_before - time.time()) + 0.01)  # valid from the second after the revocation
    capsys.readouterr()
    assert main(["cert", "show", os.path.join(d, "host-2.crt"), "--ca-dir", d]) == 0
    out = capsys.readouterr().out
    assert new.fingerprint in out and "status       valid" in out


def test_revoke_by_fingerprint_and_serials_go_up(tmp_path, capsys):
    d = str(tmp_path / "pki")
    main(["ca", "init", "--dir", d])
    main(["cert", "sign", "--ca-dir", d, "--name", "host-3"])
    fp = load(d, "host-3").fingerprint
    assert main(["cert", "revoke", "host-9", "--ca-dir", d]) == 0
    ca = pki.load_ca(os.path.join(d, "ca.crt"))
    first = rv.load(pki.read_file(os.path.join(d, "blocklist.bin"), "blocklist"), ca)
    assert main(["cert", "revoke", fp.upper(), "--ca-dir", d]) == 0
    second = rv.load(pki.read_file(os.path.join(d, "blocklist.bin"), "blocklist"), ca)
    assert second.serial > first.serial and second.fingerprints == {fp} and "host-9" in second.names
    capsys.readouterr()
    main(["cert", "show", os.path.join(d, "host-3.crt"), "--ca-dir", d])
    assert "fingerprint" in capsys.readouterr().out.split("status")[1]


def test_a_blocklist_from_another_ca_is_refused_with_a_clear_error(tmp_path, capsys):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    main(["ca", "init", "--dir", ours, "--name", "ours"])
    main(["ca", "init", "--dir", theirs, "--name", "theirs"])
    main(["cert", "revoke", "host-2", "--ca-dir", theirs])
    os.replace(os.path.join(theirs, "blocklist.bin"), os.path.join(ours, "blocklist.bin"))
    capsys.readouterr()
    assert main(["cert", "revoke", "host-3", "--ca-dir", ours]) == 1
    err = capsys.readouterr().err
    assert "blocklist.bin: bad_blocklist: not signed by this network's CA 'ours'" in err and "'theirs'" in err


def test_a_bad_target_is_explained(tmp_path, capsys):
    d = str(tmp_path / "pki")
    main(["ca", "init", "--dir", d])
    assert main(["cert", "revoke", "x" * 65, "--ca-dir", d]) == 1
    assert "neither a node name" in capsys.readouterr().err


def test_renew_keeps_or_changes_the_groups(tmp_path, capsys):
    """`cert renew` keeps the groups unless --groups is given ("" removes them all); the
    key and name stay (docs/engine.md, which certificate's groups count)."""
    d = str(tmp_path / "pki")
    main(["ca", "init", "--dir", d])
    main(["cert", "sign", "--ca-dir", d, "--name", "host-4", "--groups", "web,db"])
    first = load(d, "host-4")
    assert main(["cert", "renew", "--ca-dir", d, "--name", "host-4"]) == 0
    assert load(d, "host-4").groups == ("web", "db")
    assert main(["cert", "renew", "--ca-dir", d, "--name", "host-4", "--groups", "web"]) == 0
    assert "groups ['web']" in capsys.readouterr().out
    renewed = load(d, "host-4")
    assert (renewed.groups, renewed.key, renewed.name) == (("web",), first.key, "host-4")
    assert main(["cert", "renew", "--ca-dir", d, "--name", "host-4", "--groups", ""]) == 0
    assert load(d, "host-4").groups == ()


def test_sign_and_renew_refuse_while_the_ca_certificate_is_not_valid(tmp_path, capsys):
    """A CA certificate that expired (or is not valid yet) signs nothing: a certificate
    it signs is refused everywhere at once (docs/protocol.md 3.4), so `cert sign` and
    `cert renew` say so, with what to do, and write no file."""
    from nacl.signing import SigningKey
    d = str(tmp_path / "pki")
    assert main(["ca", "init", "--dir", d]) == 0
    assert main(["cert", "sign", "--ca-dir", d, "--name", "host-5"]) == 0
    key = SigningKey(pki.read_secret(os.path.join(d, "ca.key")))
    now = int(time.time())
    for (nb, na), words in (((now - 400 * 86400, now - 86400), "make a new CA"),
                            ((now + 86400, now + 400 * 86400), "check this host's clock")):
        os.unlink(os.path.join(d, "ca.crt"))
        pki.write_public(os.path.join(d, "ca.crt"), certs.create_ca(key, "net", nb, na))
        capsys.readouterr()
        assert main(["cert", "sign", "--ca-dir", d, "--name", "host-6"]) == 1
        err = capsys.readouterr().err
        assert "ca.crt" in err and words in err, err
        assert not os.path.exists(os.path.join(d, "host-6.key")) and not os.path.exists(os.path.join(d, "host-6.crt"))
        before = pki.read_file(os.path.join(d, "host-5.crt"), "certificate")
        assert main(["cert", "renew", "--ca-dir", d, "--name", "host-5"]) == 1
        assert words in capsys.readouterr().err
        assert pki.read_file(os.path.join(d, "host-5.crt"), "certificate") == before
