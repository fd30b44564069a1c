"""Fast, table-driven tests of acmebot's pure sections, imported in process."""

import base64
import datetime
import grp
import os
import pwd
import subprocess

import pytest

from lab import ACMEBOT, acmebot_module  # noqa: F401 (ACMEBOT re-exported)


ab = acmebot_module()
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def config(**top):
    raw = {"account": {"email": "admin@example.test"},
           "settings": {"file_user": USER, "file_group": GROUP}}
    for key, value in top.items():
        if key == "settings":
            raw["settings"].update(value)
        else:
            raw[key] = value
    return raw


def parse(raw, path="/etc/acmebot/acmebot.json"):
    return ab.parse_config(raw, path)


# -- names -------------------------------------------------------------------

@pytest.mark.parametrize("zone, host, fqdn", [
    ("example.com", "@", "example.com"),
    ("example.com", "www", "www.example.com"),
    ("example.com", "*", "*.example.com"),
    ("example.com", "a.b", "a.b.example.com"),
    ("example.com", "other.org.", "other.org"),
])
def test_host_fqdn(zone, host, fqdn):
    assert ab.host_fqdn(zone, host) == fqdn


@pytest.mark.parametrize("name, ok", [
    ("Example.COM", "example.com"), ("*.example.com", "*.example.com"), ("a_b.example.com", "a_b.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("-bad.example.com", None), ("a..b", None), ("a.*.b", None), ("", None), ("x" * 64 + ".com", None),
])
def test_check_fqdn(name, ok):
    if ok is None:
        with pytest.raises(ValueError):
            ab.check_fqdn(name)
    else:
        assert ab.check_fqdn(name) == ok


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "a..b", "", "x y"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError):
        ab.check_safe_name(name)


@pytest.mark.parametrize("token", ["../../etc/passwd", "a/b", "", "tok en", "x" * 300, None])
def test_hostile_http01_tokens_are_refused(token):
    with pytest.raises(ab.AcmeError):
        ab.check_token(token)


def test_token_is_kept_when_base64url():
    assert ab.check_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0") == \
        "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"


def test_safe_join_refuses_to_leave_the_directory():
    with pytest.raises(ab.FileError):
        ab.safe_join("/etc/ssl/certs", "../private/x")
    assert ab.safe_join("/etc/ssl/certs", "x.pem") == "/etc/ssl/certs/x.pem"


@pytest.mark.parametrize("text, pair", [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353)),
])
def test_parse_hostport(text, pair):
    assert ab.parse_hostport(text, 53) == pair


# -- configuration -------------------------------------------------------------

def test_every_setting_has_a_checker():
    import dataclasses
    assert set(ab.SETTING_CHECKS) == {f.name for f in dataclasses.fields(ab.Settings)}


def test_minimal_config_matches_the_spec_defaults():
    cfg = parse(config(certificates={"example.com": {"alt_names": {"example.com": ["@", "www"]}}}))
    (key,) = cfg.keys
    (cert,) = key.certificates
    assert cert.names == ("example.com", "www.example.com")
    assert cert.common_name == "example.com"
    assert key.key_types == ("rsa", "ecdsa") and key.key_size == 4096 and key.key_curve == "secp384r1"
    assert cfg.directory("certificate") == "/etc/ssl/certs"
    assert ab.key_paths(cfg, key, "rsa") == ("/etc/ssl/private/example.com.rsa.key",
                                             "/etc/ssl/private/example.com_backup.rsa.key")
    paths = ab.cert_paths(cfg, cert, "ecdsa")
    assert paths["certificate"] == "/etc/ssl/certs/example.com.ecdsa.pem"
    assert paths["full_key"] == "/etc/ssl/private/example.com_full.ecdsa.key"
    assert paths["chain"] == "/etc/ssl/certs/example.com_chain.ecdsa.pem"
    assert paths["param"] == "/etc/ssl/params/example.com_param.pem"
    assert "full_certificate" not in paths          # no root_cert.ecdsa.pem beside the config
    assert cfg.settings.acme_directory_url == ab.LETS_ENCRYPT


def test_default_alt_names_is_the_common_name():
    cfg = parse(config(certificates={"example.com": {}}))
    assert cfg.keys[0].certificates[0].names == ("example.com",)


def test_common_name_comes_first_and_names_are_deduplicated():
    cfg = parse(config(certificates={"www.example.com": {
        "alt_names": {"example.com": ["@", "www", "www"]}}}))
    assert cfg.keys[0].certificates[0].names == ("www.example.com", "example.com")


def test_private_keys_share_one_key_and_key_types_combine():
    cfg = parse(config(private_keys={"shared": {
        "key_types": ["rsa", "ecdsa"],
        "certificates": {
            "example.com": {"alt_names": {"example.com": ["@"]}, "key_types": ["rsa"]},
            "mail.example.com": {"alt_names": {"example.com": ["mail"]}},
        }}}))
    (key,) = cfg.keys
    assert key.name == "shared" and key.key_types == ("rsa", "ecdsa")
    assert [c.key_types for c in key.certificates] == [("rsa",), ("rsa", "ecdsa")]


def test_key_size_zero_turns_rsa_off():
    cfg = parse(config(settings={"key_size": 0}, certificates={"example.com": {}}))
    assert cfg.keys[0].key_types == ("ecdsa",)


def test_relative_directories_are_relative_to_the_config():
    cfg = parse(config(directories={"certificate": "certs"}, certificates={"example.com": {}}),
                "/srv/conf/acmebot.json")
    assert cfg.directory("certificate") == "/srv/conf/certs"


def test_directory_fields_are_expanded():
    cfg = parse(config(certificates={"example.com": {}}))
    assert cfg.directory("sct", name="x", key_type="rsa", suffix=".rsa", server="") == "/etc/ssl/scts/x/rsa"


@pytest.mark.parametrize("top, place", [
    ({"settings": {"key_size": "big"}}, "settings.key_size: must be an integer from 2048"),
    ({"settings": {"key_sise": 2048}}, "settings.key_sise: unknown option (did you mean 'key_size'?)"),
    ({"setings": {}}, "config.setings: unknown option"),
    ({"settings": {"key_curve": "p256"}}, "settings.key_curve: must be one of"),
    ({"settings": {"file_user": "no-such-user-here"}}, "settings.file_user: no such user"),
    ({"settings": {"file_group": "no-such-group-here"}}, "settings.file_group: no such group"),
    ({"settings": {"dhparam_size": 1536}}, "certificates.example.com.dhparam_size: must be one of 2048"),
    ({"settings": {"acme_directory_url": "ftp://x"}}, "settings.acme_directory_url: must be an http"),
    ({"settings": {"renewal_days": -1}}, "settings.renewal_days: must be an integer from 0 to 3650"),
    ({"settings": {"follower_mode": "yes"}}, "settings.follower_mode: must be true or false"),
    ({"directories": {"certificate": "/x/{nme}"}}, "directories.certificate: unknown field {nme}"),
    ({"directories": {"archive": None}}, "directories.archive: cannot be null"),
    ({"file_names": {"certificate": "../{name}.pem"}}, "file_names.certificate: must be a file name"),
    ({"file_names": {"certificate": "{name"}}, "file_names.certificate: is not a valid format string"),
    ({"hooks": {"certificate_installed": "scp {certificate_fil} x:"}}, "hooks.certificate_installed: unknown field"),
    ({"hooks": {"no_such_hook": "true"}}, "hooks.no_such_hook: unknown option"),
    ({"zone_update_keys": {"example.com": {"server": "ns1"}}}, "zone_update_keys.example.com.file: is required"),
    ({"zone_update_keys": {"example.com": {"file": "k", "port": 0}}}, "zone_update_keys.example.com.port"),
    ({"http_challenges": {"example.com": 5}}, "http_challenges.example.com: must be a directory or null"),
    ({"authorizations": {"example.com": ["bad..name"]}}, "authorizations.example.com[0]:"),
    ({"account": {"email": "nobody"}}, "account.email: must be an email address"),
    ({"key_type_suffixes": {"rsa": "", "ecdsa": ""}}, "key_type_suffixes: rsa and ecdsa need different suffixes"),
    ({"settings": {"verify": [{"port": 99999}]}}, "settings.verify[0].port: must be a port number"),
    ({"settings": {"verify": [{"port": 25, "starttls": "smtps"}]}}, "settings.verify[0].starttls: must be one of"),
    ({"settings": {"ct_submit_logs": ["nope"]}}, "settings.ct_submit_logs[0]: unknown log 'nope'"),
    ({"hpkp_headers": {"../x": "h {header}"}}, "hpkp_headers.../x: '../x' cannot be used in file names"),
    ({"ct_logs": {"a/b": {"url": "https://ct.example/"}}}, "ct_logs.a/b: 'a/b' cannot be used in file names"),
])
def test_config_problems_name_their_place(top, place):
    raw = config(**top)
    raw.setdefault("certificates", {"example.com": {}})
    with pytest.raises(ab.ConfigError) as info:
        parse(raw)
    assert any(place in problem for problem in info.value.problems), info.value.problems


@pytest.mark.parametrize("cert, place", [
    ({"alt_names": {"example.com": ["www"]}}, "certificates.example.com.common_name: 'example.com' must also be"),
    ({"alt_names": {"example.com": ["@", "a b"]}}, "certificates.example.com.alt_names.example.com[1]:"),
    ({"alt_names": {"example.com": "@"}, "services": ["nginx"]}, "certificates.example.com.services: unknown service 'nginx'"),
    ({"key_types": ["dsa"]}, "certificates.example.com.key_types[0]: must be one of"),
    ({"key_size": 1024}, "certificates.example.com.key_size"),
    ({"tlsa_records": {"example.com": [{"usage": "bogus"}]}}, "certificates.example.com.tlsa_records.example.com[0].usage"),
    ({"alt_name": {}}, "certificates.example.com.alt_name: unknown option (did you mean 'alt_names'?)"),
])
def test_certificate_problems_name_their_place(cert, place):
    with pytest.raises(ab.ConfigError) as info:
        parse(config(certificates={"example.com": cert}))
    assert any(place in problem for problem in info.value.problems), info.value.problems


def test_same_name_in_certificates_and_private_keys_is_an_error():
    raw = config(certificates={"example.com": {}},
                 private_keys={"example.com": {"certificates": {"www.example.com": {}}}})
    with pytest.raises(ab.ConfigError) as info:
        parse(raw)
    assert any("certificates.example.com: 'example.com' is also defined in private_keys" in p
               for p in info.value.problems)


def test_certificate_names_cannot_escape_directories():
    with pytest.raises(ab.ConfigError) as info:
        parse(config(certificates={"../../etc/passwd": {"common_name": "example.com"}}))
    assert "cannot be used in file names" in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ab.ConfigError) as info:
        parse(config(settings={"key_size": "x", "key_curve": 3}, certificates={"example.com": {}}))
    assert len(info.value.problems) == 2


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "acmebot.json"
    path.write_text('{"account": {"email": "a@b.c",}}')
    with pytest.raises(ab.ConfigError) as info:
        ab.load_config(str(path))
    assert "line 1 column" in str(info.value)


# -- keys, parameters, certificates ------------------------------------------

def test_encrypted_key_round_trip_and_wrong_passphrase(tmp_path):
    key = ab.generate_key("ecdsa", 0, "secp256r1")
    pem = ab.key_pem(key, "correct horse", "aes256")
    assert b"ENCRYPTED" in pem
    path = tmp_path / "k.key"
    path.write_bytes(pem)
    assert ab.public_der(ab.load_key(str(path), "correct horse")) == ab.public_der(key)
    with pytest.raises(ab.FileError, match="wrong passphrase"):
        ab.load_key(str(path), "wrong")
    with pytest.raises(ab.FileError, match="no passphrase"):
        ab.load_key(str(path), None)


def test_unavailable_cipher_falls_back_to_aes256_with_one_warning(caplog):
    key = ab.generate_key("ecdsa", 0, "secp256r1")
    ab._warned_ciphers.discard("blowfish")
    with caplog.at_level("WARNING", logger="acmebot"):
        ab.log.propagate = True
        try:
            first = ab.key_pem(key, "pw", "blowfish")
            ab.key_pem(key, "pw", "blowfish")
        finally:
            ab.log.propagate = False
    assert b"ENCRYPTED" in first
    assert sum("blowfish" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_ffdhe_parameters_equal_openssls_named_groups(bits):
    import warnings
    from cryptography.hazmat.primitives.serialization import load_pem_parameters
    named = subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                            f"group:ffdhe{bits}"], capture_output=True, check=True).stdout
    ours = ab.dhparam_pem(bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # cryptography deprecates finite-field DH
        expected = load_pem_parameters(named).parameter_numbers()
        got = load_pem_parameters(ours).parameter_numbers()
    assert (got.p, got.g) == (expected.p, expected.g)
    # and OpenSSL itself reads our file as DH parameters
    subprocess.run(["openssl", "dhparam", "-noout"], input=ours, check=True, capture_output=True)


@pytest.mark.parametrize("curve", ["secp256r1", "secp384r1", "secp521r1"])
def test_ec_parameters_equal_openssls(curve):
    name = "prime256v1" if curve == "secp256r1" else curve
    expected = subprocess.run(["openssl", "ecparam", "-name", name], capture_output=True, check=True).stdout
    assert ab.ecparam_pem(curve) == expected


def test_csr_carries_names_and_must_staple():
    from cryptography import x509
    key = ab.generate_key("ecdsa", 0, "secp256r1")
    csr = x509.load_pem_x509_csr(ab.make_csr(key, "example.com", ["example.com", "www.example.com"], True))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.com", "www.example.com"]
    assert x509.TLSFeatureType.status_request in csr.extensions.get_extension_for_class(x509.TLSFeature).value


class _Info:
    def __init__(self, days):
        self.lifetime = datetime.timedelta(days=days)


@pytest.mark.parametrize("lifetime_days, renewal_days, window_days", [
    (90, 30, 30), (45, 30, 15), (6, 30, 2), (90, 10, 10),
])
def test_renewal_window_is_the_smaller_of_renewal_days_and_a_third(lifetime_days, renewal_days, window_days):
    settings = ab.Settings(renewal_days=renewal_days)
    assert ab.renewal_window(settings, _Info(lifetime_days)) == datetime.timedelta(days=window_days)


# -- TSIG key files --------------------------------------------------------------

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_tsig_keygen_form(tmp_path):
    path = tmp_path / "update.key"
    path.write_text(f'# made by tsig-keygen\nkey "update.example.com" {{\n\talgorithm hmac-sha256;\n'
                    f'\tsecret "{SECRET}";\n}};\n')
    key = ab.load_tsig_key(str(path), "zone_update_keys.example.com.file")
    assert (key.name, key.algorithm, key.secret) == ("update.example.com.", "hmac-sha256", SECRET)
    assert ab.REDACTOR.redact(f"x {SECRET} y") == "x ******** y"


def test_tsig_secret_with_slashes_is_not_taken_for_a_comment(tmp_path):
    secret = "ab//cd+/ef" + "A" * 34 + "=="
    path = tmp_path / "update.key"
    path.write_text(f'/* made by hand */ key "u" {{ algorithm hmac-sha256; # trailing\n secret "{secret}"; }}; // end\n')
    assert ab.load_tsig_key(str(path), "z").secret == secret


def test_dnssec_keygen_pair(tmp_path):
    (tmp_path / "Kupdate.example.com.+165+01234.key").write_text(
        f"update.example.com. IN KEY 512 3 165 {SECRET}\n")
    (tmp_path / "Kupdate.example.com.+165+01234.private").write_text(
        f"Private-key-format: v1.3\nAlgorithm: 165 (HMAC_SHA512)\nKey: {SECRET}\nBits: AAA=\n")
    key = ab.load_tsig_key(str(tmp_path / "Kupdate.example.com.+165+01234.key"), "z")
    assert (key.name, key.algorithm, key.secret) == ("update.example.com.", "hmac-sha512", SECRET)


@pytest.mark.parametrize("files, message", [
    ({"k.key": "nonsense"}, "is not a BIND TSIG key file"),
    ({"k.key": f"n. IN KEY 512 3 163 {SECRET}\n"}, "needs its .private file"),
    ({"k.key": 'key "n" { algorithm hmac-sha256; };'}, "has no algorithm or secret"),
    ({"k.key": 'key "n" { algorithm hmac-sha256; secret "***"; };'}, "is not base64"),
])
def test_bad_tsig_key_files(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ab.ConfigError, match=message):
        ab.load_tsig_key(str(tmp_path / "k.key"), "zone_update_keys.x.file")
    with pytest.raises(ab.ConfigError, match="cannot read"):
        ab.load_tsig_key(str(tmp_path / "missing.key"), "zone_update_keys.x.file")


# -- file transactions -----------------------------------------------------------

def _txn_config(tmp_path):
    return parse(config(directories={"archive": str(tmp_path / "archive"), "resource": str(tmp_path / "resource")},
                        certificates={"example.com": {}}), str(tmp_path / "acmebot.json"))


def test_transaction_writes_modes_and_archives_what_it_replaces(tmp_path):
    cfg = _txn_config(tmp_path)
    now = datetime.datetime(2026, 11, 27, 10, 0, 0, tzinfo=datetime.timezone.utc)
    old = tmp_path / "certs" / "a.pem"
    old.parent.mkdir()
    old.write_bytes(b"old cert")
    txn = ab.Transaction(cfg, "example.com", now)
    txn.add(str(old), b"new cert")
    txn.add(str(tmp_path / "private" / "a.key"), b"key", private=True)
    written = txn.commit()
    assert {s.path for s in written} == {str(old), str(tmp_path / "private" / "a.key")}
    assert old.read_bytes() == b"new cert"
    assert oct(old.stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "private" / "a.key").stat().st_mode & 0o777) == "0o640"
    (stamp,) = os.listdir(tmp_path / "archive" / "example.com")
    assert (tmp_path / "archive" / "example.com" / stamp / "a.pem").read_bytes() == b"old cert"
    assert not [p for p in os.listdir(old.parent) if p.startswith(".acmebot-")]
    # the same content again: nothing to write, nothing archived
    txn = ab.Transaction(cfg, "example.com", now + datetime.timedelta(seconds=5))
    txn.add(str(old), b"new cert")
    assert txn.commit() == []
    assert len(os.listdir(tmp_path / "archive" / "example.com")) == 1


def test_transaction_is_all_or_nothing(tmp_path):
    cfg = _txn_config(tmp_path)
    first = tmp_path / "certs" / "a.pem"
    first.parent.mkdir()
    first.write_bytes(b"old a")
    blocker = tmp_path / "certs" / "b.pem"
    blocker.mkdir()                       # a directory where a file must go: rename fails
    (blocker / "x").write_text("keep")
    txn = ab.Transaction(cfg, "example.com", ab.utcnow())
    txn.add(str(first), b"new a")
    txn.add(str(blocker), b"new b")
    with pytest.raises(ab.FileError, match="nothing was changed"):
        txn.commit()
    assert first.read_bytes() == b"old a"
    assert sorted(os.listdir(first.parent)) == ["a.pem", "b.pem"]     # no temp files left
    archive = tmp_path / "archive" / "example.com"
    assert not archive.exists() or not any(archive.rglob("*.pem"))


def test_transaction_refuses_two_files_on_one_path(tmp_path):
    txn = ab.Transaction(_txn_config(tmp_path), "k", ab.utcnow())
    txn.add(str(tmp_path / "x"), b"1")
    with pytest.raises(ab.FileError, match="two files"):
        txn.add(str(tmp_path / "x"), b"2")


# -- hooks -----------------------------------------------------------------------

def test_hook_fields_are_shell_quoted(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    cfg = parse(config(hooks={"certificate_installed": f"printf '%s\\n' {{certificate_file}} > {out}"},
                       certificates={"example.com": {}}))
    hostile = f"x'; touch {marker}; echo '$(touch {marker})"
    ab.run_hook(cfg, "certificate_installed", key_name="k", key_type="rsa", certificate_name="c",
                certificate_file=hostile)
    assert out.read_text() == hostile + "\n"
    assert not marker.exists()


def test_a_failed_update_message_says_how_many_changes_went_in(monkeypatch):
    """Updates go out in messages of UPDATE_CHUNK changes; when a later message
    fails, the caller learns which records are in the zone (to remove them)."""
    sent = []

    def fake_update(self, zone_key, changes):       # stands in for the network send
        if len(sent) == 1:
            raise ab.ValidationError("refused")
        sent.append(list(changes))
    monkeypatch.setattr(ab.Dns, "_update", fake_update)
    dns = object.__new__(ab.Dns)
    changes = [("add", f"n{i}.example.test", "TXT", 60, "v") for i in range(ab.Dns.UPDATE_CHUNK + 10)]
    with pytest.raises(ab.ValidationError) as info:
        dns.update(None, changes)
    assert info.value.applied == ab.Dns.UPDATE_CHUNK and len(sent[0]) == ab.Dns.UPDATE_CHUNK


# -- DNS providers (dns-lexicon) ---------------------------------------------

@pytest.mark.parametrize("entry, place", [
    ({"credentials": {"auth_token": "x"}}, "dns_providers.example.com.provider: is required"),
    ({"provider": "Power DNS"}, "dns_providers.example.com.provider: is required: a dns-lexicon provider name"),
    ({"provider": "powerdns", "credentials": {"auth_token": ["x"]}},
     "dns_providers.example.com.credentials.auth_token: must be a provider option name"),
    ({"provider": "powerdns", "credentials_env": {"auth_token": "NOT A VARIABLE"}},
     "dns_providers.example.com.credentials_env.auth_token: must name an environment variable"),
    ({"provider": "powerdns", "credentials_file": 3}, "dns_providers.example.com.credentials_file: must be a file name"),
    ({"provider": "powerdns", "credential": {}},
     "dns_providers.example.com.credential: unknown option (did you mean 'credentials'?)"),
])
def test_dns_provider_problems_name_their_place(entry, place):
    with pytest.raises(ab.ConfigError) as info:
        parse(config(dns_providers={"example.com": entry}, certificates={"example.com": {}}))
    assert any(place in problem for problem in info.value.problems), info.value.problems


def test_a_zone_has_one_route_only(tmp_path):
    with pytest.raises(ab.ConfigError) as info:
        parse(config(zone_update_keys={"example.com": "k.key"},
                     dns_providers={"example.com": {"provider": "powerdns"}}, certificates={"example.com": {}}))
    assert any("dns_providers.example.com: zone example.com also has a zone_update_keys entry" in p
               for p in info.value.problems)


def test_dns_provider_zone_found_for_names_below_it_and_credentials_redacted():
    secret = "provider-secret-4711"
    parsed = parse(config(dns_providers={"example.com": {"provider": "powerdns",
                                                         "credentials": {"auth-token": secret}}},
                          zone_update_keys={"sub.example.com": "k.key"}, certificates={"example.com": {}}))
    where = ab.dns_zone_for(parsed, "_acme-challenge.www.example.com", "other.org")
    assert (where.zone, where.key, where.provider.provider) == ("example.com", None, "powerdns")
    assert ab.dns_zone_for(parsed, "a.sub.example.com", "example.com").zone == "example.com"  # configured zone first
    assert ab.dns_zone_for(parsed, "a.sub.example.com", "x.org").key.zone == "sub.example.com"  # longest match
    assert ab.provider_credentials(where.provider) == {"auth_token": secret}
    assert secret not in ab.REDACTOR.redact(f"token {secret}") and secret not in repr(where.provider)


@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o620, False)])
def test_dns_provider_credentials_file_must_be_private(tmp_path, mode, ok):
    path = tmp_path / "creds.json"
    path.write_text('{"auth_token": "file-secret-1234", "pdns-server": "http://127.0.0.1:1"}')
    path.chmod(mode)
    parsed = parse(config(dns_providers={"example.com": {"provider": "powerdns", "credentials_file": str(path),
                                                         "credentials": {"auth_token": "inline-1234"}}},
                          certificates={"example.com": {}}))
    provider = parsed.dns_providers["example.com"]
    if ok:
        assert ab.provider_credentials(provider) == {"auth_token": "file-secret-1234",
                                                     "pdns_server": "http://127.0.0.1:1"}
    else:
        with pytest.raises(ab.ConfigError, match=f"credentials_file: {path} is open to other users"):
            ab.provider_credentials(provider)


def test_dns_provider_credentials_from_the_environment(monkeypatch):
    parsed = parse(config(dns_providers={"example.com": {"provider": "powerdns",
                                                         "credentials_env": {"auth_token": "ACMEBOT_TEST_TOKEN"}}},
                          certificates={"example.com": {}}))
    provider = parsed.dns_providers["example.com"]
    monkeypatch.delenv("ACMEBOT_TEST_TOKEN", raising=False)
    with pytest.raises(ab.ConfigError, match="credentials_env.auth_token: the environment variable "
                                             "ACMEBOT_TEST_TOKEN is not set"):
        ab.provider_credentials(provider)
    monkeypatch.setenv("ACMEBOT_TEST_TOKEN", "env-secret-0815")
    assert ab.provider_credentials(provider) == {"auth_token": "env-secret-0815"}
    assert "env-secret-0815" not in ab.REDACTOR.redact("env-secret-0815")


def test_dns_provider_unknown_to_lexicon_is_named_with_a_hint():
    parsed = parse(config(dns_providers={"example.com": {"provider": "powerdsn"}}, certificates={"example.com": {}}))
    with pytest.raises(ab.ConfigError, match="dns_providers.example.com.provider: dns-lexicon has no provider "
                                             "'powerdsn' \\(did you mean 'powerdns'\\?\\)"):
        ab.lexicon_provider_class(parsed.dns_providers["example.com"])
    assert ab._provider_problems(parsed.dns_providers["example.com"])


@pytest.mark.parametrize("key_type", ab.KEY_TYPES)
def test_the_private_binding_that_picks_signature_algorithms_is_still_there(key_type):
    """verify offers one key type's signature algorithms through cryptography's private
    OpenSSL binding and pyOpenSSL's private context: a release that drops either fails here,
    loudly, before it silently breaks the per-key-type checks."""
    from cryptography.hazmat.bindings.openssl.binding import Binding
    from OpenSSL import SSL
    assert hasattr(Binding.lib, "SSL_CTX_set1_sigalgs_list")
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert hasattr(context, "_context")
    ab.restrict_sigalgs(context, key_type)          # raises TlsProbeError if OpenSSL refuses


# -- targets: what a run found on disk, built once and handed on ------------------

def _self_signed(name, days):
    """A certificate for ``name`` and the DER of its public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = ab.generate_key("ecdsa", 0, "secp256r1")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), ab.public_der(key)


def _targets_config(tmp_path):
    directories = {kind: str(tmp_path / kind) for kind in ab.REQUIRED_DIRECTORIES}
    directories.update(full_key=None, chain=None, param=None, full_certificate=None)
    return parse(config(directories=directories,
                        certificates={name: {"key_types": ["ecdsa"]} for name in ("a.test", "b.test", "c.test")}),
                 str(tmp_path / "acmebot.json"))


def test_targets_parse_each_certificate_once_and_say_why_there_is_none(tmp_path):
    cfg = _targets_config(tmp_path)
    (tmp_path / "certificate").mkdir()
    (tmp_path / "certificate" / "a.test.ecdsa.pem").write_bytes(_self_signed("a.test", 90)[0])
    (tmp_path / "certificate" / "b.test.ecdsa.pem").write_bytes(b"not a certificate\n")
    (tmp_path / "resource" / "keys").mkdir(parents=True)
    (tmp_path / "resource" / "keys" / "a.test.json").write_text('{"ecdsa": {"backup_created": "x"}}')
    a, b, c = ab.build_targets(cfg, cfg.keys)
    assert [t.name for t in (a, b, c)] == ["a.test/ecdsa", "b.test/ecdsa", "c.test/ecdsa"]
    assert a.key_files == ab.key_paths(cfg, a.key, "ecdsa") and a.paths == ab.cert_paths(cfg, a.cert, "ecdsa")
    assert a.state == ab.KeyState.load(cfg, "a.test") and c.state == ab.KeyState("c.test")
    assert a.info.names == frozenset({"a.test"}) and a.problem is None
    assert b.info is None and "contains no certificate" in b.problem
    assert c.info is None and c.problem == "no certificate yet"
    # parsed once, then handed on: the file is not read again unless the run changes it (next test)
    (tmp_path / "certificate" / "a.test.ecdsa.pem").write_bytes(_self_signed("a.test", 30)[0])
    assert a.info.lifetime == datetime.timedelta(days=90)


def test_targets_read_again_after_the_run_changed_their_key(tmp_path):
    cfg = _targets_config(tmp_path)
    (tmp_path / "certificate").mkdir()
    path = tmp_path / "certificate" / "a.test.ecdsa.pem"
    path.write_bytes(_self_signed("a.test", 90)[0])
    ctx = ab.Context(config=cfg, keys=cfg.keys, passphrases={}, report=ab.Report(),
                     targets=ab.build_targets(cfg, cfg.keys))
    a, b, _ = ctx.targets
    assert a.info.lifetime == datetime.timedelta(days=90) and b.info is None
    path.write_bytes(_self_signed("a.test", 30)[0])
    (tmp_path / "certificate" / "b.test.ecdsa.pem").write_bytes(_self_signed("b.test", 60)[0])
    ab.reload_targets(ctx, a.key)           # as install_key does once a key's files are written
    assert a.info.lifetime == datetime.timedelta(days=30)
    assert b.info is None                   # another key's target is left as it was
    # a key outside the selection gets a target of its own; the selected keys keep theirs
    ctx.targets = [a]
    others = ab.targets_of(ctx, cfg.keys)
    assert others[0] is a and others[1].info.lifetime == datetime.timedelta(days=60)
