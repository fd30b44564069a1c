"""SCT files (RFC 6962 add-chain to the loopback CT logs of ocsp_ct.py) and OCSP response
files (the loopback responder of the "ocsp" pebble), checked byte by byte here.

An .sct file is the TLS SignedCertificateTimestamp of RFC 6962 section 3.2:
version(1) log_id(32) timestamp(8) extensions<0..2^16-1> DigitallySigned; its signature
is verified here with the log's key over the section 3.2 structure.  An .ocsp file is a
DER OCSPResponse, checked with cryptography: successful, GOOD, for the certificate's
serial, signed by the issuer (or a responder it delegated to), current.

The fixtures are session-scoped, so every test starts from (and leaves) the "normal"
modes, and counts only what concerns its own certificates.
"""

import base64
import datetime
import hashlib
import re
import struct
import time
import uuid
from pathlib import Path

import josepy as jose
import pytest
from acme import client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import make_config, run_acmebot
from lab.inprocess import FakeClock, run_main
from lab.ocsp_ct import ct_log, fresh_modes, ocsp_pebble, sct_signed_data, verify_sct  # noqa: F401 (fixtures)
from test_issue import KEY_TYPES, assert_clean, assert_ok, default_paths

LOGS = ("log1", "log2")


# -- helpers -------------------------------------------------------------------------------------

def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def host_cert(lab, prefix):
    """A fresh host in example.test: (host, fqdn)."""
    host = unique(prefix)
    lab.add_hosts("example.test", host)
    return host, f"{host}.example.test"


def cert_entry(host, **extra):
    return {"alt_names": {"example.test": [host]}, **extra}


def log_entry(log, key=True):
    entry = {"url": log.url, "id": log.log_id_b64}
    if key:
        entry["key"] = log.key_b64
    return entry


def chain_of(tmp_path, name, key_type):
    """[leaf, intermediates...] from the certificate file acmebot wrote."""
    return x509.load_pem_x509_certificates(default_paths(tmp_path, name, key_type)["certificate"].read_bytes())


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def sct_file(tmp_path, name, key_type, log_name):
    return tmp_path / "scts" / name / key_type / f"{log_name}.sct"


def parse_sct(data):
    """The fields of a TLS SignedCertificateTimestamp; the whole input must be used."""
    version = data[0]
    log_id = data[1:33]
    timestamp = struct.unpack(">Q", data[33:41])[0]
    ext_len = struct.unpack(">H", data[41:43])[0]
    extensions = data[43:43 + ext_len]
    rest = data[43 + ext_len:]
    hash_alg, sig_alg, sig_len = struct.unpack(">BBH", rest[:4])
    signature = rest[4:]
    assert len(signature) == sig_len, "DigitallySigned length does not match the file"
    return {"version": version, "log_id": log_id, "timestamp": timestamp, "extensions": extensions,
            "hash_alg": hash_alg, "sig_alg": sig_alg, "signature": signature, "raw_signature": rest}


def check_sct(path, leaf, log):
    """The file is an SCT from `log` for `leaf`, verified here; returns its fields."""
    sct = parse_sct(Path(path).read_bytes())
    assert sct["version"] == 0
    assert sct["log_id"] == log.log_id == hashlib.sha256(log.key_der).digest()
    assert (sct["hash_alg"], sct["sig_alg"]) == (4, 3)        # sha256, ecdsa
    assert abs(sct["timestamp"] / 1000 - time.time()) < 3600
    # by hand over the RFC 6962 3.2 bytes ...
    log.public_key.verify(sct["signature"], sct_signed_data(sct["timestamp"], der(leaf), sct["extensions"]),
                          ec.ECDSA(hashes.SHA256()))
    # ... and with the fixture's checker of add-chain answers
    verify_sct({"sct_version": 0, "id": base64.b64encode(sct["log_id"]).decode(), "timestamp": sct["timestamp"],
                "extensions": base64.b64encode(sct["extensions"]).decode(),
                "signature": base64.b64encode(sct["raw_signature"]).decode()}, der(leaf), log.key_b64)
    return sct


def submissions_of(log, leaves):
    """The chains `log` received whose leaf is one of `leaves` (DER)."""
    return [chain for chain in log.submissions if chain[0] in set(leaves)]


def sct_config(tmp_path, lab, ct_log, name, host, logs=LOGS, key=True, **overrides):
    config = {
        "settings": {"ct_submit_logs": list(logs)},
        "ct_logs": {n: log_entry(ct_log.logs[n], key) for n in LOGS},
        "certificates": {name: cert_entry(host)},
    }
    for section, value in overrides.items():
        config.setdefault(section, {}).update(value)
    return make_config(tmp_path, lab, config)


def warnings_of(result):
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]


def assert_warned_ok(result):
    """Exit 0, no error, only WARNING lines on stderr; returns them."""
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    return warnings_of(result)


# -- SCT --------------------------------------------------------------------------------------------

def test_sct_files_for_two_logs_and_both_key_types(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "sct")
    config = sct_config(tmp_path, lab, ct_log, name, host)
    result = run_acmebot(config)
    assert_ok(result)
    leaves = {}
    for key_type in KEY_TYPES:
        chain = chain_of(tmp_path, name, key_type)
        leaves[key_type] = chain[0]
        for log_name in LOGS:
            log = ct_log.logs[log_name]
            path = sct_file(tmp_path, name, key_type, log_name)
            check_sct(path, chain[0], log)
            assert oct(path.stat().st_mode & 0o777) == oct(0o644)
            assert f"Installed SCT from {log_name} for {name} ({key_type})" in result.stdout
            # the whole chain was submitted, leaf first, once
            assert submissions_of(log, [der(chain[0])]) == [[der(c) for c in chain]]
    assert sorted(p.name for p in (tmp_path / "scts" / name).iterdir()) == sorted(KEY_TYPES)
    assert all(sorted(p.name for p in (tmp_path / "scts" / name / t).iterdir()) == ["log1.sct", "log2.sct"]
               for t in KEY_TYPES)

    # a second run (all phases, then --sct alone) submits nothing and changes nothing
    before = {p: p.read_bytes() for p in (tmp_path / "scts").rglob("*.sct")}
    counts = {n: len(ct_log.logs[n].submissions) for n in LOGS}
    for args in ((), ("--sct",)):
        again = run_acmebot(config, *args)
        assert_ok(again)
        assert again.stdout == ""
    assert {n: len(ct_log.logs[n].submissions) for n in LOGS} == counts
    assert {p: p.read_bytes() for p in (tmp_path / "scts").rglob("*.sct")} == before

    # a missing file is fetched again, and only that one
    missing = sct_file(tmp_path, name, "ecdsa", "log2")
    missing.unlink()
    again = run_acmebot(config, "--sct")
    assert_ok(again)
    assert again.stdout.strip() == f"Installed SCT from log2 for {name} (ecdsa)"
    check_sct(missing, leaves["ecdsa"], ct_log.logs["log2"])
    assert len(ct_log.logs["log1"].submissions) == counts["log1"]
    assert len(ct_log.logs["log2"].submissions) == counts["log2"] + 1

    # --renew: new certificates, new SCTs for them
    renewed = run_acmebot(config, "--renew")
    assert_ok(renewed)
    for key_type in KEY_TYPES:
        leaf = chain_of(tmp_path, name, key_type)[0]
        assert leaf.serial_number != leaves[key_type].serial_number
        for log_name in LOGS:
            check_sct(sct_file(tmp_path, name, key_type, log_name), leaf, ct_log.logs[log_name])
            assert len(submissions_of(ct_log.logs[log_name], [der(leaf)])) == 1
            assert f"Installed SCT from {log_name} for {name} ({key_type})" in renewed.stdout


def test_sct_stale_file_of_another_certificate_is_replaced_by_sct_phase(lab, tmp_path, ct_log):
    """An .sct file that does not verify for the current certificate (here: another
    certificate's SCT) is refreshed by --sct alone."""
    host, name = host_cert(lab, "sctst")
    config = sct_config(tmp_path, lab, ct_log, name, host, logs=["log1"],
                        certificates={name: cert_entry(host, key_types=["ecdsa"])})
    assert_ok(run_acmebot(config))
    path = sct_file(tmp_path, name, "ecdsa", "log1")
    leaf = chain_of(tmp_path, name, "ecdsa")[0]
    check_sct(path, leaf, ct_log.logs["log1"])
    good = path.read_bytes()
    # the signature over another timestamp: a well-formed SCT that does not verify
    sct = parse_sct(good)
    path.write_bytes(good[:33] + struct.pack(">Q", sct["timestamp"] + 1) + good[41:])
    result = run_acmebot(config, "--sct")
    assert_ok(result)
    assert result.stdout.strip() == f"Installed SCT from log1 for {name} (ecdsa)"
    check_sct(path, leaf, ct_log.logs["log1"])
    # garbage too
    path.write_bytes(b"\x00garbage")
    assert_ok(run_acmebot(config, "--sct"))
    check_sct(path, leaf, ct_log.logs["log1"])


def test_sct_log_without_key_is_refreshed_when_the_certificate_changes(lab, tmp_path, ct_log):
    """A log given with url and id only: no signature check possible, the SCT is stored
    and kept for the certificate it was fetched for; a new certificate gets a new SCT."""
    host, name = host_cert(lab, "sctnk")
    config = sct_config(tmp_path, lab, ct_log, name, host, logs=["log1"], key=False,
                        certificates={name: cert_entry(host, key_types=["rsa"])})
    assert_ok(run_acmebot(config))
    log = ct_log.logs["log1"]
    leaf = chain_of(tmp_path, name, "rsa")[0]
    path = sct_file(tmp_path, name, "rsa", "log1")
    check_sct(path, leaf, log)
    count = len(log.submissions)
    again = run_acmebot(config, "--sct")
    assert_ok(again)
    assert again.stdout == "" and len(log.submissions) == count
    assert_ok(run_acmebot(config, "--renew"))
    new_leaf = chain_of(tmp_path, name, "rsa")[0]
    assert new_leaf.serial_number != leaf.serial_number
    check_sct(path, new_leaf, log)
    assert len(log.submissions) == count + 1


def test_sct_log_down_is_a_warning_naming_it(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "sctdn")
    config = sct_config(tmp_path, lab, ct_log, name, host)
    ct_log.logs["log2"].set_mode("down")
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    assert len(warnings) == 2, result.stderr                   # one per key type
    for key_type in KEY_TYPES:
        assert any("log2" in w and ct_log.logs["log2"].url in w and f"{name} ({key_type})" in w
                   for w in warnings), warnings
        leaf = chain_of(tmp_path, name, key_type)[0]
        check_sct(sct_file(tmp_path, name, key_type, "log1"), leaf, ct_log.logs["log1"])
        assert not sct_file(tmp_path, name, key_type, "log2").exists()
    assert not any("log1" in w for w in warnings)
    # back up: --sct fetches what is missing, and only that
    ct_log.logs["log2"].set_mode("normal")
    count1 = len(ct_log.logs["log1"].submissions)
    result = run_acmebot(config, "--sct")
    assert_ok(result)
    for key_type in KEY_TYPES:
        check_sct(sct_file(tmp_path, name, key_type, "log2"), chain_of(tmp_path, name, key_type)[0],
                  ct_log.logs["log2"])
    assert len(ct_log.logs["log1"].submissions) == count1


@pytest.mark.parametrize("mode", ["bad-signature", "error"])
def test_sct_bad_answer_is_a_warning_and_nothing_is_stored(lab, tmp_path, ct_log, mode):
    host, name = host_cert(lab, "sctbad")
    config = sct_config(tmp_path, lab, ct_log, name, host, logs=["log1"],
                        certificates={name: cert_entry(host, key_types=["ecdsa"])})
    ct_log.logs["log1"].set_mode(mode)
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1 and "log1" in warnings[0] and f"{name} (ecdsa)" in warnings[0], warnings
    if mode == "bad-signature":
        assert "signature" in warnings[0]
    assert len(ct_log.logs["log1"].submissions) == (1 if mode == "bad-signature" else 0)
    assert not sct_file(tmp_path, name, "ecdsa", "log1").exists()
    assert "Installed SCT" not in result.stdout


def _not_after(tmp_path, name, key_type):
    return chain_of(tmp_path, name, key_type)[0].not_valid_after_utc


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_sct_sharded_log_uses_the_shard_holding_not_after(lab, tmp_path, ct_log):
    """Two shards on two servers: the one whose [start, end) holds notAfter gets the
    chain (start inclusive, end exclusive, checked at the exact second); a log with no
    such shard is a warning naming it, and nothing is stored for it."""
    host, name = host_cert(lab, "sctsh")
    certs = {name: cert_entry(host, key_types=["ecdsa"])}
    assert_ok(run_acmebot(make_config(tmp_path, lab, {"certificates": certs}), "--auth", "--certs"))
    not_after = _not_after(tmp_path, name, "ecdsa")
    leaf = chain_of(tmp_path, name, "ecdsa")[0]
    log1, log2 = ct_log.logs["log1"], ct_log.logs["log2"]
    day = datetime.timedelta(days=1)

    def shard(log, start, end):
        return {"url": log.url, "log_id": log.log_id_b64, "key": log.key_b64,
                "start": _iso(start), "end": _iso(end)}

    config = make_config(tmp_path, lab, {
        "settings": {"ct_submit_logs": ["sharded", "gap"]},
        "ct_logs": {
            # log1's shard ends exactly at notAfter (excluded), log2's starts there (included)
            "sharded": [shard(log1, not_after - 200 * day, not_after),
                        shard(log2, not_after, not_after + 200 * day)],
            "gap": [shard(log1, not_after - 400 * day, not_after - 200 * day),
                    shard(log2, not_after + day, not_after + 200 * day)],
        },
        "certificates": certs,
    })
    result = run_acmebot(config, "--sct")
    warnings = assert_warned_ok(result)
    assert submissions_of(log2, [der(leaf)]) == [[der(c) for c in chain_of(tmp_path, name, "ecdsa")]]
    assert submissions_of(log1, [der(leaf)]) == []
    check_sct(sct_file(tmp_path, name, "ecdsa", "sharded"), leaf, log2)
    assert result.stdout.strip() == f"Installed SCT from sharded for {name} (ecdsa)"
    assert len(warnings) == 1 and "gap" in warnings[0] and name in warnings[0], warnings
    assert not sct_file(tmp_path, name, "ecdsa", "gap").exists()
    # the stored SCT is current: nothing submitted again, the gap not warned about again
    # (once per state: a daily cron run does not repeat it) but still shown by --verbose
    again = run_acmebot(config, "--sct")
    assert_ok(again)
    assert again.stdout == ""
    verbose = run_acmebot(config, "--sct", "--verbose")
    assert_ok(verbose)
    assert any("gap" in line and name in line and "said before" in line for line in verbose.stdout.splitlines())
    assert len(submissions_of(log2, [der(leaf)])) == 1


def test_no_ct_submit_logs_no_sct_directory(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "sctnone")
    config = make_config(tmp_path, lab, {
        "settings": {"ct_submit_logs": []},
        "ct_logs": {n: log_entry(ct_log.logs[n]) for n in LOGS},
        "certificates": {name: cert_entry(host)},
    })
    assert_ok(run_acmebot(config))
    assert_ok(run_acmebot(config, "--sct"))
    assert not (tmp_path / "scts").exists()
    assert all(log.requests == 0 for log in ct_log.logs.values())


def test_sct_per_certificate_logs_override_settings(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "sctpc")
    config = sct_config(tmp_path, lab, ct_log, name, host, logs=["log1"],
                        certificates={name: cert_entry(host, key_types=["rsa"], ct_submit_logs=["log2"])})
    assert_ok(run_acmebot(config))
    leaf = chain_of(tmp_path, name, "rsa")[0]
    check_sct(sct_file(tmp_path, name, "rsa", "log2"), leaf, ct_log.logs["log2"])
    assert not sct_file(tmp_path, name, "rsa", "log1").exists()
    assert ct_log.logs["log1"].submissions == []


# -- OCSP -------------------------------------------------------------------------------------------

def ocsp_file(tmp_path, name, key_type):
    return tmp_path / "ocsp" / f"{name}.{key_type}.ocsp"


def ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=KEY_TYPES, settings=None):
    return make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": ocsp_pebble.directory_url, "acme_ca_bundle": ocsp_pebble.ca_bundle,
                     **(settings or {})},
        "certificates": {name: cert_entry(host, key_types=list(key_types))},
    })


def verify_signed_by(response, signer):
    key = signer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                   response.signature_hash_algorithm)
    else:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))


def check_ocsp_file(path, chain, signer=None):
    """A successful, GOOD, current DER OCSP response for chain[0], signed by `signer`
    (default: the issuer, chain[1]); returns it."""
    response = ocsp.load_der_ocsp_response(Path(path).read_bytes())
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == chain[0].serial_number
    issuer = chain[1]
    assert response.issuer_name_hash == hashlib.new(response.hash_algorithm.name,
                                                    issuer.subject.public_bytes()).digest()
    verify_signed_by(response, signer or issuer)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert response.this_update_utc <= now + datetime.timedelta(minutes=1)
    assert response.next_update_utc > now
    return response


def issue_only(config):
    assert_ok(run_acmebot(config, "--auth", "--certs"))


def test_ocsp_good_response_stored_then_kept(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocspok")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host)
    result = run_acmebot(config)
    assert_ok(result)
    for key_type in KEY_TYPES:
        chain = chain_of(tmp_path, name, key_type)
        assert chain[1] == ocsp_pebble.issuer
        check_ocsp_file(ocsp_file(tmp_path, name, key_type), chain)
        assert f"Installed OCSP response for {name} ({key_type})" in result.stdout
    assert ocsp_pebble.requests == 2
    assert sorted(r["serial"] for r in ocsp_pebble.served) == sorted(
        chain_of(tmp_path, name, t)[0].serial_number for t in KEY_TYPES)
    before = {t: ocsp_file(tmp_path, name, t).read_bytes() for t in KEY_TYPES}
    for args in ((), ("--ocsp",)):
        again = run_acmebot(config, *args)
        assert_ok(again)
        assert again.stdout == ""
    assert ocsp_pebble.requests == 2
    assert {t: ocsp_file(tmp_path, name, t).read_bytes() for t in KEY_TYPES} == before
    # a missing file is fetched again by --ocsp
    ocsp_file(tmp_path, name, "rsa").unlink()
    again = run_acmebot(config, "--ocsp")
    assert_ok(again)
    assert again.stdout.strip() == f"Installed OCSP response for {name} (rsa)"
    assert ocsp_pebble.requests == 3
    check_ocsp_file(ocsp_file(tmp_path, name, "rsa"), chain_of(tmp_path, name, "rsa"))


def test_ocsp_new_certificate_gets_a_new_response(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocsprn")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["ecdsa"])
    assert_ok(run_acmebot(config))
    old = chain_of(tmp_path, name, "ecdsa")[0]
    renewed = run_acmebot(config, "--renew")
    assert_ok(renewed)
    chain = chain_of(tmp_path, name, "ecdsa")
    assert chain[0].serial_number != old.serial_number
    check_ocsp_file(ocsp_file(tmp_path, name, "ecdsa"), chain)
    assert f"Installed OCSP response for {name} (ecdsa)" in renewed.stdout


def revoke_with_cert_key(ocsp_pebble, cert, key_path):
    """Revoke through the acme library, signed with the certificate's own key (JWK)."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    if isinstance(key, rsa.RSAPrivateKey):
        jwk, alg = jose.JWKRSA(key=key), jose.RS256
    else:
        jwk, alg = jose.JWKEC(key=key), jose.ES256
    net = client.ClientNetwork(jwk, alg=alg, verify_ssl=ocsp_pebble.ca_bundle, user_agent="acmebot-tests/sct_ocsp")
    acme = client.ClientV2(client.ClientV2.get_directory(ocsp_pebble.directory_url, net), net)
    acme.revoke(cert, 1)   # keyCompromise


def test_ocsp_revoked_certificate_is_warned_about_and_not_stored(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocsprv")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host)
    issue_only(config)
    cert = chain_of(tmp_path, name, "ecdsa")[0]
    revoke_with_cert_key(ocsp_pebble, cert, default_paths(tmp_path, name, "ecdsa")["key"])
    assert ocsp_pebble.pebble.cert_status(cert.serial_number)["Status"] == "Revoked"
    result = run_acmebot(config, "--ocsp")
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1, warnings
    assert f"{name} (ecdsa)" in warnings[0] and "REVOKED" in warnings[0], warnings
    assert not ocsp_file(tmp_path, name, "ecdsa").exists()
    assert [r["status"] for r in ocsp_pebble.served if r["serial"] == cert.serial_number] == ["REVOKED"]
    # the other key type's certificate is not revoked
    check_ocsp_file(ocsp_file(tmp_path, name, "rsa"), chain_of(tmp_path, name, "rsa"))
    assert result.stdout.strip() == f"Installed OCSP response for {name} (rsa)"


@pytest.mark.parametrize("mode,reason", [
    ("forged", "neither the issuer nor a delegated responder|not one the issuer delegated to|does not verify"),
    ("wrong-cert", "another certificate"),
    ("expired", "expired"),
    ("try-later", "TRY_LATER"),
])
def test_ocsp_invalid_response_is_rejected(lab, tmp_path, ocsp_pebble, mode, reason):
    host, name = host_cert(lab, "ocspbad")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["rsa"])
    issue_only(config)
    ocsp_pebble.set_mode(mode)
    result = run_acmebot(config, "--ocsp")
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1, warnings
    assert f"{name} (rsa)" in warnings[0] and ocsp_pebble.url in warnings[0], warnings
    assert re.search(reason, warnings[0]), warnings[0]
    assert not ocsp_file(tmp_path, name, "rsa").exists()
    assert ocsp_pebble.requests == 1
    # once the responder behaves, the next --ocsp stores a good response
    ocsp_pebble.set_mode("normal")
    assert_ok(run_acmebot(config, "--ocsp"))
    check_ocsp_file(ocsp_file(tmp_path, name, "rsa"), chain_of(tmp_path, name, "rsa"))


@pytest.mark.parametrize("mode", ["down", "error"])
def test_ocsp_responder_unreachable_is_a_warning_naming_the_url(lab, tmp_path, ocsp_pebble, mode):
    host, name = host_cert(lab, "ocspdn")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host)
    issue_only(config)
    ocsp_pebble.set_mode(mode)
    result = run_acmebot(config, "--ocsp")
    warnings = assert_warned_ok(result)
    assert len(warnings) == 2, warnings
    for key_type in KEY_TYPES:
        assert any(f"{name} ({key_type})" in w and ocsp_pebble.url in w for w in warnings), warnings
        assert not ocsp_file(tmp_path, name, key_type).exists()
    assert ocsp_pebble.requests == (0 if mode == "down" else 2)


def test_ocsp_delegated_responder_is_accepted(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocspdel")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["ecdsa"])
    issue_only(config)
    with ocsp_pebble.temporary_mode("delegated"):
        assert_ok(run_acmebot(config, "--ocsp"))
    chain = chain_of(tmp_path, name, "ecdsa")
    response = check_ocsp_file(ocsp_file(tmp_path, name, "ecdsa"), chain, signer=ocsp_pebble.delegated_cert)
    assert response.certificates == [ocsp_pebble.delegated_cert]
    eku = ocsp_pebble.delegated_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
    # a stored delegated response counts as current: no new request
    requests = ocsp_pebble.requests
    again = run_acmebot(config, "--ocsp")
    assert_ok(again)
    assert again.stdout == "" and ocsp_pebble.requests == requests


def test_ocsp_refreshed_past_half_its_validity(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocsphalf")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["rsa"])
    issue_only(config)
    ocsp_pebble.validity = datetime.timedelta(seconds=24)
    clock = FakeClock(real_sleep=True)          # in process: the runs at chosen times
    assert_ok(run_main(config, "--ocsp", clock=clock))
    path = ocsp_file(tmp_path, name, "rsa")
    first = check_ocsp_file(path, chain_of(tmp_path, name, "rsa"))
    assert first.next_update_utc - first.this_update_utc == datetime.timedelta(seconds=24)
    first_bytes = path.read_bytes()
    # before half of the validity: kept
    clock.set(first.this_update_utc + datetime.timedelta(seconds=10))
    again = run_main(config, "--ocsp", clock=clock)
    assert_ok(again)
    assert again.stdout == "" and ocsp_pebble.requests == 1
    # past half (but still valid): refreshed, by a responder whose this_update (to the
    # second, in real time) is later than the first one's
    clock.set(first.this_update_utc + datetime.timedelta(seconds=13))
    while datetime.datetime.now(datetime.timezone.utc) < first.this_update_utc + datetime.timedelta(seconds=1):
        time.sleep(0.05)
    result = run_main(config, "--ocsp", clock=clock)
    assert_ok(result)
    assert result.stdout.strip() == f"Installed OCSP response for {name} (rsa)"
    assert ocsp_pebble.requests == 2
    second = check_ocsp_file(path, chain_of(tmp_path, name, "rsa"))
    assert second.this_update_utc > first.this_update_utc
    assert path.read_bytes() != first_bytes


def test_ocsp_aia_url_preferred_over_configured_responders(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocspaia")
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["ecdsa"],
                         settings={"ocsp_responder_urls": ["http://127.0.0.1:9/never"]})
    result = run_acmebot(config)
    assert_ok(result)
    check_ocsp_file(ocsp_file(tmp_path, name, "ecdsa"), chain_of(tmp_path, name, "ecdsa"))


def test_ocsp_configured_responder_used_when_certificate_has_none(lab, tmp_path, ocsp_pebble):
    """The default lab pebble puts no OCSP URL in its certificates: the configured
    responder is asked; it serves another CA, so it answers unauthorized -> warning."""
    host, name = host_cert(lab, "ocspcfg")
    config = make_config(tmp_path, lab, {
        "settings": {"ocsp_responder_urls": [ocsp_pebble.url]},
        "certificates": {name: cert_entry(host, key_types=["ecdsa"])},
    })
    issue_only(config)
    cert = chain_of(tmp_path, name, "ecdsa")[0]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    result = run_acmebot(config, "--ocsp")
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1, warnings
    assert f"{name} (ecdsa)" in warnings[0] and ocsp_pebble.url in warnings[0], warnings
    assert "UNAUTHORIZED" in warnings[0], warnings[0]
    assert ocsp_pebble.requests == 1
    assert [r["status"] for r in ocsp_pebble.served] == ["unauthorized"]
    assert not ocsp_file(tmp_path, name, "ecdsa").exists()


def test_ocsp_no_url_and_no_responder_is_skipped_quietly(lab, tmp_path, ocsp_pebble):
    host, name = host_cert(lab, "ocspnone")
    config = make_config(tmp_path, lab, {
        "settings": {"ocsp_responder_urls": []},
        "certificates": {name: cert_entry(host, key_types=["ecdsa"])},
    })
    issue_only(config)
    result = run_acmebot(config, "--ocsp")
    assert_ok(result)
    assert result.stdout == ""
    verbose = run_acmebot(config, "--ocsp", "--verbose")
    assert_ok(verbose)
    lines = [line for line in verbose.stdout.splitlines()
             if "ocsp" in line.lower() and not line.startswith("timing:")]
    assert len(lines) == 1 and f"{name} (ecdsa)" in lines[0], verbose.stdout
    assert not (tmp_path / "ocsp").exists() or not any((tmp_path / "ocsp").iterdir())
    assert ocsp_pebble.requests == 0


# -- more SCT and OCSP details ------------------------------------------------------------------------

def test_sct_answer_with_another_logs_id_is_rejected(lab, tmp_path, ct_log):
    """A log configured with an id only (no key): an SCT carrying another log's id is
    not stored."""
    host, name = host_cert(lab, "sctid")
    config = make_config(tmp_path, lab, {
        "settings": {"ct_submit_logs": ["mislabelled"]},
        "ct_logs": {"mislabelled": {"url": ct_log.logs["log1"].url, "id": ct_log.logs["log2"].log_id_b64}},
        "certificates": {name: cert_entry(host, key_types=["ecdsa"])},
    })
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1 and "mislabelled" in warnings[0] and "id" in warnings[0], warnings
    assert not sct_file(tmp_path, name, "ecdsa", "mislabelled").exists()


def test_sct_and_ocsp_hooks_and_file_names(lab, tmp_path, ct_log, ocsp_pebble):
    host, name = host_cert(lab, "hooks")
    record = tmp_path / "hooks.txt"
    config = make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": ocsp_pebble.directory_url, "acme_ca_bundle": ocsp_pebble.ca_bundle,
                     "ct_submit_logs": ["log1"]},
        "ct_logs": {"log1": log_entry(ct_log.logs["log1"])},
        "directories": {"sct": str(tmp_path / "s" / "{key_type}-{name}"), "ocsp": str(tmp_path / "o")},
        "file_names": {"sct": "{name}.{ct_log_name}{suffix}.bin", "ocsp": "{key_type}-{name}.der"},
        "hooks": {
            "sct_installed": f"echo sct {{key_name}} {{key_type}} {{certificate_name}} {{ct_log_name}} "
                             f"{{sct_file}} >> {record}",
            "ocsp_installed": f"echo ocsp {{key_name}} {{key_type}} {{certificate_name}} {{ocsp_file}} >> {record}",
        },
        "certificates": {name: cert_entry(host, key_types=["ecdsa"])},
    })
    assert_ok(run_acmebot(config))
    sct_path = tmp_path / "s" / f"ecdsa-{name}" / f"{name}.log1.ecdsa.bin"
    ocsp_path = tmp_path / "o" / f"ecdsa-{name}.der"
    chain = chain_of(tmp_path, name, "ecdsa")
    check_sct(sct_path, chain[0], ct_log.logs["log1"])
    check_ocsp_file(ocsp_path, chain)
    assert sorted(record.read_text().splitlines()) == sorted([
        f"ocsp {name} ecdsa {name} {ocsp_path}",
        f"sct {name} ecdsa {name} log1 {sct_path}",
    ])
    # nothing installed: no hook
    assert_ok(run_acmebot(config, "--sct", "--ocsp"))
    assert len(record.read_text().splitlines()) == 2


def test_sct_and_ocsp_directories_null_turn_them_off(lab, tmp_path, ct_log, ocsp_pebble):
    host, name = host_cert(lab, "nulldirs")
    config = make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": ocsp_pebble.directory_url, "acme_ca_bundle": ocsp_pebble.ca_bundle,
                     "ct_submit_logs": ["log1"]},
        "ct_logs": {"log1": log_entry(ct_log.logs["log1"])},
        "directories": {"sct": None, "ocsp": None},
        "certificates": {name: cert_entry(host, key_types=["ecdsa"])},
    })
    assert_ok(run_acmebot(config))
    assert_ok(run_acmebot(config, "--sct", "--ocsp"))
    assert ct_log.logs["log1"].requests == 0 and ocsp_pebble.requests == 0
    assert not (tmp_path / "scts").exists() and not (tmp_path / "ocsp").exists()


def test_ocsp_configured_responders_tried_in_order(lab, tmp_path, ocsp_pebble):
    """No AIA URL: every configured responder is asked in turn; the warning names each."""
    host, name = host_cert(lab, "ocsplist")
    dead = "http://127.0.0.1:9/dead/"
    config = make_config(tmp_path, lab, {
        "settings": {"ocsp_responder_urls": [dead, ocsp_pebble.url]},
        "certificates": {name: cert_entry(host, key_types=["rsa"])},
    })
    issue_only(config)
    result = run_acmebot(config, "--ocsp")
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1 and dead in warnings[0] and ocsp_pebble.url in warnings[0], warnings
    assert warnings[0].index(dead) < warnings[0].index(ocsp_pebble.url)
    assert ocsp_pebble.requests == 1
    assert not ocsp_file(tmp_path, name, "rsa").exists()


@pytest.mark.parametrize("entry,where", [
    ({"url": "ftp://127.0.0.1/", "id": "AAAA"}, "ct_logs.bad.url"),
    ([{"url": "http://127.0.0.1:9/", "start": "yesterday"}], "ct_logs.bad[0].start"),
    ({"url": "http://127.0.0.1:9/", "id": "not base64!"}, "ct_logs.bad.log_id"),
    ("KEYMISMATCH", "ct_logs.bad.log_id"),
])
def test_ct_logs_configuration_errors(lab, tmp_path, ct_log, entry, where):
    if entry == "KEYMISMATCH":
        entry = {"url": ct_log.logs["log1"].url, "id": ct_log.logs["log2"].log_id_b64,
                 "key": ct_log.logs["log1"].key_b64}
    config = make_config(tmp_path, lab, {"settings": {"ct_submit_logs": ["bad"]}, "ct_logs": {"bad": entry},
                                         "certificates": {"cfg.example.test": {}}})
    result = run_acmebot(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_clean(result)
    assert any(line.startswith("ERROR: ") and where in line for line in result.stderr.splitlines()), result.stderr
    assert all(log.requests == 0 for log in ct_log.logs.values())


def test_ct_submit_logs_naming_an_unknown_log_is_a_configuration_error(lab, tmp_path):
    config = make_config(tmp_path, lab, {"settings": {"ct_submit_logs": ["nosuchlog"]},
                                         "certificates": {"cfg.example.test": {}}})
    result = run_acmebot(config, "--sct")
    assert result.returncode == 2
    assert "settings.ct_submit_logs[0]" in result.stderr and "nosuchlog" in result.stderr


def _delegate(ocsp_pebble, *, eku=True, valid=(-1 / 24, 30)):
    """(cert, key) of a responder certificate issued by the OCSP pebble's intermediate,
    valid from now + valid[0] days to now + valid[1] days."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now + datetime.timedelta(days=d) for d in valid)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test delegate")]))
               .issuer_name(ocsp_pebble.issuer.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return builder.sign(ocsp_pebble.responder.issuer_key, hashes.SHA256()), key


def run_with_delegate(lab, tmp_path, ocsp_pebble, monkeypatch, prefix, **delegate):
    """Issue, then --ocsp with the responder in "delegated" mode signing with a
    responder certificate made by _delegate(**delegate); returns (result, name)."""
    host, name = host_cert(lab, prefix)
    config = ocsp_config(tmp_path, lab, ocsp_pebble, name, host, key_types=["ecdsa"])
    issue_only(config)
    cert, key = _delegate(ocsp_pebble, **delegate)
    monkeypatch.setattr(ocsp_pebble.responder, "delegated_cert", cert)
    monkeypatch.setattr(ocsp_pebble.responder, "delegated_key", key)
    with ocsp_pebble.temporary_mode("delegated"):
        result = run_acmebot(config, "--ocsp")
    assert ocsp_pebble.requests == 1
    return result, name


def test_ocsp_delegated_responder_without_ocsp_signing_usage_is_rejected(lab, tmp_path, ocsp_pebble, monkeypatch):
    """RFC 6960 4.2.2.2: a delegated responder certificate must carry id-kp-OCSPSigning."""
    result, name = run_with_delegate(lab, tmp_path, ocsp_pebble, monkeypatch, "ocspnoeku", eku=False)
    warnings = assert_warned_ok(result)
    assert not ocsp_file(tmp_path, name, "ecdsa").exists(), result.stdout
    assert len(warnings) == 1 and ocsp_pebble.url in warnings[0] and "delegat" in warnings[0], warnings


def test_ocsp_own_delegate_with_ocsp_signing_usage_is_accepted(lab, tmp_path, ocsp_pebble, monkeypatch):
    """The control for the test above and for the pending ones: the same kind of
    certificate, with the usage and valid now, is accepted."""
    result, name = run_with_delegate(lab, tmp_path, ocsp_pebble, monkeypatch, "ocspowndlg")
    assert_ok(result)
    check_ocsp_file(ocsp_file(tmp_path, name, "ecdsa"), chain_of(tmp_path, name, "ecdsa"),
                    signer=ocsp_pebble.responder.delegated_cert)


@pytest.mark.parametrize("valid", [(-10, -1), (1, 30)], ids=["expired", "not-yet-valid"])
def test_ocsp_delegated_responder_outside_its_validity_is_rejected(lab, tmp_path, ocsp_pebble, monkeypatch, valid):
    """RFC 6960 4.2.2.2 / RFC 5280: a delegated responder's certificate is only a
    delegation while it is valid: a response signed by an expired (or not yet
    valid) delegate is not stored."""
    result, name = run_with_delegate(lab, tmp_path, ocsp_pebble, monkeypatch, "ocspdlgtime", valid=valid)
    warnings = assert_warned_ok(result)
    assert not ocsp_file(tmp_path, name, "ecdsa").exists(), result.stdout
    assert len(warnings) == 1 and ocsp_pebble.url in warnings[0], warnings
