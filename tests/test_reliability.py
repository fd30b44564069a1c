"""Integration tests: what a crash, a kill, a lost answer or a signal leaves behind.

Each test causes the failure for real against the lab's pebble and BIND (a SIGKILL,
strace killing acmebot at a chosen system call, a loopback proxy that loses the CA's
answer, a SIGTERM) and checks that nothing is lost and that the next run finishes the
work.  The kill campaign over every instant of a run is tests/test_crash.py.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from lab.ca_proxy import CAProxy, problem
from conftest import make_config, run_acmebot
from lab import ACMEBOT, acmebot_module, free_port, load_acmebot_config
from test_ca_features import account_client, edit, ecdsa_config, registration
from test_issue import assert_clean, assert_no_challenge_records, assert_ok, check_issued, default_paths, snapshot


def acmebot_process(config, *args):
    """acmebot started in its own process group (for kills), output to files."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACMEBOT_PASSPHRASE", "REQUESTS_CA_BUNDLE")}
    out = open(Path(config).parent / "killed.out", "w")
    return subprocess.Popen([sys.executable, str(ACMEBOT), "--config", str(config), "--accept-terms", *args],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=Path(config).parent, start_new_session=True)


def kill_group(process, signum=signal.SIGKILL):
    os.killpg(process.pid, signum)
    return process.wait(timeout=60)


def files(tmp_path):
    """snapshot() without the config (the tests edit it) and the results kept for --status."""
    return {k: v for k, v in snapshot(tmp_path).items() if k not in ("acmebot.json", "resource/status.json")}


def journals(tmp_path):
    """The journals of unfinished transactions (a journal's own temp file is not one)."""
    return [p for p in (Path(tmp_path) / "resource" / "journal").glob("*.json") if not p.name.startswith(".")]


def leftovers(tmp_path):
    """Temp files and journals an interrupted run left."""
    return sorted(str(p) for p in Path(tmp_path).rglob("*")
                  if p.name.startswith(".acmebot-") or (p.parent.name == "journal" and p.suffix == ".json"))


# -- a rollover that cannot finish ---------------------------------------------------------------------

def test_failed_rollover_changes_nothing(lab, tmp_path):
    lab.add_hosts("example.test", "frl")
    name = "frl.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}, "settings": {"hpkp_days": 0}})
    assert_ok(run_acmebot(config))
    before = files(tmp_path)
    edit(config, lambda raw: raw["settings"].update(acme_directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    for _ in range(2):      # the pinned backup key survives every failed attempt
        result = run_acmebot(config, "--rollover", "--force")
        assert_clean(result)
        assert result.returncode == 3, result.stdout + result.stderr
        assert files(tmp_path) == before
    edit(config, lambda raw: raw["settings"].update(acme_directory_url=lab.directory_url))
    backups = {t: default_paths(tmp_path, name, t)["backup"].read_bytes() for t in ("rsa", "ecdsa")}
    result = run_acmebot(config, "--rollover", "--force")
    assert_ok(result)
    for key_type in ("rsa", "ecdsa"):
        paths = default_paths(tmp_path, name, key_type)
        assert paths["key"].read_bytes() == backups[key_type]      # the backup that was pinned is the key now
        check_issued(lab, paths, key_type, [name])


# -- account key change -------------------------------------------------------------------------------

def _key_change_proxy(lab, after_forward):
    """A proxy that forwards keyChange to pebble, then calls after_forward() for its answer."""
    def intercept(request):
        if request["method"] == "POST" and request["path"].endswith("/rollover-account-key"):
            headers, body = request["raw"]
            proxy.forward("POST", request["path"], headers, body)
            return after_forward()
        return None
    proxy = CAProxy(lab, lab.pebble, intercept)
    return proxy


def _check_account_key(lab, proxy, tmp_path, uri, old_key):
    new_key = (tmp_path / "resource" / "client_key.pem").read_bytes()
    assert new_key != old_key
    assert not (tmp_path / "resource" / "client_key.pending.pem").exists()
    cl, regr = account_client(proxy.directory_url, lab.pebble_ca_bundle, new_key, uri)
    assert cl.query_registration(regr).uri == uri
    assert [p.read_bytes() for p in (tmp_path / "archive" / "account").glob("*/client_key.pem")] == [old_key]


def test_account_key_change_whose_answer_is_lost_keeps_the_key_the_ca_has(lab, tmp_path):
    proxy = _key_change_proxy(lab, lambda: problem(500, "serverInternal", "the answer was lost"))
    try:
        lab.add_hosts("example.test", "akl1", "akl2")
        config = ecdsa_config(tmp_path, lab, {"akl1.example.test": {}}, {"acme_directory_url": proxy.directory_url})
        assert_ok(run_acmebot(config))
        old_key = (tmp_path / "resource" / "client_key.pem").read_bytes()
        uri = registration(tmp_path)["uri"]
        result = run_acmebot(config, "--account-key-rollover")
        assert_clean(result)
        assert "finishing an interrupted account key change: the CA has the new key" in result.stdout
        _check_account_key(lab, proxy, tmp_path, uri, old_key)
        edit(config, lambda raw: raw["certificates"].update({"akl2.example.test": {}}))
        assert_ok(run_acmebot(config))
        assert registration(tmp_path)["uri"] == uri
        check_issued(lab, default_paths(tmp_path, "akl2.example.test", "ecdsa"), "ecdsa", ["akl2.example.test"])
    finally:
        proxy.stop()


def test_account_key_change_killed_after_the_ca_took_it_is_finished_by_the_next_run(lab, tmp_path):
    forwarded = threading.Event()
    release = threading.Event()

    def hold():
        forwarded.set()
        release.wait(60)
        return problem(500, "serverInternal", "too late")
    proxy = _key_change_proxy(lab, hold)
    try:
        lab.add_hosts("example.test", "akk1", "akk2")
        config = ecdsa_config(tmp_path, lab, {"akk1.example.test": {}}, {"acme_directory_url": proxy.directory_url})
        assert_ok(run_acmebot(config))
        old_key = (tmp_path / "resource" / "client_key.pem").read_bytes()
        uri = registration(tmp_path)["uri"]
        process = acmebot_process(config, "--account-key-rollover")
        assert forwarded.wait(60), "acmebot never asked for the key change"
        kill_group(process)
        release.set()
        # only the old key is installed; the new one waits beside it
        assert (tmp_path / "resource" / "client_key.pem").read_bytes() == old_key
        assert (tmp_path / "resource" / "client_key.pending.pem").exists()
        edit(config, lambda raw: raw["certificates"].update({"akk2.example.test": {}}))
        result = run_acmebot(config)
        assert_ok(result)
        assert "finishing an interrupted account key change" in result.stdout
        _check_account_key(lab, proxy, tmp_path, uri, old_key)
        check_issued(lab, default_paths(tmp_path, "akk2.example.test", "ecdsa"), "ecdsa", ["akk2.example.test"])
    finally:
        release.set()
        proxy.stop()


# -- revocation ---------------------------------------------------------------------------------------

def test_half_finished_revocation_is_finished_by_the_next_run(lab, tmp_path):
    seen = []

    def second_fails(request):
        if request["method"] == "POST" and request["path"].endswith("/revoke-cert"):
            seen.append(request["path"])
            if len(seen) == 2:
                return problem(500, "serverInternal", "revocation service down")
        return None
    proxy = CAProxy(lab, lab.pebble, second_fails)
    try:
        lab.add_hosts("example.test", "hrv1", "hrv2")
        config = make_config(tmp_path, lab, {
            "settings": {"key_size": 0, "acme_directory_url": proxy.directory_url},
            "private_keys": {"hrv": {"certificates": {"hrv1.example.test": {}, "hrv2.example.test": {}}}}})
        assert_ok(run_acmebot(config))
        before = snapshot(tmp_path)
        result = run_acmebot(config, "--revoke", "hrv")
        assert_clean(result)
        assert result.returncode == 3
        assert "revocation service down" in result.stderr and "next run tries again" in result.stderr
        after = snapshot(tmp_path)
        def revoking():
            return acmebot_module().KeyState.load(load_acmebot_config(config), "hrv").revoking
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(k.startswith(("resource/", "archive/")) for k in changed), changed   # no certificate moved
        assert revoking().certificates.keys() == {"hrv1.example.test/ecdsa", "hrv2.example.test/ecdsa"}

        result = run_acmebot(config, "--certs")
        assert_ok(result)
        assert "finishing the revocation of private key hrv" in result.stdout
        assert "Revoked certificate hrv1.example.test (ecdsa)" in result.stdout
        assert "Revoked certificate hrv2.example.test (ecdsa)" in result.stdout
        assert revoking() is None
        assert len(seen) == 4              # the first one again (already revoked counts as done), then the second
        for name in ("hrv1.example.test", "hrv2.example.test"):
            old = x509.load_pem_x509_certificate(before[f"certs/{name}.ecdsa.pem"][2])
            status = lab.pebble.cert_status(old.serial_number)
            assert status["Status"] == "Revoked"
            # the run went on: the key rolled over and new certificates were issued
            check_issued(lab, default_paths(tmp_path, name, "ecdsa", "hrv"), "ecdsa", [name])
    finally:
        proxy.stop()


# -- service reloads ----------------------------------------------------------------------------------

def test_reload_that_a_kill_prevented_is_done_by_the_next_run(lab, tmp_path):
    lab.add_hosts("example.test", "rlk")
    name = "rlk.example.test"
    reloads = tmp_path / "reloads.txt"
    killed = tmp_path / "killed-once"
    # the first reload kills acmebot (its shell's parent) as an OOM killer or a
    # systemd timeout would, after the files were installed
    reload = (f"if [ ! -e {killed} ]; then touch {killed}; kill -KILL $PPID; sleep 5; exit 1; fi; "
              f"echo reloaded >> {reloads}")
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "services": {"web": reload},
                                         "certificates": {name: {"services": ["web"]}}})
    process = acmebot_process(config)
    assert process.wait(timeout=300) == -signal.SIGKILL
    assert killed.exists() and not reloads.exists()
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])
    assert json.loads((tmp_path / "resource" / "reloads" / f"{name}.json").read_text()) == ["web"]

    result = run_acmebot(config)
    assert_ok(result)
    assert "Reloaded service web" in result.stdout
    assert reloads.read_text() == "reloaded\n"
    assert not (tmp_path / "resource" / "reloads" / f"{name}.json").exists()
    assert_ok(run_acmebot(config))
    assert reloads.read_text() == "reloaded\n"          # once, not on every run


def test_failed_reload_is_tried_again(lab, tmp_path):
    lab.add_hosts("example.test", "rlf")
    name = "rlf.example.test"
    flag = tmp_path / "reload-works"
    reloads = tmp_path / "reloads.txt"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0},
                                         "services": {"web": f"test -e {flag} && echo reloaded >> {reloads}"},
                                         "certificates": {name: {"services": ["web"]}}})
    result = run_acmebot(config)
    assert result.returncode == 0
    assert "service web reload" in result.stderr and not reloads.exists()
    flag.touch()
    result = run_acmebot(config)
    assert_ok(result)
    assert reloads.read_text() == "reloaded\n"


# -- signals --------------------------------------------------------------------------------------------

def test_sigterm_during_validation_removes_the_challenges_and_installs_nothing(lab, tmp_path):
    answered = threading.Event()

    def slow_challenge(request):
        if request["method"] == "POST" and "/chalZ/" in request["path"] and request["payload"] == {}:
            answered.set()
            time.sleep(5)
        return None
    proxy = CAProxy(lab, lab.pebble, slow_challenge)
    try:
        lab.add_hosts("example.test", "sigt")
        name = "sigt.example.test"
        config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": proxy.directory_url})
        process = acmebot_process(config)
        assert answered.wait(120), "acmebot never answered the challenge"
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 130
        output = (tmp_path / "killed.out").read_text()
        assert "interrupted by SIGTERM" in output and "Traceback" not in output
        assert_no_challenge_records(lab, [name])
        assert not default_paths(tmp_path, name, "ecdsa")["certificate"].exists()
        assert not default_paths(tmp_path, name, "ecdsa")["key"].exists()
        assert leftovers(tmp_path) == []
        assert_ok(run_acmebot(config))
        check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])
    finally:
        proxy.stop()


# -- a phase that meets something it did not expect ----------------------------------------------------

def test_unusable_stored_ocsp_response_does_not_stop_the_run(lab, tmp_path):
    """A stored OCSP response whose CertID names an unknown hash algorithm
    (cryptography raises UnsupportedAlgorithm for it) is replaced like a
    stale one, and the rest of the run goes on."""
    lab.add_hosts("example.test", "ocu")
    name = "ocu.example.test"
    reloads = tmp_path / "reloads.txt"
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0, "ocsp_responder_urls": [f"http://127.0.0.1:{free_port()}/"]},
        "services": {"web": f"echo reloaded >> {reloads}"},
        "certificates": {name: {"services": ["web"]}}})
    result = run_acmebot(config, "--certs")
    assert_ok(result)
    paths = default_paths(tmp_path, name, "ecdsa")
    blocks = paths["certificate"].read_bytes().split(b"-----END CERTIFICATE-----\n")
    leaf = x509.load_pem_x509_certificate(blocks[0] + b"-----END CERTIFICATE-----\n")
    issuer = x509.load_pem_x509_certificate(blocks[1] + b"-----END CERTIFICATE-----\n")
    signer = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    responder = (x509.CertificateBuilder().subject_name(issuer.subject).issuer_name(issuer.subject)
                 .public_key(signer.public_key()).serial_number(1).not_valid_before(now)
                 .not_valid_after(now + datetime.timedelta(days=1)).sign(signer, hashes.SHA256()))
    der = (ocsp.OCSPResponseBuilder()
           .add_response(leaf, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now, now + datetime.timedelta(days=3),
                         None, None)
           .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
           .sign(signer, hashes.SHA256())
           .public_bytes(serialization.Encoding.DER))
    sha1_oid = bytes.fromhex("06052b0e03021a")          # 1.3.14.3.2.26
    assert der.count(sha1_oid) == 1
    stored = tmp_path / "ocsp" / f"{name}.ecdsa.ocsp"
    stored.parent.mkdir(exist_ok=True)
    stored.write_bytes(der.replace(sha1_oid, bytes.fromhex("06052b0e03021b")))   # 1.3.14.3.2.27
    result = run_acmebot(config, "--renew")
    assert_clean(result)
    assert result.returncode == 0, result.stderr
    assert "no OCSP response for" in result.stderr      # the responder is down: a warning
    assert "internal error" not in result.stderr
    assert reloads.read_text() == "reloaded\n" * 2     # after --certs, and after --renew
    check_issued(lab, paths, "ecdsa", [name])


# -- a rename that fails half way -----------------------------------------------------------------------

def _strace_run(config, inject):
    """acmebot --renew with strace failing its renames as ``inject`` says."""
    return subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                           "-e", f"inject=rename:{inject}", sys.executable, str(ACMEBOT),
                           "--config", str(config), "--accept-terms", "--renew"],
                          capture_output=True, text=True, timeout=300, cwd=Path(config).parent)


def _issue_both(lab, tmp_path, host):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    return config, name


def test_a_rename_failing_half_way_puts_every_file_back(lab, tmp_path):
    config, name = _issue_both(lab, tmp_path, "rnf")
    before = files(tmp_path)
    for when in (2, 3, 5):      # the journal is the first rename; then the files
        result = _strace_run(config, f"error=EIO:when={when}")
        assert_clean(result)
        assert result.returncode == 5, result.stdout + result.stderr
        assert "Input/output error; nothing was changed" in result.stderr
        after = files(tmp_path)
        assert {k: v for k, v in after.items() if not k.startswith("archive/")} == before
        assert leftovers(tmp_path) == []
    result = run_acmebot(config, "--renew")
    assert_ok(result)
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(tmp_path, name, key_type), key_type, [name])


def test_a_failed_roll_back_is_finished_by_the_next_run(lab, tmp_path):
    config, name = _issue_both(lab, tmp_path, "rbf")
    before = files(tmp_path)
    # renames: 1 the journal, 2 the first file (done), 3 the second (fails),
    # 4 the journal's "roll back" (done), 5 putting the first file back (fails)
    result = _strace_run(config, "error=EIO:when=3+2")
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "the next run finishes the roll-back" in result.stderr
    assert len(journals(tmp_path)) == 1
    result = run_acmebot(config, "--certs")
    assert_ok(result)
    assert "Rolled back the interrupted installation" in result.stdout
    after = files(tmp_path)
    assert {k: v[2] for k, v in after.items() if not k.startswith("archive/")} == \
        {k: v[2] for k, v in before.items()}
    assert leftovers(tmp_path) == []


def test_an_unrecorded_roll_back_is_finished_forward_by_the_next_run(lab, tmp_path):
    """Every rename after the journal fails: the roll-back cannot even be
    recorded; the next run installs what the journal describes (the new
    certificates were issued already)."""
    config, name = _issue_both(lab, tmp_path, "ufw")
    before = files(tmp_path)
    result = _strace_run(config, "error=EIO:when=2+")
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "the next run finishes the installation" in result.stderr
    result = run_acmebot(config, "--certs")
    assert_ok(result)
    assert "Finished the interrupted installation" in result.stdout
    assert leftovers(tmp_path) == []
    after = files(tmp_path)
    for key_type in ("rsa", "ecdsa"):
        paths = default_paths(tmp_path, name, key_type)
        assert after[str(paths["certificate"].relative_to(tmp_path))] != before[str(paths["certificate"].relative_to(tmp_path))]
        check_issued(lab, paths, key_type, [name])


def test_temp_files_of_a_run_killed_before_its_journal_are_swept(lab, tmp_path):
    config, name = _issue_both(lab, tmp_path, "swp")
    before = files(tmp_path)
    result = _strace_run(config, "signal=KILL:when=1")      # the journal's own rename
    assert result.returncode != 0
    assert leftovers(tmp_path)                               # temp files, no journal
    assert not journals(tmp_path)
    assert {k: v for k, v in files(tmp_path).items() if k in before} == before
    result = run_acmebot(config, "--certs")
    assert_ok(result)
    assert leftovers(tmp_path) == []
    assert files(tmp_path) == before
