"""Integration tests: acmebot issues certificates against pebble, BIND and nginx.

Every test drives acmebot as a subprocess (run_acmebot) with its own config in
tmp_path and its own host names, then checks what is on disk (names, modes,
owners, key/certificate pairs, chains up to pebble's root), what BIND serves
afterwards (no _acme-challenge records left) and that a second run does nothing.

The helpers at the top are also used by test_failures.py.
"""

import functools
import json
import os
import re
import subprocess
import time
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, rsa
from cryptography.x509.oid import NameOID

from lab import NET_KEY_BASENAME
from conftest import make_config, run_acmebot

KEY_TYPES = ("rsa", "ecdsa")
STAMP = re.compile(r"^\d{4}_\d{2}_\d{2}_\d{6}$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----\n", re.S)


# -- helpers -------------------------------------------------------------------------------

def cert_blocks(data):
    """The CERTIFICATE PEM blocks of a file, each with its trailing newline."""
    return _PEM_CERT.findall(data)


def public_der(obj):
    public = obj.public_key() if hasattr(obj, "public_key") else obj
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(data, passphrase=None):
    return serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)


def verify_chain(certs, root_pem):
    """Each certificate is signed by the next one, the last by pebble's root."""
    root = x509.load_pem_x509_certificate(root_pem.encode() if isinstance(root_pem, str) else root_pem)
    for cert, issuer in zip(certs, certs[1:] + [root]):
        cert.verify_directly_issued_by(issuer)


def default_paths(tmp_path, cert_name, key_type, key_name=None):
    key_name = key_name or cert_name
    suffix = f".{key_type}"
    return {
        "key": tmp_path / "private" / f"{key_name}{suffix}.key",
        "backup": tmp_path / "private" / f"{key_name}_backup{suffix}.key",
        "certificate": tmp_path / "certs" / f"{cert_name}{suffix}.pem",
        "chain": tmp_path / "certs" / f"{cert_name}_chain{suffix}.pem",
        "full_key": tmp_path / "private" / f"{cert_name}_full{suffix}.key",
        "full_certificate": tmp_path / "certs" / f"{cert_name}+root{suffix}.pem",
        "param": tmp_path / "params" / f"{cert_name}_param.pem",
    }


def assert_mode_owner(path, mode):
    st = os.stat(path)
    assert oct(st.st_mode & 0o7777) == oct(mode), path
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path


def dh_numbers(pem):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # cryptography deprecates FFDH; only parsing here
        params = serialization.load_pem_parameters(pem)
        assert isinstance(params, dh.DHParameters)
        numbers = params.parameter_numbers()
    return numbers.p, numbers.g


@functools.lru_cache(maxsize=1)
def ffdhe2048():
    """(p, g) of RFC 7919 ffdhe2048, as OpenSSL knows the group."""
    pem = subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048"],
                         capture_output=True, check=True).stdout
    return dh_numbers(pem)


def check_params(data, curve="secp384r1"):
    """RFC 7919 ffdhe2048 followed by the EC parameters of `curve`."""
    text = data.decode()
    assert text.startswith("-----BEGIN DH PARAMETERS-----\n"), text[:60]
    dh_end = text.index("-----END DH PARAMETERS-----\n") + len("-----END DH PARAMETERS-----\n")
    assert dh_numbers(text[:dh_end].encode()) == ffdhe2048()
    ec_part = text[dh_end:]
    assert ec_part.startswith("-----BEGIN EC PARAMETERS-----\n") and ec_part.endswith("-----END EC PARAMETERS-----\n")
    shown = subprocess.run(["openssl", "ecparam", "-noout", "-text"], input=ec_part.encode(),
                           capture_output=True, check=True).stdout.decode()
    assert f"ASN1 OID: {curve}" in shown, shown


def check_issued(lab, paths, key_type, names, *, passphrase=None, root=False, params=True, pebble=None):
    """Everything about one certificate and key type: returns (leaf, primary key)."""
    for kind in ("key", "backup", "full_key"):
        assert_mode_owner(paths[kind], 0o640)
    for kind in ("certificate", "chain") + (("param",) if params else ()):
        assert_mode_owner(paths[kind], 0o644)
    if root:
        assert_mode_owner(paths["full_certificate"], 0o644)
    else:
        assert not paths["full_certificate"].exists()

    key_data = paths["key"].read_bytes()
    backup_data = paths["backup"].read_bytes()
    assert (b"ENCRYPTED" in key_data) == bool(passphrase)
    assert (b"ENCRYPTED" in backup_data) == bool(passphrase)
    key, backup = load_key(key_data, passphrase), load_key(backup_data, passphrase)
    if key_type == "rsa":
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        assert isinstance(backup, rsa.RSAPrivateKey) and backup.key_size == 2048
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert isinstance(backup, ec.EllipticCurvePrivateKey) and backup.curve.name == "secp256r1"
    assert public_der(backup) != public_der(key)

    cert_data = paths["certificate"].read_bytes()
    blocks = cert_blocks(cert_data)
    assert len(blocks) >= 2, "certificate file lacks the intermediates"
    certs = [x509.load_pem_x509_certificate(block) for block in blocks]
    leaf = certs[0]
    assert public_der(leaf) == public_der(key), "certificate does not match its private key"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    assert [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [names[0]]
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey)
    root_pem = pebble.root_pem() if pebble else lab.pebble_root_pem()
    verify_chain(certs, root_pem)

    chain = b"".join(blocks[1:])
    assert paths["chain"].read_bytes() == chain
    param_data = paths["param"].read_bytes() if params else b""
    if params:
        check_params(param_data)
    assert cert_data == blocks[0] + chain + param_data

    full = paths["full_key"].read_bytes()
    key_part, _, rest = full.partition(b"-----BEGIN CERTIFICATE-----")
    assert b"-----BEGIN CERTIFICATE-----" + rest == blocks[0] + chain + param_data
    if passphrase:
        assert b"ENCRYPTED" in key_part
        assert public_der(load_key(key_part, passphrase)) == public_der(key)
    else:
        assert key_part == key_data

    if root:
        root_block = cert_blocks(root_pem.encode())
        assert paths["full_certificate"].read_bytes() == blocks[0] + chain + b"".join(root_block) + param_data
        full_blocks = cert_blocks(paths["full_certificate"].read_bytes())
        assert full_blocks[-1] == root_block[-1], "+root file does not end (before the params) with the root"
    return leaf, key


def snapshot(tmp_path):
    """{relative path: (mtime_ns, mode, bytes)} of every file but the log, the
    run lock (directories.pid/acmebot.pid, which every run locks) and the quiet
    record (resource/quiet.json: what a run with nothing to do leaves the next
    one so that it can decide without parsing anything; tests/test_quiet.py)."""
    out = {}
    for path in Path(tmp_path).rglob("*"):
        relative = path.relative_to(tmp_path)
        if path.is_file() and relative.parts[0] not in ("log", "run") and relative != Path("resource/quiet.json"):
            st = path.stat()
            out[str(path.relative_to(tmp_path))] = (st.st_mtime_ns, st.st_mode, path.read_bytes())
    return out


def assert_clean(result):
    """No traceback anywhere; every stderr line is one ERROR/WARNING line."""
    assert "Traceback" not in result.stdout + result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith(("ERROR: ", "WARNING: ")), line


def assert_ok(result):
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def assert_second_run_changes_nothing(config, tmp_path, *args, input=None, env=None):
    before = snapshot(tmp_path)
    result = run_acmebot(config, *args, input=input, env=env)
    assert_ok(result)
    assert result.stdout == ""
    assert snapshot(tmp_path) == before


def assert_no_challenge_records(lab, names):
    for name in names:
        assert lab.txt("_acme-challenge." + name.removeprefix("*.")) == [], name


def challenge_dir_files(lab):
    return sorted(p.name for p in lab.http_challenge_dir.iterdir())


def served_challenges(lab):
    """Lines of nginx's access log where a challenge file was served (200)."""
    log = lab.nginx_dir / "access.log"
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines()
            if "/.well-known/acme-challenge/" in line and '" 200 ' in line]


# -- dns-01 through BIND (RFC 2136 with TSIG) --------------------------------------------------

def test_dns01_rsa_and_ecdsa_in_example_test(lab, tmp_path):
    lab.add_hosts("example.test", "dnsrsa", "www.dnsrsa")
    names = ["dnsrsa.example.test", "www.dnsrsa.example.test"]
    seen = tmp_path / "seen-during-validation"
    # The hook runs right after the UPDATE: record what BIND serves at that moment.
    config = make_config(tmp_path, lab, {
        "certificates": {"dnsrsa.example.test": {"alt_names": {"example.test": ["dnsrsa", "www.dnsrsa"]}}},
        "hooks": {"set_dns_challenge":
                  f"dig +short -p {lab.dns_port} @127.0.0.1 TXT _acme-challenge.{{domain}} >> {seen}"},
    })
    result = run_acmebot(config)
    assert_ok(result)
    assert "Issued certificate dnsrsa.example.test (rsa)" in result.stdout
    assert "Issued certificate dnsrsa.example.test (ecdsa)" in result.stdout

    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, "dnsrsa.example.test", key_type), key_type, names)
    assert_no_challenge_records(lab, names)
    served = seen.read_text().split()
    assert served and all(re.fullmatch(r'"[A-Za-z0-9_-]{43}"', value) for value in served), served

    # the account
    assert_mode_owner(tmp_path / "resource" / "client_key.pem", 0o600)
    registration = json.loads((tmp_path / "resource" / "registration.json").read_text())
    assert registration["uri"].startswith("https://127.0.0.1:")
    assert registration["directory"] == lab.directory_url

    assert_second_run_changes_nothing(config, tmp_path)


def test_dns01_example_net_with_k_file_key_and_soa_server(lab, tmp_path):
    """The dnssec-keygen K*.key/.private pair, named relative to directories.update_key,
    and no server: the update goes to the SOA's primary (ns1.example.net)."""
    lab.add_hosts("example.net", "knet")
    config = make_config(tmp_path, lab, {
        "zone_update_keys": {"example.net": {"file": f"{NET_KEY_BASENAME}.key", "server": None,
                                             "port": lab.dns_port}},
        "certificates": {"knet.example.net": {"key_types": ["ecdsa"]}},
    })
    result = run_acmebot(config)
    assert_ok(result)
    check_issued(lab, default_paths(tmp_path, "knet.example.net", "ecdsa"), "ecdsa", ["knet.example.net"])
    for kind, path in default_paths(tmp_path, "knet.example.net", "rsa").items():
        assert kind == "param" or not path.exists(), path
    assert_no_challenge_records(lab, ["knet.example.net"])
    assert_second_run_changes_nothing(config, tmp_path)


def test_local_dns_mode_with_reload_zone_command(lab, tmp_path):
    """local.test has no update key: a JSON challenge file plus reload_zone_command.
    The same certificate also has a name in example.test (RFC 2136)."""
    lab.add_hosts("local.test", "locmode", "www.locmode")
    lab.add_hosts("example.test", "locmode")
    names = ["locmode.local.test", "www.locmode.local.test", "locmode.example.test"]
    config = make_config(tmp_path, lab, {"certificates": {"locmode.local.test": {
        "alt_names": {"local.test": ["locmode", "www.locmode"], "example.test": ["locmode"]}}}})
    result = run_acmebot(config)
    assert_ok(result)
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, "locmode.local.test", key_type), key_type, names)
    assert_no_challenge_records(lab, names)
    assert not (tmp_path / "challenge" / "local.test").exists()
    assert list((tmp_path / "challenge").iterdir()) == []
    assert_second_run_changes_nothing(config, tmp_path)


# -- http-01 through nginx ----------------------------------------------------------------------

def assert_issued_over_http(lab, tmp_path, config, cert_name, names, http_fetches):
    """One run issues the certificate (both key types); nginx served at least
    http_fetches challenge files, which are gone again, as are the TXT records;
    a second run changes nothing."""
    files_before = challenge_dir_files(lab)
    served_before = len(served_challenges(lab))
    assert_ok(run_acmebot(config))
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, cert_name, key_type), key_type, names)
    assert len(served_challenges(lab)) - served_before >= http_fetches
    assert challenge_dir_files(lab) == files_before
    assert_no_challenge_records(lab, names)
    assert_second_run_changes_nothing(config, tmp_path)


def test_http01_mapping_mixed_with_dns01_in_one_certificate(lab, tmp_path):
    lab.add_hosts("example.test", "httpmix", "www.httpmix")
    # No A record for dns.httpmix: http-01 could not work for it, only dns-01 can.
    names = ["httpmix.example.test", "www.httpmix.example.test", "dns.httpmix.example.test"]
    config = make_config(tmp_path, lab, {
        "http_challenges": {"httpmix.example.test": str(lab.http_challenge_dir),
                            "www.httpmix.example.test": str(lab.http_challenge_dir)},
        "certificates": {"httpmix.example.test": {
            "alt_names": {"example.test": ["httpmix", "www.httpmix", "dns.httpmix"]}}},
    })
    # pebble fetches the two http-01 files from nginx
    assert_issued_over_http(lab, tmp_path, config, "httpmix.example.test", names, http_fetches=2)


def test_http01_directory_pattern_and_null_entry_forcing_dns01(lab, tmp_path):
    """directories.http_challenge with {zone}/{host}: each expanded directory is a
    symlink to the directory nginx serves.  A null http_challenges entry makes a
    name use dns-01 although the pattern covers it (it has no A record and no
    directory, so http-01 could not succeed)."""
    lab.add_hosts("example.test", "pat1", "pat2")
    lab.add_hosts("example.net", "patnet")
    www = tmp_path / "www"
    for zone, host in (("example.test", "pat1"), ("example.test", "pat2"), ("example.net", "patnet")):
        (www / zone).mkdir(parents=True, exist_ok=True)
        (www / zone / host).symlink_to(lab.http_challenge_dir)
    names = ["pat1.example.test", "pat2.example.test", "patnet.example.net", "dnspat.example.test"]
    config = make_config(tmp_path, lab, {
        "directories": {"http_challenge": str(www / "{zone}" / "{host}")},
        "http_challenges": {"dnspat.example.test": None},
        "certificates": {"pat1.example.test": {
            "alt_names": {"example.test": ["pat1", "pat2", "dnspat"], "example.net": ["patnet"]}}},
    })
    assert_issued_over_http(lab, tmp_path, config, "pat1.example.test", names, http_fetches=3)
    assert not (www / "example.test" / "dnspat").exists()


def test_wildcard_uses_dns01_even_with_http_challenge_directory(lab, tmp_path):
    lab.add_hosts("example.test", "wild")
    names = ["wild.example.test", "*.wild.example.test"]
    config = make_config(tmp_path, lab, {
        "directories": {"http_challenge": str(lab.http_challenge_dir)},
        "certificates": {"wild.example.test": {"alt_names": {"example.test": ["wild", "*.wild"]}}},
    })
    # wild.example.test by http-01, *.wild.example.test by dns-01
    assert_issued_over_http(lab, tmp_path, config, "wild.example.test", names, http_fetches=1)


# -- private keys shared by certificates -----------------------------------------------------

def test_two_certificates_share_one_private_key(lab, tmp_path):
    lab.add_hosts("example.test", "sharea", "shareb", "mail.shareb")
    config = make_config(tmp_path, lab, {"private_keys": {"sharedkey": {"certificates": {
        "sharea.example.test": {},
        "shareb.example.test": {"alt_names": {"example.test": ["shareb", "mail.shareb"]},
                                "key_types": ["rsa"]},
    }}}})
    result = run_acmebot(config)
    assert_ok(result)
    leaf_a, key_a = check_issued(lab, default_paths(tmp_path, "sharea.example.test", "rsa", "sharedkey"),
                                 "rsa", ["sharea.example.test"])
    leaf_b, key_b = check_issued(lab, default_paths(tmp_path, "shareb.example.test", "rsa", "sharedkey"),
                                 "rsa", ["shareb.example.test", "mail.shareb.example.test"])
    key_file = load_key((tmp_path / "private" / "sharedkey.rsa.key").read_bytes())
    assert public_der(leaf_a) == public_der(leaf_b) == public_der(key_file)
    check_issued(lab, default_paths(tmp_path, "sharea.example.test", "ecdsa", "sharedkey"),
                 "ecdsa", ["sharea.example.test"])
    assert not (tmp_path / "certs" / "shareb.example.test.ecdsa.pem").exists()
    # key files carry the key's name, never a certificate's
    assert sorted(p.name for p in (tmp_path / "private").glob("*.key") if "_full" not in p.name) == [
        "sharedkey.ecdsa.key", "sharedkey.rsa.key", "sharedkey_backup.ecdsa.key", "sharedkey_backup.rsa.key"]
    assert_second_run_changes_nothing(config, tmp_path)


# -- encrypted private keys ---------------------------------------------------------------------

def assert_secret_not_shown(tmp_path, result, *secrets):
    log_text = (tmp_path / "log" / "acmebot.log").read_text()
    assert "DEBUG" in log_text   # the log file is written at debug level
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr
        assert secret not in log_text


def _encrypted_run(lab, tmp_path, host, key_passphrase, passphrase, *args, input=None, env=None):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {"key_passphrase": key_passphrase}}})
    result = run_acmebot(config, "--detail", *args, input=input, env=env)
    assert_ok(result)
    assert_secret_not_shown(tmp_path, result, passphrase)
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, name, key_type), key_type, [name], passphrase=passphrase)
    return config


def test_passphrase_from_config_string(lab, tmp_path):
    secret = "Conf1g-Secret-xyz"
    config = _encrypted_run(lab, tmp_path, "ppconf", secret, secret)
    assert_second_run_changes_nothing(config, tmp_path)


def test_passphrase_from_pass_option(lab, tmp_path):
    secret = "Cmd-Line-Secret-417"
    config = _encrypted_run(lab, tmp_path, "ppcli", True, secret, "--pass", secret)
    assert_second_run_changes_nothing(config, tmp_path, "--pass", secret)


def test_passphrase_from_environment(lab, tmp_path):
    secret = "Env-Secret-8812"
    env = {"ACMEBOT_PASSPHRASE": secret}
    config = _encrypted_run(lab, tmp_path, "ppenv", True, secret, env=env)
    assert_second_run_changes_nothing(config, tmp_path, env=env)


def test_passphrases_from_stdin_private_keys_first(lab, tmp_path):
    """One line per key: private_keys in config order, then certificates, whatever
    order the sections have in the file (here certificates come first)."""
    lab.add_hosts("example.test", "ppin1", "ppin2", "ppin3")
    overrides = {
        "certificates": {"ppin3.example.test": {"key_passphrase": True, "key_types": ["ecdsa"]}},
        "private_keys": {
            "ppkey1": {"key_passphrase": True, "key_types": ["ecdsa"],
                       "certificates": {"ppin1.example.test": {}}},
            "ppkey2": {"key_passphrase": True, "key_types": ["ecdsa"],
                       "certificates": {"ppin2.example.test": {}}},
        },
    }
    config = make_config(tmp_path, lab, overrides)
    assert list(json.loads(config.read_text())).index("certificates") < \
        list(json.loads(config.read_text())).index("private_keys")
    secrets = ["stdin-first-A1", "stdin-second-B2", "stdin-third-C3"]
    lines = "".join(s + "\n" for s in secrets)
    result = run_acmebot(config, "--detail", input=lines)
    assert_ok(result)
    assert_secret_not_shown(tmp_path, result, *secrets)
    for cert, key, secret in (("ppin1.example.test", "ppkey1", secrets[0]),
                              ("ppin2.example.test", "ppkey2", secrets[1]),
                              ("ppin3.example.test", None, secrets[2])):
        check_issued(lab, default_paths(tmp_path, cert, "ecdsa", key), "ecdsa", [cert], passphrase=secret)
    assert_second_run_changes_nothing(config, tmp_path, input=lines)


# -- files: root, names, archive ------------------------------------------------------------------

def test_root_cert_beside_config_gives_full_certificate_files(lab, tmp_path):
    lab.add_hosts("example.test", "withroot")
    config = make_config(tmp_path, lab, {"certificates": {"withroot.example.test": {}}})
    for key_type in KEY_TYPES:
        (tmp_path / f"root_cert.{key_type}.pem").write_text(lab.pebble_root_pem())
    result = run_acmebot(config)
    assert_ok(result)
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, "withroot.example.test", key_type), key_type,
                     ["withroot.example.test"], root=True)
    assert_second_run_changes_nothing(config, tmp_path)


def test_file_names_and_key_type_suffixes(lab, tmp_path):
    lab.add_hosts("example.test", "fnames")
    name = "fnames.example.test"
    config = make_config(tmp_path, lab, {
        "file_names": {"private_key": "{name}-{key_type}.privkey",
                       "backup_key": "spare-{name}{suffix}.privkey",
                       "certificate": "{name}{suffix}.crt",
                       "chain": "{name}{suffix}.chain",
                       "full_key": "{key_type}-{name}.full",
                       "param": "{name}.dh"},
        "key_type_suffixes": {"rsa": "-R", "ecdsa": ""},
        "certificates": {name: {}},
    })
    (tmp_path / "root_cert.rsa.pem").write_text(lab.pebble_root_pem())   # rsa only
    result = run_acmebot(config)
    assert_ok(result)
    for key_type, suffix in (("rsa", "-R"), ("ecdsa", "")):
        paths = {
            "key": tmp_path / "private" / f"{name}-{key_type}.privkey",
            "backup": tmp_path / "private" / f"spare-{name}{suffix}.privkey",
            "certificate": tmp_path / "certs" / f"{name}{suffix}.crt",
            "chain": tmp_path / "certs" / f"{name}{suffix}.chain",
            "full_key": tmp_path / "private" / f"{key_type}-{name}.full",
            "full_certificate": tmp_path / "certs" / f"{name}+root{suffix}.pem",
            "param": tmp_path / "params" / f"{name}.dh",
        }
        check_issued(lab, paths, key_type, [name], root=key_type == "rsa")
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == sorted([
        f"{name}-R.crt", f"{name}.crt", f"{name}-R.chain", f"{name}.chain", f"{name}+root-R.pem"])
    assert sorted(p.name for p in (tmp_path / "private").iterdir()) == sorted([
        f"{name}-rsa.privkey", f"{name}-ecdsa.privkey", f"spare-{name}-R.privkey", f"spare-{name}.privkey",
        f"rsa-{name}.full", f"ecdsa-{name}.full"])
    assert [p.name for p in (tmp_path / "params").iterdir()] == [f"{name}.dh"]
    assert_second_run_changes_nothing(config, tmp_path)


def test_changed_alt_names_reissue_and_archive_old_files(lab, tmp_path):
    lab.add_hosts("example.test", "arch", "www.arch")
    name = "arch.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    old = {key_type: {kind: path.read_bytes() for kind, path in default_paths(tmp_path, name, key_type).items()
                      if path.exists()} for key_type in KEY_TYPES}
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").rglob("*.pem"))

    config = make_config(tmp_path, lab, {"certificates": {name: {"alt_names": {"example.test": ["arch", "www.arch"]}}}})
    result = run_acmebot(config)
    assert_ok(result)
    assert f"Issued certificate {name} (rsa)" in result.stdout
    assert f"Issued certificate {name} (ecdsa)" in result.stdout
    new_names = [name, "www.arch.example.test"]
    for key_type in KEY_TYPES:
        paths = default_paths(tmp_path, name, key_type)
        check_issued(lab, paths, key_type, new_names)
        # same private keys, new certificates
        assert paths["key"].read_bytes() == old[key_type]["key"]
        assert paths["backup"].read_bytes() == old[key_type]["backup"]
        assert paths["certificate"].read_bytes() != old[key_type]["certificate"]

    stamps = list((tmp_path / "archive" / name).iterdir())
    assert len(stamps) == 1 and STAMP.match(stamps[0].name), stamps
    archive = stamps[0]
    assert oct(archive.stat().st_mode & 0o777) == oct(0o700)
    archived = {p.name: p.read_bytes() for p in archive.iterdir()}
    for key_type in KEY_TYPES:
        paths = default_paths(tmp_path, name, key_type)
        assert archived[paths["certificate"].name] == old[key_type]["certificate"]
        assert archived[paths["full_key"].name] == old[key_type]["full_key"]
        assert paths["key"].name not in archived and paths["backup"].name not in archived
    # only replaced files are archived (the chain and params may be unchanged)
    for file_name, data in archived.items():
        assert any(data == content for per_type in old.values() for content in per_type.values()), file_name
    assert_second_run_changes_nothing(config, tmp_path)


# -- phases and options not covered above ---------------------------------------------------------

def test_auth_phase_alone_authorizes_without_issuing_then_certs_needs_no_challenge(lab, tmp_path):
    lab.add_hosts("example.test", "authonly")
    name = "authonly.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    auth = run_acmebot(config, "--auth", "--verbose")
    assert_ok(auth)
    assert "auth: 1 name" in auth.stdout and f"{name} authorized (dns-01)" in auth.stdout
    assert not default_paths(tmp_path, name, "ecdsa")["certificate"].exists()
    certs = run_acmebot(config, "--certs", "--verbose")
    assert_ok(certs)
    assert "answering" not in certs.stdout          # pebble reuses the valid authorization
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])


def test_random_dh_parameters_and_randomwait(lab, tmp_path):
    """dhparam_random asks openssl for fresh parameters (1024 bits keeps the test
    fast); --randomwait waits between min_run_delay and max_run_delay first."""
    lab.add_hosts("example.test", "dhrand")
    name = "dhrand.example.test"
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0, "dhparam_random": True, "dhparam_size": 1024, "ecparam_curve": None,
                     "min_run_delay": 0.2, "max_run_delay": 0.3},
        "certificates": {name: {}}})
    started = time.monotonic()
    assert_ok(run_acmebot(config, "--randomwait"))
    assert time.monotonic() - started >= 0.2
    params = default_paths(tmp_path, name, "ecdsa")["param"].read_bytes()
    p, g = dh_numbers(params)
    assert p.bit_length() == 1024 and g == 2
    assert b"EC PARAMETERS" not in params
