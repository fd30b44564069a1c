"""An admin's first run (issue #10): well-known CA names for acme_directory_url and
--staging, --init writing a config that loads and issues, a change of CA reissuing
every certificate from the new CA, and a broken challenge route refused before the
CA hears of the run.

The real CAs' directories are never contacted (the tests run on loopback only): a
CA name is checked where it is resolved, at config load, in process and through
--status; the reissue on a change of CA uses two lab pebbles.
"""

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from conftest import make_config, run_acmebot
from lab import base_config, deep_merge, edit_key_state, forget_issuers, load_acmebot_config
from test_issue import assert_clean, assert_ok, assert_second_run_changes_nothing, check_issued, default_paths
from test_units import ab, config, parse

CA_NAMES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "zerossl": "https://acme.zerossl.com/v2/DV90",
    "google": "https://dv.acme-v02.api.pki.goog/directory",
    "google-staging": "https://dv.acme-v02.test-api.pki.goog/directory",
    "buypass": "https://api.buypass.com/acme/directory",
    "buypass-staging": "https://api.test4.buypass.no/acme/directory",
    "sslcom-rsa": "https://acme.ssl.com/sslcom-dv-rsa",
    "sslcom-ecc": "https://acme.ssl.com/sslcom-dv-ecc",
}


def one_error(result):
    """The run failed with exit 2 and one ERROR line per problem, no traceback."""
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("ERROR: ")
    return result.stderr


def edit(path, change):
    raw = json.loads(Path(path).read_text())
    change(raw)
    Path(path).write_text(json.dumps(raw, indent=2))


def issuers(config_path, key_name):
    """By "name/key_type", the CA (directory URL) each certificate of key_name was issued by."""
    state = ab.KeyState.load(load_acmebot_config(config_path), key_name)
    return {name: record.directory for name, record in state.issued.items() if record.directory}


def leaf(tmp_path, name, key_type="ecdsa"):
    return x509.load_pem_x509_certificate(default_paths(tmp_path, name, key_type)["certificate"].read_bytes())


# -- CA names and --staging ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, url", sorted(CA_NAMES.items()))
def test_a_ca_name_resolves_to_its_directory_at_load(name, url):
    assert parse(config(settings={"acme_directory_url": name})).settings.acme_directory_url == url
    assert parse(config(settings={"acme_directory_url": name.upper()})).settings.acme_directory_url == url


def test_a_url_stays_as_given_and_an_unknown_name_is_refused():
    url = "https://ca.example.net/acme/directory"
    assert parse(config(settings={"acme_directory_url": url})).settings.acme_directory_url == url
    with pytest.raises(ab.ConfigError) as error:
        parse(config(settings={"acme_directory_url": "letsencrpyt"}))
    assert "settings.acme_directory_url: must be an http:// or https:// URL or a CA name" in str(error.value)
    assert "did you mean 'letsencrypt'?" in str(error.value)


@pytest.mark.parametrize("name, staging", [
    ("letsencrypt", "letsencrypt-staging"), ("google", "google-staging"), ("buypass", "buypass-staging"),
    ("letsencrypt-staging", "letsencrypt-staging"), ("google-staging", "google-staging"),
])
def test_staging_directory_of_a_known_ca(name, staging):
    assert ab.staging_directory(CA_NAMES[name]) == CA_NAMES[staging]


@pytest.mark.parametrize("url", [CA_NAMES["zerossl"], CA_NAMES["sslcom-ecc"], "https://127.0.0.1:14000/dir"])
def test_staging_directory_of_a_ca_without_one_is_refused(url):
    with pytest.raises(ab.ConfigError, match=r"^--staging: settings.acme_directory_url .* has no known staging"):
        ab.staging_directory(url)


def test_ca_name_through_the_command_line(lab, tmp_path):
    """--status loads the name (no network); a misspelt name is one line, exit 2."""
    config_path = make_config(tmp_path, lab, {"settings": {"acme_directory_url": "google"},
                                              "certificates": {"ca-name.example.test": {}}})
    result = run_acmebot(config_path, "--status")
    assert_ok(result)
    assert "ca-name.example.test" in result.stdout
    edit(config_path, lambda raw: raw["settings"].update(acme_directory_url="gogle"))
    stderr = one_error(run_acmebot(config_path, "--status"))
    assert "settings.acme_directory_url: must be an http:// or https:// URL or a CA name" in stderr
    assert "did you mean 'google'?" in stderr


def test_staging_with_a_ca_that_has_no_staging_directory_is_refused(lab, tmp_path):
    config_path = make_config(tmp_path, lab, {"certificates": {"staging.example.test": {}}})
    stderr = one_error(run_acmebot(config_path, "--staging"))
    assert stderr.count("\n") == 1
    assert f"--staging: settings.acme_directory_url {lab.directory_url} has no known staging directory" in stderr
    assert not (tmp_path / "resource" / "client_key.pem").exists()
    assert not (tmp_path / "certs").exists()


# -- --init ----------------------------------------------------------------------------------------------

def test_init_writes_a_private_config_that_loads_and_is_never_overwritten(tmp_path):
    target = tmp_path / "acmebot.json"
    webroot = tmp_path / "www"
    result = run_acmebot(target, "--init", "--email", "me@example.com", "--http", webroot,
                         "init.example.com", "www.init.example.com")
    assert_ok(result)
    assert str(target) in result.stdout and "--staging" in result.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    raw = json.loads(target.read_text())
    assert raw["account"] == {"email": "me@example.com"}
    assert raw["settings"] == {"acme_directory_url": "letsencrypt"}
    assert raw["certificates"] == {"init.example.com": {"alt_names": {"example.com": ["init", "www.init"]}}}
    assert raw["directories"] == {"http_challenge": str(webroot / ".well-known" / "acme-challenge")}

    loaded = ab.load_config(str(target))
    assert loaded.settings.acme_directory_url == CA_NAMES["letsencrypt"]
    assert [c.names for k in loaded.keys for c in k.certificates] == [("init.example.com", "www.init.example.com")]
    status = run_acmebot(target, "--status")
    assert_ok(status)
    assert "no certificate yet" in status.stdout

    before = target.read_bytes()
    stderr = one_error(run_acmebot(target, "--init", "--http", webroot, "other.example.com"))
    assert f"--init: {target} exists: it is not overwritten" in stderr
    assert target.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--http", "{tmp}/www"], "--init needs the certificate's names and a challenge route"),
    (["one.example.com"], "--init needs the certificate's names and a challenge route"),
    (["--http", "{tmp}/www", "--zone", "example.com", "one.example.com"], "--zone goes with --dns-key"),
    (["--dns-key", "{tmp}/k.key", "--zone", "example.org", "one.example.com"],
     "--init: one.example.com is not in the zone example.org"),
    (["--dns-key", "{tmp}/missing.key", "one.example.com"], "cannot read TSIG key {tmp}/missing.key"),
    (["--http", "/etc/passwd/www", "one.example.com"], "/etc/passwd is not a directory"),
    (["--email", "not-an-address", "--http", "{tmp}/www", "one.example.com"],
     "account.email: must be an email address"),
])
def test_init_refuses_what_would_not_work_and_writes_nothing(tmp_path, args, message):
    target = tmp_path / "acmebot.json"
    (tmp_path / "k.key").write_text('key "k" { algorithm hmac-sha256; secret "c2VjcmV0"; };\n')
    stderr = one_error(run_acmebot(target, "--init", *[a.format(tmp=tmp_path) for a in args]))
    assert message.format(tmp=tmp_path) in stderr
    assert not target.exists()


def test_init_options_without_init_are_refused(lab, tmp_path):
    config_path = make_config(tmp_path, lab, {"certificates": {"initopt.example.test": {}}})
    assert "go with --init" in one_error(run_acmebot(config_path, "--http", tmp_path))


def test_an_init_config_adapted_to_the_lab_issues(lab, tmp_path):
    """--init with the lab's TSIG key; the test then points the CA, the resolvers,
    the file owner and the directories at the lab, as an admin would edit nothing
    but the CA for a real one."""
    lab.add_hosts("example.test", "init1", "www.init1")
    target = tmp_path / "acmebot.json"
    key_file = lab.zone_key_files["example.test"]
    assert_ok(run_acmebot(target, "--init", "--email", "admin@example.test", "--dns-key", key_file,
                          "init1.example.test", "www.init1.example.test"))
    written = json.loads(target.read_text())
    assert written["zone_update_keys"] == {"example.test": str(key_file)}
    base = base_config(tmp_path, lab)
    target.write_text(json.dumps(deep_merge(written, {
        "settings": base["settings"], "directories": base["directories"],
        "zone_update_keys": {"example.test": {"file": str(key_file), "server": "127.0.0.1",
                                              "port": lab.dns_port}}})))
    assert_ok(run_acmebot(target))
    names = ["init1.example.test", "www.init1.example.test"]
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(tmp_path, "init1.example.test", key_type), key_type, names)
    assert_second_run_changes_nothing(target, tmp_path)


# -- a change of CA reissues -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_pebble(lab):
    return lab.pebbles.get("fr-second") or lab.start_pebble("fr-second")


def issuer_root(pebble_server):
    return x509.load_pem_x509_certificate(pebble_server.root_pem().encode())


def test_a_change_of_ca_reissues_from_the_new_ca(lab, second_pebble, tmp_path):
    lab.add_hosts("example.test", "caswitch", "caswitch2")
    names = ["caswitch.example.test", "caswitch2.example.test"]
    config_path = make_config(tmp_path, lab, {"settings": {"key_size": 0},
                                              "certificates": {n: {} for n in names}})
    assert_ok(run_acmebot(config_path))
    assert issuers(config_path, names[0]) == {f"{names[0]}/ecdsa": lab.directory_url}
    first = {n: leaf(tmp_path, n) for n in names}

    edit(config_path, lambda raw: raw["settings"].update(acme_directory_url=second_pebble.directory_url))
    result = run_acmebot(config_path, "--verbose")
    assert_ok(result)
    assert f"issued by another CA ({lab.directory_url}, now {second_pebble.directory_url})" in result.stdout
    for name in names:
        check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=second_pebble)
        assert leaf(tmp_path, name).serial_number != first[name].serial_number
        assert issuers(config_path, name) == {f"{name}/ecdsa": second_pebble.directory_url}
    assert issuer_root(second_pebble).subject != issuer_root(lab.pebble).subject
    registration = json.loads((tmp_path / "resource" / "registration.json").read_text())
    assert registration["directory"] == second_pebble.directory_url
    assert_second_run_changes_nothing(config_path, tmp_path)


def test_a_state_without_the_ca_record_counts_as_the_same_ca(lab, tmp_path):
    """A key state written before the CA was recorded (an older acmebot) must not
    make every certificate reissue: it is the same CA until the next issuance."""
    lab.add_hosts("example.test", "caold")
    name = "caold.example.test"
    config_path = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    assert_ok(run_acmebot(config_path))
    edit_key_state(config_path, name, forget_issuers)
    assert issuers(config_path, name) == {}
    assert_second_run_changes_nothing(config_path, tmp_path)
    assert_ok(run_acmebot(config_path, "--renew"))
    assert issuers(config_path, name) == {f"{name}/ecdsa": lab.directory_url}


# -- challenge routes checked before the CA is contacted -------------------------------------------------

def assert_nothing_at_the_ca(tmp_path):
    """No account was registered (the run stopped before the CA heard of it)."""
    assert not (tmp_path / "resource" / "client_key.pem").exists()
    assert not (tmp_path / "resource" / "registration.json").exists()
    assert not (tmp_path / "certs").exists()


def test_a_missing_reload_zone_command_is_refused_before_the_ca(lab, tmp_path):
    lab.add_hosts("local.test", "noroute")
    command = str(tmp_path / "no-such" / "reload-zone.sh")
    config_path = make_config(tmp_path, lab, {"settings": {"reload_zone_command": command},
                                              "zone_update_keys": None,
                                              "certificates": {"noroute.local.test": {}}})
    stderr = one_error(run_acmebot(config_path))
    assert stderr.count("\n") == 1
    assert f"settings.reload_zone_command: {command} does not exist" in stderr
    assert "noroute.local.test" in stderr
    assert ("give the zone a zone_update_keys entry (RFC 2136), an http_challenges directory, "
            "or a working reload_zone_command") in stderr
    assert_nothing_at_the_ca(tmp_path)


def test_a_reload_zone_command_that_is_no_executable_is_refused(lab, tmp_path):
    script = tmp_path / "reload-zone.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    config_path = make_config(tmp_path, lab, {"settings": {"reload_zone_command": f"{script} --flag"},
                                              "zone_update_keys": None,
                                              "certificates": {"noexec.local.test": {}}})
    assert f"{script} is not an executable file" in one_error(run_acmebot(config_path))
    assert_nothing_at_the_ca(tmp_path)
    edit(config_path, lambda raw: raw["settings"].update(reload_zone_command="no-such-reload-command-x"))
    assert "no-such-reload-command-x is not found in PATH" in one_error(run_acmebot(config_path))
    assert_nothing_at_the_ca(tmp_path)


def test_an_unreadable_or_garbled_tsig_key_is_refused_before_the_ca(lab, tmp_path):
    garbled = tmp_path / "garbled.key"
    garbled.write_text("this is no key\n")
    config_path = make_config(tmp_path, lab, {
        "zone_update_keys": {"example.test": {"file": str(garbled)}},
        "certificates": {"badkey.example.test": {}}})
    stderr = one_error(run_acmebot(config_path))
    assert f"zone_update_keys.example.test: {garbled} is not a BIND TSIG key file" in stderr
    assert "(needed for badkey.example.test)" in stderr
    assert_nothing_at_the_ca(tmp_path)
    missing = tmp_path / "missing.key"
    edit(config_path, lambda raw: raw["zone_update_keys"]["example.test"].update(file=str(missing)))
    assert f"cannot read TSIG key {missing}" in one_error(run_acmebot(config_path))
    assert_nothing_at_the_ca(tmp_path)


def test_an_http_challenge_directory_that_cannot_be_created_is_refused(lab, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    directory = blocker / "acme-challenge"
    config_path = make_config(tmp_path, lab, {"http_challenges": {"webroute.example.test": str(directory)},
                                              "certificates": {"webroute.example.test": {}}})
    stderr = one_error(run_acmebot(config_path))
    assert f"the http-01 directory {directory} (for webroute.example.test) cannot be created: " \
           f"{blocker} is not a directory" in stderr
    assert_nothing_at_the_ca(tmp_path)


def test_routes_that_work_pass_the_check(lab, tmp_path):
    """The lab's config (RFC 2136 keys, a local zone, an http-01 directory still to
    be created) passes, in process, and so does a name with no key in a config
    that has keys, whose _acme-challenge may be CNAME-delegated into a keyed zone."""
    raw = deep_merge(base_config(tmp_path, lab), {
        "settings": {"reload_zone_command": str(tmp_path / "no-such-command")},
        "http_challenges": {"web.example.test": str(tmp_path / "new" / "acme-challenge")},
        "certificates": {"web.example.test": {"alt_names": {"example.test": ["web", "dns"],
                                                             "example.net": ["@"]}},
                         "maybe-delegated.other.test": {}}})
    loaded = ab.parse_config(raw, str(tmp_path / "acmebot.json"))
    ab.check_challenge_routes(loaded, loaded.keys)
    assert not (tmp_path / "new").exists()
    follower = ab.parse_config(deep_merge(raw, {"settings": {"follower_mode": True},
                                                "zone_update_keys": None}), str(tmp_path / "acmebot.json"))
    ab.check_challenge_routes(follower, follower.keys)       # a follower answers no challenges
