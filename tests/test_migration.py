"""Coming from acmebot 2.x (issue 11): the real acmebot 2.17.3 issues certificates in the lab,
then this acmebot runs on the same config and directories.

acmebot 2.17.3 (PyPI, with its pins acme==3.3.0 josepy==1.15.0: it requires acme<4 and
josepy<2) lives in its own virtualenv, $ACMEBOT_V2_PROGRAM or
/opt/acmebot-test/acmebot2-venv/bin/acmebot, installed by tests/install-deps (the tests' network
namespace has only loopback, nothing can be installed once they run).  A missing one fails the
tests, it never skips them.

2.x resolves through /etc/resolv.conf and port 53 (py3dns) and updates zones with `nsupdate -k`,
so this module starts a BIND of its own on 127.0.0.1:53 (free inside the tests' network
namespace) serving migrate.test, a pebble validating through it, and a private mount namespace
(tests/lab/mountns.py) whose /etc/resolv.conf names 127.0.0.1: both acmebots run in it, as
tests/bench does for its "original".  2.x reads its public suffix list from the Debian package
publicsuffix (file:// URL), so it never reaches out.

Also here, without the CA: YAML configs, conf.d/ merging, and the 2.x options that are mapped or
refused.
"""

import json
import os
import stat
import subprocess
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from lab import Server, named_options, parse_key_text, run_acmebot
from lab.mountns import MountNamespace
from test_issue import assert_clean

ACMEBOT2_ENV = "ACMEBOT_V2_PROGRAM"
DEFAULT_ACMEBOT2 = "/opt/acmebot-test/acmebot2-venv/bin/acmebot"
INSTALL_HINT = ("install it with: python3 -m venv /opt/acmebot-test/acmebot2-venv && "
                "/opt/acmebot-test/acmebot2-venv/bin/pip install acmebot==2.17.3 acme==3.3.0 josepy==1.15.0 "
                f"(sudo tests/install-deps does; or set {ACMEBOT2_ENV} to its acmebot)")
PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"   # Debian package publicsuffix
ZONE = "migrate.test"
KEY_NAME = "update.migrate.test"
HOSTS = ("one", "www.one", "two", "y1", "y2")


def require_acmebot2():
    program = os.environ.get(ACMEBOT2_ENV) or DEFAULT_ACMEBOT2
    if not os.access(program, os.X_OK):
        pytest.fail(f"acmebot 2.17.3 is not available ({program} not found); {INSTALL_HINT}", pytrace=False)
    if not os.path.isfile(PUBLIC_SUFFIX_LIST):
        pytest.fail(f"{PUBLIC_SUFFIX_LIST} not found: install the Debian package publicsuffix "
                    "(sudo tests/install-deps does)", pytrace=False)
    return program


class Port53:
    """BIND on 127.0.0.1:53 for migrate.test, a pebble validating through it, and a
    mount namespace whose /etc/resolv.conf is `nameserver 127.0.0.1`."""

    def __init__(self, root, lab):
        self.root = Path(root)
        self.lab = lab
        self.bind_dir = self.root / "bind"
        self.bind_dir.mkdir(mode=0o755, parents=True)
        text = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", KEY_NAME],
                              check=True, capture_output=True, text=True).stdout
        parse_key_text(text)            # a well-formed key, or LabError now
        self.key_file = self.root / f"{KEY_NAME}.key"
        self.key_file.write_text(text)
        self.key_file.chmod(0o600)
        records = "".join(f"{host} IN A 127.0.0.1\n" for host in HOSTS)
        (self.bind_dir / f"{ZONE}.zone").write_text(
            f"$TTL 300\n@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n"
            f"@ IN NS ns1.{ZONE}.\nns1 IN A 127.0.0.1\n@ IN A 127.0.0.1\n" + records)
        conf = self.bind_dir / "named.conf"
        conf.write_text(f"{text}\n" + named_options(self.bind_dir, 53) +
                        f'zone "{ZONE}" {{\n    type primary;\n    file "{ZONE}.zone";\n'
                        f"    update-policy {{ grant {KEY_NAME} zonesub ANY; }};\n"
                        f"    allow-transfer {{ none; }};\n}};\n")
        self.named = Server("named-53", ["named", "-g", "-c", conf], self.bind_dir / "named.log", cwd=self.bind_dir)
        self.ns = None
        try:
            self.named.wait_ready(self._answers)
            self.pebble = lab.start_pebble("migration", dns_server="127.0.0.1:53")
            resolv = self.root / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
            self.ns = MountNamespace()
            self.ns.run("mount", "--bind", resolv, "/etc/resolv.conf")
            self.ns.mounts.append("/etc/resolv.conf")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _answers():
        request = dns.message.make_query(ZONE, "SOA")
        try:
            return bool(dns.query.udp(request, "127.0.0.1", port=53, timeout=0.5).answer)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def close(self):
        if self.ns:
            self.ns.close()
        self.named.stop()


@pytest.fixture(scope="module")
def port53(lab, tmp_path_factory):
    require_acmebot2()
    lab_53 = Port53(tmp_path_factory.mktemp("port53"), lab)
    yield lab_53
    lab_53.close()


def v2_config(work, port53, certificates):
    """A config as a 2.17.3 user writes it: its option names, its defaults where the lab
    allows (dhparam_size 0: 2.x runs `openssl dhparam` for minutes; no OCSP, CT or HPKP,
    whose defaults reach out to the Internet)."""
    work = Path(work)
    return {
        "account": {"email": f"admin@{ZONE}"},
        "settings": {
            "acme_directory_url": port53.pebble.directory_url,
            "acme_directory_verify_ssl": port53.lab.pebble_ca_bundle,
            "key_types": ["rsa", "ecdsa"],
            "key_size": 2048,
            "key_curve": "secp256r1",
            "key_provided": False,
            "dhparam_size": 0,
            "ecparam_curve": ["secp256r1"],
            "file_user": "root",
            "file_group": "root",
            "log_user": "root",
            "log_group": "root",
            "log_level": "debug",
            "warning_exit_code": False,
            "ct_submit_logs": [],
            "ocsp_responder_urls": [],
            "hpkp_days": 0,
            "reload_zone_command": None,
            "dns_lookup_delay": 1,
            "authorization_delay": 1,
            "public_suffix_list_url": f"file://{PUBLIC_SUFFIX_LIST}",
            "services": ["flag"],
        },
        "services": {"flag": f"touch {work / 'reloaded'}"},
        "directories": {
            "pid": str(work / "run"), "log": str(work / "log"), "resource": str(work / "resource"),
            "private_key": str(work / "private"), "backup_key": str(work / "private"),
            "previous_key": None, "full_key": str(work / "private"),
            "certificate": str(work / "certs"), "full_certificate": str(work / "certs"),
            "chain": str(work / "certs"), "param": str(work / "params"),
            "challenge": str(work / "challenge"), "http_challenge": None,
            "hpkp": None, "ocsp": None, "sct": str(work / "scts" / "{name}" / "{key_type}"),
            "update_key": str(port53.root), "archive": str(work / "archive"), "temp": str(work / "tmp"),
        },
        "zone_update_keys": {ZONE: {"file": port53.key_file.name, "server": "127.0.0.1", "port": 53}},
        "certificates": certificates,
    }


def run_v2(port53, config, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    return subprocess.run([*port53.ns.wrapper, require_acmebot2(), "--config", str(config), "--accept", *args],
                          capture_output=True, text=True, env=env, cwd=Path(config).parent, timeout=900)


def run_ours(port53, config, *args):
    return run_acmebot(config, *args, wrapper=port53.ns.wrapper, timeout=600)


def kept_files(work):
    """{relative path: bytes} of every key, certificate, chain and param file, and the archive."""
    work = Path(work)
    return {str(p.relative_to(work)): p.read_bytes()
            for d in ("private", "certs", "params", "archive") for p in (work / d).rglob("*") if p.is_file()}


def account_uri(work):
    return json.loads((Path(work) / "resource" / "registration.json").read_text())["uri"]


def test_takes_over_from_acmebot_2(port53, tmp_path):
    work = tmp_path
    for directory in ("run", "log", "resource", "private", "certs", "params", "challenge", "archive", "tmp"):
        (work / directory).mkdir(mode=0o755)
    config = work / "acmebot.json"
    config.write_text(json.dumps(v2_config(work, port53, {
        f"one.{ZONE}": {"alt_names": {ZONE: ["one", "www.one"]}},
        f"two.{ZONE}": {"alt_names": {ZONE: ["two"]}, "key_types": ["ecdsa"]},
    }), indent=2))

    v2 = run_v2(port53, config)
    assert v2.returncode == 0, v2.stdout + v2.stderr
    resource = work / "resource"
    v2_registration = json.loads((resource / "registration.json").read_text())
    v2_key = (resource / "client_key.json").read_bytes()
    assert "directory" not in v2_registration and v2_registration["uri"].startswith("https://127.0.0.1:")
    for name, types in ((f"one.{ZONE}", ("rsa", "ecdsa")), (f"two.{ZONE}", ("ecdsa",))):
        for key_type in types:
            for path in (work / "private" / f"{name}.{key_type}.key", work / "private" / f"{name}_backup.{key_type}.key",
                         work / "certs" / f"{name}.{key_type}.pem", work / "certs" / f"{name}_chain.{key_type}.pem"):
                assert path.is_file(), f"2.x did not write {path}:\n{v2.stdout}{v2.stderr}"
    before = kept_files(work)

    # ours, on the very same config file and directories
    result = run_ours(port53, config, "--verbose")
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "settings.acme_directory_verify_ssl (acmebot 2.x) is read as settings.acme_ca_bundle" in result.stdout
    assert f"took over the acmebot 2.x account {v2_registration['uri']}" in result.stdout
    after = kept_files(work)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert changed == [], f"changed by the first run: {changed}\n{result.stdout}"
    # the account: ours now, the same URL, the 2.x key kept in place and its registration archived
    registration = json.loads((resource / "registration.json").read_text())
    assert registration["uri"] == v2_registration["uri"]
    assert registration["directory"] == port53.pebble.directory_url
    assert (resource / "client_key.json").read_bytes() == v2_key
    assert stat.S_IMODE((resource / "client_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((resource / "registration.json").stat().st_mode) == 0o600
    archived = [p for p in (work / "archive").rglob("*registration.json*")]
    assert archived and json.loads(archived[0].read_text()) == v2_registration

    # a second run changes nothing either (no key state from 2.x must not mean "reissue")
    again = run_ours(port53, config)
    assert_clean(again)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p: b for p, b in kept_files(work).items() if p in before} == before

    # --renew works with the reused account: new certificates, same keys, same account
    renewed = run_ours(port53, config, "--renew")
    assert_clean(renewed)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert account_uri(work) == v2_registration["uri"]
    now = kept_files(work)
    for name, types in ((f"one.{ZONE}", ("rsa", "ecdsa")), (f"two.{ZONE}", ("ecdsa",))):
        for key_type in types:
            assert now[f"private/{name}.{key_type}.key"] == before[f"private/{name}.{key_type}.key"]
            assert now[f"private/{name}_backup.{key_type}.key"] == before[f"private/{name}_backup.{key_type}.key"]
            assert now[f"certs/{name}.{key_type}.pem"] != before[f"certs/{name}.{key_type}.pem"]

    # the RSA account key of 2.x signs (RS256) a key change to one of ours (P-256)
    rolled = run_ours(port53, config, "--account-key-rollover")
    assert_clean(rolled)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert account_uri(work) == v2_registration["uri"]
    assert b"BEGIN PRIVATE KEY" in (resource / "client_key.pem").read_bytes()
    final = run_ours(port53, config, "--renew")
    assert final.returncode == 0, final.stdout + final.stderr


def test_takes_over_a_yaml_config_with_conf_d(port53, tmp_path):
    """The same with YAML: acmebot.yaml and conf.d/ (a JSON and a YAML file), as 2.x merged them."""
    work = tmp_path
    for directory in ("run", "log", "resource", "private", "certs", "params", "challenge", "archive", "tmp"):
        (work / directory).mkdir(mode=0o755)
    raw = v2_config(work, port53, {})
    del raw["certificates"]
    settings = raw["settings"]
    raw["settings"] = {k: v for k, v in settings.items() if k not in ("key_types", "key_size")}
    (work / "acmebot.yaml").write_text(yaml.safe_dump(raw))
    (work / "conf.d").mkdir()
    (work / "conf.d" / "10-keys.json").write_text(json.dumps({"settings": {"key_types": ["rsa", "ecdsa"],
                                                                           "key_size": 3072}}))
    (work / "conf.d" / "20-certs.yaml").write_text(
        f"settings:\n  key_size: 2048\n"
        f"certificates:\n  y1.{ZONE}:\n    alt_names:\n      {ZONE}: [y1, y2]\n")
    config = work / "acmebot.yaml"
    v2 = run_v2(port53, config)
    assert v2.returncode == 0, v2.stdout + v2.stderr
    key = work / "private" / f"y1.{ZONE}.rsa.key"
    assert b"BEGIN" in key.read_bytes()
    v2_uri = account_uri(work)
    before = kept_files(work)

    result = run_ours(port53, config)
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert account_uri(work) == v2_uri
    after = kept_files(work)
    assert sorted(p for p in before if after.get(p) != before[p]) == []
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    assert load_pem_private_key(key.read_bytes(), None).key_size == 2048     # the later file won
    renewed = run_ours(port53, config, "--renew")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert account_uri(work) == v2_uri


# -- config formats and 2.x options, without the CA --------------------------------------------

from test_units import GROUP, USER, ab  # noqa: E402  (acmebot, imported in process)


def small_config(**extra):
    raw = {"account": {"email": "admin@example.test"},
           "settings": {"file_user": USER, "file_group": GROUP, "key_size": 2048},
           "certificates": {"a.example.test": {"alt_names": {"example.test": ["a"]}}}}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def problems(path):
    with pytest.raises(ab.ConfigError) as info:
        ab.load_config(str(path))
    return info.value.problems


def test_yaml_config_reads_as_the_same_json(tmp_path):
    raw = small_config(settings={"renewal_days": 20})
    (tmp_path / "j").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "j" / "acmebot.json").write_text(json.dumps(raw))
    (tmp_path / "y" / "acmebot.yml").write_text("# a comment: YAML has them\n" + yaml.safe_dump(raw))
    from_json = ab.load_config(str(tmp_path / "j" / "acmebot.json"))
    from_yaml = ab.load_config(str(tmp_path / "y" / "acmebot.yml"))
    assert from_yaml.settings.renewal_days == 20
    assert from_yaml.keys == from_json.keys and from_yaml.settings == from_json.settings


def test_conf_d_is_merged_in_name_order(tmp_path):
    (tmp_path / "acmebot.json").write_text(json.dumps(small_config(settings={"renewal_days": 10})))
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    # a mapping merges into the mapping it meets; a list (or any other value) replaces
    (conf_d / "20-b.yaml").write_text("settings:\n  renewal_days: 25\n"
                                      "certificates:\n  b.example.test:\n    alt_names:\n"
                                      "      example.test: [b]\n")
    (conf_d / "10-a.json").write_text(json.dumps({"settings": {"renewal_days": 15, "key_size": 3072},
                                                  "certificates": {"a.example.test": {
                                                      "alt_names": {"example.test": ["a", "www.a"]}}}}))
    (conf_d / "README").write_text("not a config file: ignored")
    (conf_d / "30-c.json.orig").write_text("{ignored")
    config = ab.load_config(str(tmp_path / "acmebot.json"))
    assert config.settings.renewal_days == 25 and config.settings.key_size == 3072
    names = {cert.name: cert.names for key in config.keys for cert in key.certificates}
    assert sorted(names) == ["a.example.test", "b.example.test"]
    assert "www.a.example.test" in names["a.example.test"]


def test_a_problem_names_the_file_that_set_the_option(tmp_path):
    main = tmp_path / "acmebot.yaml"
    main.write_text(yaml.safe_dump(small_config(settings={"renewal_days": "soon"})))
    (tmp_path / "conf.d").mkdir()
    bad = tmp_path / "conf.d" / "50-bad.yml"
    bad.write_text("certificates:\n  a.example.test:\n    alt_names: 5\n")
    found = problems(main)
    assert f"{main}: settings.renewal_days: must be" in " ".join(found)
    assert any(p.startswith(f"{bad}: certificates.a.example.test.alt_names: ") for p in found), found


@pytest.mark.parametrize("name, text, expected", [
    ("acmebot.yaml", "settings:\n  renewal_days: [1\n", "not valid YAML"),
    ("acmebot.yaml", "settings: {a: 1}\n  b: 2\n", "line 2 column"),
    ("acmebot.json", '{"settings": {"renewal_days": 1,}}', "line 1 column"),
])
def test_syntax_errors_name_file_and_line(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    found = problems(tmp_path / name)
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / name}: ") and expected in found[0], found


def test_a_conf_d_file_must_hold_a_mapping(tmp_path):
    (tmp_path / "acmebot.json").write_text(json.dumps(small_config()))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.yaml").write_text("- just\n- a list\n")
    assert problems(tmp_path / "acmebot.json") == [
        f"{tmp_path / 'conf.d' / 'a.yaml'}: must hold an object (a mapping of options), got [\"just\", \"a list\"]"]


def test_without_pyyaml_a_yaml_config_is_one_config_error(tmp_path):
    # PyYAML is installed here (tests/install-deps): a `yaml` module that cannot be imported,
    # first on PYTHONPATH, stands for a python without it.
    shadow = tmp_path / "shadow" / "yaml"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named yaml')\n")
    raw = small_config()
    (tmp_path / "acmebot.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "acmebot.json").write_text(json.dumps(raw))
    env = {"PYTHONPATH": str(tmp_path / "shadow")}
    result = run_acmebot(tmp_path / "acmebot.yaml", "--status", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "PyYAML" in result.stderr and "apt install python3-yaml" in result.stderr
    assert str(tmp_path / "acmebot.yaml") in result.stderr
    json_run = run_acmebot(tmp_path / "acmebot.json", "--status", env=env)      # JSON needs no PyYAML
    assert json_run.returncode == 0, json_run.stderr


def test_the_default_config_name_finds_yaml_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acmebot.yml").write_text("{}\n")
    assert ab.find_config(None, "/nonexistent") == str(tmp_path / "acmebot.yml")
    (tmp_path / "acmebot.json").write_text("{}\n")
    assert ab.find_config(None, "/nonexistent") == str(tmp_path / "acmebot.json")
    assert ab.find_config("acmebot", "/nonexistent") == str(tmp_path / "acmebot.json")


def test_2x_options_are_mapped(tmp_path):
    raw = small_config(
        settings={"key_types": ["ecdsa"], "services": ["web"], "ecparam_curve": ["x448", "secp521r1"],
                  "key_cipher": "blowfish",
                  "ct_submit_logs": ["digicert_yeti", "google_argon"], "key_provided": False,
                  "acme_directory_verify_ssl": "/etc/ssl/certs/ca-certificates.crt",
                  "public_suffix_list_url": "https://example.invalid/psl", "log_user": "root",
                  "log_group": "adm", "warning_exit_code": True},
        services={"web": "true", "mail": "true"},
        private_keys={"k": {"certificates": {"k.example.test": {"alt_names": {"example.test": ["k"]},
                                                                "services": ["mail"]}}}},
        certificates={"rsa.example.test": {"alt_names": {"example.test": ["rsa"]}, "key_types": ["rsa"]}})
    (tmp_path / "acmebot.json").write_text(json.dumps(raw))
    config = ab.load_config(str(tmp_path / "acmebot.json"))
    assert config.settings.acme_ca_bundle == "/etc/ssl/certs/ca-certificates.crt"
    assert config.settings.ecparam_curve == "secp521r1"
    assert config.settings.ct_submit_logs == ("google_argon",)
    assert config.settings.key_cipher == "aes256"
    keys = {key.name: key for key in config.keys}
    assert keys["a.example.test"].key_types == ("ecdsa",) and keys["k"].key_types == ("ecdsa",)
    assert keys["rsa.example.test"].key_types == ("rsa",)
    certs = {cert.name: cert for key in config.keys for cert in key.certificates}
    assert certs["a.example.test"].services == ("web",) and certs["k.example.test"].services == ("mail",)


@pytest.mark.parametrize("where, option, value, expected", [
    ("settings", "acme_directory_verify_ssl", False, "settings.acme_directory_verify_ssl: false is not "
     "supported: acmebot always verifies the CA's TLS certificate; for a private CA set settings.acme_ca_bundle"),
    ("certificates.a.example.test", "key_provided", True, "certificates.a.example.test.key_provided: "
     "acmebot 2.x's provided keys are not supported"),
])
def test_2x_options_without_equivalent_are_refused(tmp_path, where, option, value, expected):
    raw = small_config()
    holder = raw["settings"] if where == "settings" else raw["certificates"]["a.example.test"]
    holder[option] = value
    (tmp_path / "acmebot.json").write_text(json.dumps(raw))
    found = problems(tmp_path / "acmebot.json")
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'acmebot.json'}: {expected}"), found


def test_2x_notices_only_at_verbose(tmp_path):
    """A cron job's mail stays quiet: the notices show at --verbose only."""
    raw = small_config(settings={"public_suffix_list_url": "https://example.invalid/psl", "key_types": ["rsa"]})
    (tmp_path / "acmebot.json").write_text(json.dumps(raw))
    quiet = run_acmebot(tmp_path / "acmebot.json", "--status")
    assert quiet.returncode == 0, quiet.stderr
    assert "2.x" not in quiet.stdout + quiet.stderr
    verbose = run_acmebot(tmp_path / "acmebot.json", "--status", "--verbose")
    assert "settings.public_suffix_list_url (acmebot 2.x) is ignored" in verbose.stdout
    assert "settings.key_types (acmebot 2.x) is applied as key_types" in verbose.stdout


def test_a_damaged_2x_account_key_is_one_file_error(lab, tmp_path):
    """A client_key.json that is no JWK stops the run before the CA hears of it: nothing changes."""
    from lab import make_config
    config = make_config(tmp_path, lab, {"certificates": {"a.example.test": {
        "alt_names": {"example.test": ["a"]}}}})
    resource = tmp_path / "resource"
    resource.mkdir()
    registration = {"uri": lab.directory_url.rsplit("/", 1)[0] + "/my-account/1", "body": {}}
    (resource / "registration.json").write_text(json.dumps(registration))
    (resource / "client_key.json").write_text('{"n": "AQAB"}')
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"cannot load the acmebot 2.x account key {resource / 'client_key.json'}" in result.stderr
    assert json.loads((resource / "registration.json").read_text()) == registration
    assert not (resource / "client_key.pem").exists()


def test_yaml_times_stay_strings(tmp_path):
    """2.x's ct_logs in YAML, its times unquoted: read as the strings JSON would give."""
    (tmp_path / "acmebot.yaml").write_text(yaml.safe_dump(small_config(settings={"ct_submit_logs": ["mine"]}))
                                           + """ct_logs:
  mine:
    - log_id: bP5QGUOoXqkWvFLRM+TcyR7xQRx9JYQg0XOAnhgY6zo=
      key: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwR1FtiiMbpvxR+sIeiZ5JSCIDIdTAPh7OrpdchcrCcyNVDvNUq358pqJx2qdyrOI+EjGxZ7UiPcN3bL3Q99FqA==
      url: https://log.sycamore.ct.letsencrypt.org/2026h2/
      start: 2026-06-18T00:00:00Z
      end: 2026-12-17T00:00:00Z
""")
    config = ab.load_config(str(tmp_path / "acmebot.yaml"))
    assert len(config.ct_logs["mine"]) == 1


@pytest.mark.parametrize("cipher", ["blowfish", "aes256"])
def test_takes_over_encrypted_keys(port53, tmp_path, cipher):
    """2.x's keys encrypted with key_passphrase (key_cipher: its default blowfish, or aes256)
    are read and kept as they are."""
    work = tmp_path
    for directory in ("run", "log", "resource", "private", "certs", "params", "challenge", "archive", "tmp"):
        (work / directory).mkdir(mode=0o755)
    raw = v2_config(work, port53, {f"two.{ZONE}": {"alt_names": {ZONE: ["two"]}, "key_types": ["ecdsa"]}})
    raw["settings"].update(key_passphrase="correct horse battery", key_cipher=cipher)
    config = work / "acmebot.json"
    config.write_text(json.dumps(raw))
    v2 = run_v2(port53, config)
    assert v2.returncode == 0, v2.stdout + v2.stderr
    assert b"ENCRYPTED" in (work / "private" / f"two.{ZONE}.ecdsa.key").read_bytes()
    before = kept_files(work)
    result = run_ours(port53, config)
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    after = kept_files(work)
    assert sorted(p for p in before if after.get(p) != before[p]) == []
    renewed = run_ours(port53, config, "--renew")
    assert renewed.returncode == 0 and renewed.stderr == "", renewed.stdout + renewed.stderr
    assert after[f"private/two.{ZONE}.ecdsa.key"] == kept_files(work)[f"private/two.{ZONE}.ecdsa.key"]


def test_blowfish_keys_are_read_through_openssls_legacy_provider(tmp_path):
    """2.x's default key_cipher: the cryptography package cannot decrypt it, `openssl pkey`
    with the legacy provider can (the passphrase through a pipe, not the arguments)."""
    plain = tmp_path / "plain.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", plain], check=True, capture_output=True)
    encrypted = tmp_path / "bf.key"
    subprocess.run(["openssl", "pkey", "-provider", "legacy", "-provider", "default", "-in", plain,
                    "-bf", "-passout", "pass:s3cret-Passphrase", "-out", encrypted], check=True, capture_output=True)
    key = ab.load_key(str(encrypted), "s3cret-Passphrase")
    assert ab.public_der(key) == ab.public_der(ab.load_key(str(plain), None))
    with pytest.raises(ab.FileError) as info:
        ab.load_key(str(encrypted), "wrong-Passphrase")
    assert "wrong passphrase?" in str(info.value) and "Passphrase" not in str(info.value)


def test_every_2x_option_is_accepted(tmp_path):
    """A config that sets every option of acmebot 2.17.3 to its 2.x default (and the per-key and
    per-certificate ones too) loads: nothing of it is an unknown option."""
    hook_fields = {"set_dns_challenge": "{domain} {zone} {challenge}", "clear_dns_challenge": "{domain}",
                   "dns_zone_update": "{zone}", "set_http_challenge": "{domain} {challenge_file}",
                   "clear_http_challenge": "{challenge_file}",
                   "private_key_rollover": "{key_name} {key_type} {backup_key_file} {private_key_file} "
                                           "{previous_key_file} {passphrase}",
                   "private_key_installed": "{key_name} {private_key_file}", "backup_key_installed": "{backup_key_file}",
                   "previous_key_installed": "{previous_key_file}", "hpkp_header_installed": "{server} {header} {hpkp_file}",
                   "certificate_installed": "{certificate_name} {certificate_file}",
                   "full_certificate_installed": "{full_certificate_file}", "chain_installed": "{chain_file}",
                   "full_key_installed": "{full_key_file}", "params_installed": "{params_file}",
                   "sct_installed": "{ct_log_name} {sct_file}", "ocsp_installed": "{ocsp_file}"}
    raw = {
        "account": {"email": "admin@example.test"},
        "settings": {
            "follower_mode": False, "log_level": "debug", "color_output": True, "key_types": ["rsa", "ecdsa"],
            "key_size": 4096, "key_curve": "secp384r1", "key_cipher": "blowfish", "key_passphrase": None,
            "key_provided": False, "dhparam_size": 2048,
            "ecparam_curve": ["x448", "x25519", "secp521r1", "secp384r1", "secp256k1"],
            "file_user": USER, "file_group": GROUP, "log_user": "root", "log_group": "adm",
            "warning_exit_code": False, "hpkp_days": 60, "pin_subdomains": True, "hpkp_report_uri": None,
            "ocsp_must_staple": False, "ocsp_responder_urls": ["http://ocsp.int-x3.letsencrypt.org"],
            "ct_submit_logs": ["google_argon", "google_xenon"], "renewal_days": 30, "expiration_days": 730,
            "auto_rollover": False, "max_dns_lookup_attempts": 30, "dns_lookup_delay": 10,
            "max_domains_per_order": 100, "max_authorization_attempts": 30, "authorization_delay": 10,
            "cert_poll_time": 30, "max_ocsp_verify_attempts": 10, "ocsp_verify_retry_delay": 5,
            "min_run_delay": 300, "max_run_delay": 3600,
            "acme_directory_url": "https://acme-v02.api.letsencrypt.org/directory",
            "acme_directory_verify_ssl": True, "reload_zone_command": "/etc/bind/reload-zone.sh",
            "nsupdate_command": "/usr/bin/nsupdate",
            "public_suffix_list_url": "https://publicsuffix.org/list/public_suffix_list.dat",
            "verify": None, "services": None,
        },
        "directories": {
            "pid": "/var/run", "log": "/var/log/acmebot", "resource": "/var/local/acmebot",
            "private_key": "/etc/ssl/private", "backup_key": "/etc/ssl/private", "previous_key": None,
            "full_key": "/etc/ssl/private", "certificate": "/etc/ssl/certs", "full_certificate": "/etc/ssl/certs",
            "chain": "/etc/ssl/certs", "param": "/etc/ssl/params", "challenge": "/etc/ssl/challenges",
            "http_challenge": None, "hpkp": None, "ocsp": None, "sct": "/etc/ssl/scts/{name}/{key_type}",
            "update_key": "/etc/ssl/update_keys", "archive": "/etc/ssl/archive", "temp": None,
        },
        "key_type_suffixes": {"rsa": ".rsa", "ecdsa": ".ecdsa"},
        "file_names": {
            "log": "acmebot.log", "private_key": "{name}{suffix}.key", "backup_key": "{name}_backup{suffix}.key",
            "previous_key": "{name}_previous{suffix}.key", "full_key": "{name}_full{suffix}.key",
            "certificate": "{name}{suffix}.pem", "full_certificate": "{name}+root{suffix}.pem",
            "chain": "{name}_chain{suffix}.pem", "param": "{name}_param.pem", "challenge": "{name}",
            "hpkp": "{name}.{server}", "ocsp": "{name}{suffix}.ocsp", "sct": "{ct_log_name}.sct",
        },
        "hpkp_headers": {"apache": 'Header always set Public-Key-Pins "{header}"\n',
                         "nginx": 'add_header Public-Key-Pins "{header}" always;\n'},
        "services": {"apache": "systemctl reload-or-restart apache2", "nginx": "systemctl reload-or-restart nginx"},
        "ct_logs": {"lets_encrypt_sycamore_2026h2": [{
            "log_id": "bP5QGUOoXqkWvFLRM+TcyR7xQRx9JYQg0XOAnhgY6zo=",
            "key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwR1FtiiMbpvxR+sIeiZ5JSCIDIdTAPh7OrpdchcrCcyNVDvNUq358pqJx2qdy"
                   "rOI+EjGxZ7UiPcN3bL3Q99FqA==",
            "url": "https://log.sycamore.ct.letsencrypt.org/2026h2/",
            "start": "2026-06-18T00:00:00Z", "end": "2026-12-17T00:00:00Z"}]},
        "hooks": hook_fields,
        "zone_update_keys": {"example.test": "update.example.test.key",
                             "example.net": {"file": "net.key", "server": "ns1.example.net", "port": 53}},
        "http_challenges": {"www.example.org": "/var/www/org/.well-known/acme-challenge"},
        "authorizations": {"example.test": ["@", "www"]},
        "private_keys": {"main": {
            "key_types": ["rsa"], "key_size": 2048, "key_curve": "secp256r1", "key_cipher": "aes256",
            "key_passphrase": None, "key_provided": False, "expiration_days": 365, "auto_rollover": True,
            "hpkp_days": 0, "pin_subdomains": False, "hpkp_report_uri": None,
            "certificates": {"example.test": {
                "common_name": "example.test", "alt_names": {"example.test": ["@", "www"]},
                "services": ["nginx"], "key_types": ["rsa"], "dhparam_size": 3072,
                "ecparam_curve": ["secp384r1"], "ocsp_must_staple": True,
                "ct_submit_logs": ["lets_encrypt_sycamore_2026h2", "digicert_nessie"],
                "verify": [443, {"port": 25, "starttls": "smtp", "hosts": ["mail.example.test"]}],
                "tlsa_records": {"example.test": ["www", {"host": "mail", "port": 25, "usage": "dane-ee",
                                                          "selector": "spki", "protocol": "tcp", "ttl": 300}]},
            }},
        }},
        "certificates": {"example.net": {"alt_names": {"example.net": ["@"]}, "key_provided": False,
                                         "services": ["apache"], "verify": 443}},
    }
    (tmp_path / "acmebot.json").write_text(json.dumps(raw))
    config = ab.load_config(str(tmp_path / "acmebot.json"))
    certs = {cert.name: cert for key in config.keys for cert in key.certificates}
    assert certs["example.test"].ct_submit_logs == ("lets_encrypt_sycamore_2026h2",)
    assert certs["example.test"].ecparam_curve == "secp384r1" and config.settings.ecparam_curve == "secp521r1"
    assert {key.name: key.key_types for key in config.keys} == {"main": ("rsa",), "example.net": ("rsa", "ecdsa")}


def test_with_conf_d_the_config_must_hold_a_mapping_too(tmp_path):
    (tmp_path / "acmebot.yaml").write_text("")              # empty: everything is in conf.d
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "all.json").write_text(json.dumps(small_config()))
    assert [k.name for k in ab.load_config(str(tmp_path / "acmebot.yaml")).keys] == ["a.example.test"]
    (tmp_path / "acmebot.yaml").write_text("- a list\n")
    assert problems(tmp_path / "acmebot.yaml") == [
        f"{tmp_path / 'acmebot.yaml'}: must hold an object (a mapping of options), got [\"a list\"]"]


def test_a_refused_2x_option_in_conf_d_names_that_file(tmp_path):
    (tmp_path / "acmebot.json").write_text(json.dumps(small_config()))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "tls.yaml").write_text("settings:\n  acme_directory_verify_ssl: false\n")
    found = problems(tmp_path / "acmebot.json")
    assert len(found) == 1 and found[0].startswith(
        f"{tmp_path / 'conf.d' / 'tls.yaml'}: settings.acme_directory_verify_ssl: false is not supported"), found
