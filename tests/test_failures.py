"""Integration tests: what acmebot does when the config, the CA, DNS or http-01 fail.

Errors are one line each on stderr, naming the place; no traceback; exit codes
2 (config), 3 (ACME), 4 (DNS/validation); a failing certificate leaves no files
while the other certificates of the same run are still issued.
"""

import json

import pytest

from conftest import make_config, run_acmebot
from lab import base_config, free_port
from test_issue import (KEY_TYPES, assert_clean, assert_no_challenge_records, assert_ok, challenge_dir_files, check_issued,
                        default_paths, snapshot)


def error_lines(result):
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("ERROR: ") for line in lines), result.stderr
    return lines


def files_of(tmp_path, cert_name, key_name=None):
    """Every file on disk whose name carries the certificate's or key's name."""
    names = {cert_name, key_name or cert_name}
    return sorted(str(p) for p in tmp_path.rglob("*")
                  if p.is_file() and any(n in p.name for n in names))


# -- malformed configurations --------------------------------------------------------------

def _config_with(tmp_path, lab, mutate):
    config = base_config(tmp_path, lab)
    config["certificates"] = {"cfg.example.test": {}}
    mutate(config)
    return config


def _set(path, value):
    def mutate(config):
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return mutate


def _both_sections(config):
    config["private_keys"] = {"cfg.example.test": {"certificates": {"other.example.test": {}}}}


BAD_CONFIGS = {
    "unknown_option": (_set(["settings", "key_sise"], 2048), ["settings.key_sise", "unknown option"]),
    "wrong_type": (_set(["settings", "key_size"], "big"), ["settings.key_size", "'big'"]),
    "name_in_both_sections": (_both_sections, ["certificates.cfg.example.test", "private_keys"]),
    "unknown_file_user": (_set(["settings", "file_user"], "no-such-user-xyz"),
                          ["settings.file_user", "no-such-user-xyz"]),
    "common_name_not_in_alt_names": (
        _set(["certificates", "cfg.example.test"], {"common_name": "cfg.example.test",
                                                    "alt_names": {"example.test": ["other"]}}),
        ["certificates.cfg.example.test.common_name", "cfg.example.test"]),
    "unknown_directory_field": (_set(["directories", "certificate"], "/tmp/acmebot-certs/{nope}"),
                                ["directories.certificate", "{nope}"]),
    "unknown_zone_key_option": (_set(["zone_update_keys", "example.test", "sever"], "127.0.0.1"),
                                ["zone_update_keys.example.test.sever", "unknown option"]),
}


def assert_config_error(tmp_path, result, expected_lines):
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = error_lines(result)
    assert len(lines) == len(expected_lines), lines
    for line, needles in zip(lines, expected_lines):
        assert str(tmp_path / "acmebot.json") in line
        for needle in needles:
            assert needle in line, (needle, line)
    # nothing was created: no directories, no log, no account
    assert [p.name for p in tmp_path.iterdir()] == ["acmebot.json"]


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_config(lab, tmp_path, case):
    mutate, needles = BAD_CONFIGS[case]
    (tmp_path / "acmebot.json").write_text(json.dumps(_config_with(tmp_path, lab, mutate), indent=2))
    result = run_acmebot(tmp_path / "acmebot.json")
    assert_config_error(tmp_path, result, [needles])


def test_invalid_json(lab, tmp_path):
    (tmp_path / "acmebot.json").write_text('{\n  "account": {"email": "a@example.test"},\n  "settings": {,}\n}\n')
    result = run_acmebot(tmp_path / "acmebot.json")
    assert_config_error(tmp_path, result, [["line 3", "not valid JSON"]])


def test_several_config_problems_one_line_each(lab, tmp_path):
    def mutate(config):
        for step in (_set(["settings", "key_size"], "big"), _set(["settings", "colour_output"], True),
                     _set(["directories", "chain"], "/tmp/{nope}/chain")):
            step(config)
    (tmp_path / "acmebot.json").write_text(json.dumps(_config_with(tmp_path, lab, mutate), indent=2))
    result = run_acmebot(tmp_path / "acmebot.json")
    assert_clean(result)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 3, lines
    for place in ("settings.key_size", "settings.colour_output", "directories.chain"):
        assert sum(place in line for line in lines) == 1, (place, lines)
    assert [p.name for p in tmp_path.iterdir()] == ["acmebot.json"]


# -- a failed reissue ----------------------------------------------------------------------

def test_failed_reissue_keeps_installed_files(lab, tmp_path):
    """A name added later whose http-01 file is not served: the reissue fails
    with exit 4 and the installed key and certificate files stay as they were."""
    lab.add_hosts("example.test", "keepold", "www.keepold")
    name = "keepold.example.test"
    unserved = tmp_path / "not-served"          # nginx serves lab.http_challenge_dir only
    overrides = {"http_challenges": {"www.keepold.example.test": str(unserved)},
                 "certificates": {name: {}}}
    config = make_config(tmp_path, lab, overrides)
    assert_ok(run_acmebot(config))
    before = snapshot(tmp_path)

    overrides["certificates"][name] = {"alt_names": {"example.test": ["keepold", "www.keepold"]}}
    config = make_config(tmp_path, lab, overrides)
    before["acmebot.json"] = snapshot(tmp_path)["acmebot.json"]
    files_before = challenge_dir_files(lab)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stdout == ""
    lines = error_lines(result)
    assert len(lines) == 2, lines                      # one per key type
    for line in lines:
        assert name in line and "www.keepold.example.test" in line and "http-01" in line, line
    after = snapshot(tmp_path)
    # the run records its result for --status; every installed file is untouched
    assert json.loads(after.pop("resource/status.json")[2])["certificates"][f"{name}/rsa"]["result"] == "failed"
    before.pop("resource/status.json", None)
    after.pop("resource/authorizations.json", None)
    before.pop("resource/authorizations.json", None)
    assert after == before
    assert not unserved.exists() or list(unserved.iterdir()) == []
    assert challenge_dir_files(lab) == files_before
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, name, key_type), key_type, [name])


# -- the CA cannot be reached --------------------------------------------------------------

def test_ca_unreachable(lab, tmp_path):
    lab.add_hosts("example.test", "noca")
    url = f"https://127.0.0.1:{free_port()}/dir"    # nothing listens there
    config = make_config(tmp_path, lab, {"settings": {"acme_directory_url": url},
                                         "certificates": {"noca.example.test": {}}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and url in lines[0], lines     # one line naming the CA
    assert files_of(tmp_path, "noca.example.test") == []
    assert not (tmp_path / "resource" / "client_key.pem").exists()


# -- http-01 file not served ---------------------------------------------------------------

def test_http01_not_served_fails_only_that_certificate(lab, tmp_path):
    lab.add_hosts("example.test", "nohttp", "okhttp")
    unserved = tmp_path / "not-served"          # nginx serves lab.http_challenge_dir only
    config = make_config(tmp_path, lab, {
        "http_challenges": {"nohttp.example.test": str(unserved),
                            "okhttp.example.test": str(lab.http_challenge_dir)},
        "certificates": {"nohttp.example.test": {}, "okhttp.example.test": {}},
    })
    files_before = challenge_dir_files(lab)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    lines = error_lines(result)
    assert all("nohttp.example.test" in line for line in lines), lines
    assert any("http-01" in line for line in lines), lines
    assert files_of(tmp_path, "nohttp.example.test") == []
    assert not unserved.exists() or list(unserved.iterdir()) == []
    assert challenge_dir_files(lab) == files_before
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, "okhttp.example.test", key_type), key_type,
                     ["okhttp.example.test"])
    assert "Issued certificate okhttp.example.test (rsa)" in result.stdout
    assert "nohttp" not in result.stdout


# -- TSIG key rejected by BIND -------------------------------------------------------------

def test_tsig_key_rejected(lab, tmp_path):
    lab.add_hosts("example.test", "badtsig")
    lab.add_hosts("example.net", "goodtsig")
    bad_key = lab.bad_key_file(tmp_path)
    config = make_config(tmp_path, lab, {
        "zone_update_keys": {"example.test": {"file": str(bad_key)}},
        "certificates": {"badtsig.example.test": {}, "goodtsig.example.net": {}},
    })
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert lines and all("badtsig.example.test" in line for line in lines), lines
    assert any("example.test" in line and "update.example.test" in line for line in lines), lines
    assert "goodtsig" not in result.stderr
    assert files_of(tmp_path, "badtsig.example.test") == []
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, "goodtsig.example.net", key_type), key_type,
                     ["goodtsig.example.net"])
    assert_no_challenge_records(lab, ["badtsig.example.test", "goodtsig.example.net"])
    secret = bad_key.read_text().split('secret "')[1].split('"')[0]
    assert secret not in result.stdout + result.stderr
    assert secret not in (tmp_path / "log" / "acmebot.log").read_text()


def test_tsig_key_rejected_no_cleanup_of_records_never_added(lab, tmp_path):
    """BIND refused the (atomic) UPDATE, so no record was added: acmebot should not
    try to delete them again with the same key and warn that it "could not remove
    the challenge records" (which sends the user looking for leftovers)."""
    lab.add_hosts("example.test", "badtsig2")
    config = make_config(tmp_path, lab, {
        "zone_update_keys": {"example.test": {"file": str(lab.bad_key_file(tmp_path))}},
        "certificates": {"badtsig2.example.test": {"key_types": ["ecdsa"]}},
    })
    result = run_acmebot(config)
    assert_clean(result)
    assert "could not remove" not in result.stderr, result.stderr
    assert result.returncode == 4, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "update.example.test" in lines[0], lines


def test_zone_without_name_servers_is_not_answered(lab, tmp_path):
    """No name server answers for the zone: the challenge is not answered (the
    CA would only fail it) and the error names the lookup that failed."""
    name = "host.nozone.test"
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0, "reload_zone_command": "true"},   # "publishes" nothing
        "certificates": {name: {"alt_names": {"nozone.test": ["host"]}}}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "DNS lookup of _acme-challenge.host.nozone.test" in result.stderr and "REFUSED" in result.stderr
    assert "validation failed" not in result.stderr
    assert files_of(tmp_path, name) == []


def test_unwritable_directory_is_a_file_error_and_nothing_is_installed(lab, tmp_path):
    """The certificate directory cannot be created: exit 5 naming the path, and
    the transaction leaves no key or certificate file behind."""
    lab.add_hosts("example.test", "nowrite")
    name = "nowrite.example.test"
    (tmp_path / "certs").write_text("a file where the certificate directory should be")
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    assert str(tmp_path / "certs") in result.stderr
    assert files_of(tmp_path, name) == []
    assert not list(tmp_path.glob("private/*.key"))
    # put right, the next run installs everything
    (tmp_path / "certs").unlink()
    assert_ok(run_acmebot(config))
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])


def test_damaged_private_key_is_never_replaced(lab, tmp_path):
    """An unreadable private key stops only its own certificates (exit 5, the file
    named); acmebot never generates a new key over it; other keys carry on."""
    lab.add_hosts("example.test", "dmg1", "dmg2")
    names = ["dmg1.example.test", "dmg2.example.test"]
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0},
                                         "certificates": {n: {} for n in names}})
    assert_ok(run_acmebot(config))
    broken = default_paths(tmp_path, names[0], "ecdsa")["key"]
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    before = snapshot(tmp_path)
    result = run_acmebot(config, "--renew")
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"cannot load private key {broken}" in result.stderr
    assert broken.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\nnot a key")
    after = snapshot(tmp_path)
    for path, entry in before.items():          # dmg1's files are untouched
        if names[0] in path:
            assert after[path] == entry, path
    assert after[f"certs/{names[1]}.ecdsa.pem"] != before[f"certs/{names[1]}.ecdsa.pem"]   # dmg2 renewed
