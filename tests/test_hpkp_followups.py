"""HPKP files that follow rollovers and config changes, and --verify of the
Public-Key-Pins header over https (regression tests for bugs found in review)."""

from conftest import make_config, run_acmebot
from test_verify import assert_verified, certs, issue, set_verify, warnings_of, where
from test_tlsa_hpkp import spki_of_key
from test_issue import default_paths
from tls_servers import tls_servers  # noqa: F401,F811 (fixture)
from test_issue import KEY_TYPES, assert_ok
from test_tlsa_hpkp import all_pins, hpkp_text, key_spkis, pin


def test_hpkp_files_pin_the_previous_keys_after_rollover(lab, tmp_path):
    """Spec: while previous private key files are present, their pins are in the HPKP
    headers — including right after the rollover that writes them."""
    lab.add_hosts("example.test", "hpkpprev2")
    name = "hpkpprev2.example.test"
    previous = tmp_path / "previous"
    config = make_config(tmp_path, lab, {"settings": {"hpkp_days": 1},
                                         "directories": {"previous_key": str(previous)},
                                         "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    before = key_spkis(tmp_path, name)
    assert_ok(run_acmebot(config, "--rollover", "--force"))
    nginx = tmp_path / "hpkp" / f"{name}.nginx"
    pins = all_pins(tmp_path, name, previous)       # primary, backup, previous per key type
    assert {pin(before[t][0]) for t in KEY_TYPES} <= set(pins)
    assert nginx.read_text() == hpkp_text(pins, 1)


def test_hpkp_files_drop_the_previous_keys_once_their_files_are_removed(lab, tmp_path):
    """Removing the previous key files (once the new keys are deployed everywhere)
    drops their pins from the HPKP files on the next run."""
    lab.add_hosts("example.test", "hpkpprev3")
    name = "hpkpprev3.example.test"
    previous = tmp_path / "previous"
    config = make_config(tmp_path, lab, {"settings": {"hpkp_days": 1},
                                         "directories": {"previous_key": str(previous)},
                                         "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    assert_ok(run_acmebot(config, "--rollover", "--force"))
    assert_ok(run_acmebot(config))
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(all_pins(tmp_path, name, previous), 1)
    for key_type in KEY_TYPES:
        (previous / f"{name}_previous.{key_type}.key").unlink()
    assert_ok(run_acmebot(config))
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(all_pins(tmp_path, name), 1)


def test_hpkp_files_follow_config_changes(lab, tmp_path):
    """hpkp_report_uri / pin_subdomains / hpkp_days changed in the config: the next
    run rewrites the HPKP files."""
    lab.add_hosts("example.test", "hpkpconf")
    name = "hpkpconf.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0, "hpkp_days": 5, "pin_subdomains": False,
                                                      "hpkp_report_uri": "https://r.example.test/"},
                                         "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    pins = [pin(s) for s in key_spkis_ecdsa(tmp_path, name)]
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == \
        hpkp_text(pins, 5, False, "https://r.example.test/")


def key_spkis_ecdsa(tmp_path, name):
    from test_tlsa_hpkp import spki_of_key
    from test_issue import default_paths
    paths = default_paths(tmp_path, name, "ecdsa")
    return [spki_of_key(paths["key"]), spki_of_key(paths["backup"])]


# -- verify with protocol http: tls_probe's HTTP read raises SSL.WantReadError ----------------

def test_verify_https_with_hpkp_header_passes(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vok")
    port = tls_servers.https([name], certs(tmp_path, name), include=tmp_path / "hpkp" / f"{name}.nginx")
    set_verify(config, name, [{"port": port, "protocol": "http"}])
    assert_verified(run_acmebot(config, "--verify"))
    # same server, plain int port form: no header check, still fine
    set_verify(config, name, [port])
    assert_verified(run_acmebot(config, "--verify"))


def test_verify_wrong_or_missing_pin_header_warns(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vpin")
    wrong = tmp_path / "wrong-pins.conf"
    good = (tmp_path / "hpkp" / f"{name}.nginx").read_text()
    # one real pin replaced by another key's
    other = spki_of_key(default_paths(tmp_path, name, "rsa")["key"])
    real_pins = good.split('\\"')[1::2]
    import base64
    import hashlib
    bogus = base64.b64encode(hashlib.sha256(other + b"x").digest()).decode()
    wrong.write_text(good.replace(real_pins[0], bogus))
    port = tls_servers.https([name], certs(tmp_path, name), include=wrong)
    bare = tls_servers.https([name], certs(tmp_path, name))
    set_verify(config, name, [{"port": port, "protocol": "http"}, {"port": bare, "protocol": "http"}])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 4, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, port, key_type) in w and "Public-Key-Pins" in w
                   and "3 of 4" in w and "1 other" in w for w in warnings), warnings
        assert any(where(name, bare, key_type) in w and "no Public-Key-Pins header" in w for w in warnings), warnings


