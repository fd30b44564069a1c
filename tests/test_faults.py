"""Real faults under acmebot (no mocks): a full disk (where the certificates go, where the
state and the journal go), a directory that cannot be written, the archive on another
filesystem than the files it keeps, a DNS server that is down, a TSIG key that the server
rejects, and challenge records that never reach the name servers.

Every fault: a clear one-line error, the right exit code (5 files, 4 DNS), every file left
byte for byte as it was (installed files not even rewritten: same mtime), no temp file, and
the next run, with the fault removed, exits 0 with consistent files.

Filesystem faults are made in a private mount namespace (mountns.py: a holder process made
by `unshare --mount --propagation private`; acmebot runs in it through nsenter and the test
reads its files through /proc/PID/root), so no mount is ever seen on the host; every mount
is undone when the test ends.  directories.temp is unset there: temp files go beside their
targets, on the filesystem under test.
"""

import base64
import functools
import json
import subprocess

import dns.message
import dns.query
import pytest

from conftest import make_config, run_acmebot
from lab import Server, deep_merge, free_port, named_options, tsig_key_text
from lab.mountns import MountNamespace
from test_issue import assert_clean, assert_no_challenge_records, assert_ok, check_issued, default_paths, snapshot

# Written by every run, whatever happens: the result of the run, for --status.
RUN_RECORDS = ("resource/status.json",)
TEMP_MARK = ".acmebot-"


@pytest.fixture
def mountns():
    with MountNamespace() as ns:
        yield ns


def fault_config(tmp_path, lab, name, overrides=None):
    """One ECDSA certificate for name (dns-01 through the lab's BIND), temp files beside
    their targets."""
    host, _, zone = name.partition(".")
    lab.add_hosts(zone, host)
    base = {"settings": {"key_size": 0},
            "directories": {"temp": None},
            "certificates": {name: {}}}
    return make_config(tmp_path, lab, deep_merge(base, overrides or {}))


def assert_fails(result, code, *needles):
    """Exit `code`; stderr is one-line ERROR/WARNING messages and exactly one ERROR line
    holds every needle (and names no temp file)."""
    print(f"exit {result.returncode}:\n{result.stderr}")     # shown with -s and on failure
    assert_clean(result)
    assert result.returncode == code, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    matching = [line for line in errors if all(needle in line for needle in needles)]
    assert len(matching) == 1, (needles, result.stderr)
    # the file named is one the user knows, not a temp file of the transaction
    assert TEMP_MARK not in matching[0], matching[0]
    return errors


def assert_untouched(before, after):
    """Every file as it was, byte for byte and mode, but the run's own record; installed
    files (all but acmebot's state in directories.resource) not even rewritten (mtime)."""
    for record in RUN_RECORDS:
        before.pop(record, None)
        after.pop(record, None)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after)
                     if after[p][1:] != before[p][1:] or not p.startswith("resource/") and after[p] != before[p])
    assert {"added": added, "removed": removed, "changed": changed} == {"added": [], "removed": [], "changed": []}


def assert_no_temp_files(root):
    assert sorted(str(p) for p in root.rglob(f"*{TEMP_MARK}*")) == []
    journal = root / "resource" / "journal"
    assert not journal.exists() or [p for p in journal.rglob("*") if p.is_file()] == []


def fill(path):
    """Writes `path` until the filesystem is full (ENOSPC)."""
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as error:
                assert error.errno == 28, error     # ENOSPC
                return


# -- files ----------------------------------------------------------------------------------

def test_disk_full(lab, tmp_path, mountns):
    """The certificates are on a small tmpfs that is full: --renew fails with exit 5
    naming the file and ENOSPC, installs nothing, leaves no temp file; with space again it
    renews.  The archive and the full_key files are on that tmpfs too, so that what the
    renewal replaces is archived within one filesystem (test_archive_on_another_filesystem
    is about the other case)."""
    name = "enospc.example.test"
    small = tmp_path / "small"
    mountns.mount_tmpfs(small, "200k")
    directories = {kind: str(small / kind) for kind in ("certificate", "chain", "full_key", "archive")}
    config = fault_config(tmp_path, lab, name, {"directories": directories})
    run = functools.partial(run_acmebot, wrapper=mountns.wrapper)
    assert_ok(run(config))
    root = mountns.path(tmp_path)
    filler = mountns.path(small) / "filler"
    fill(filler)
    before = snapshot(root)

    result = run(config, "--renew")
    assert_fails(result, 5, str(small), "No space left on device")
    assert_untouched(before, snapshot(root))
    assert_no_temp_files(root)

    filler.unlink()
    paths = dict(default_paths(root, name, "ecdsa"), certificate=root / "small/certificate" / f"{name}.ecdsa.pem",
                 chain=root / "small/chain" / f"{name}_chain.ecdsa.pem",
                 full_key=root / "small/full_key" / f"{name}_full.ecdsa.key")
    _renews(lab, run, config, root, paths, name, root / "small/archive")


def _renews(lab, run, config, root, paths, name, archive):
    """--renew works: a new, consistent certificate; the old one in the archive."""
    old = paths["certificate"].read_bytes()
    assert_ok(run(config, "--renew"))
    check_issued(lab, paths, "ecdsa", [name])
    assert paths["certificate"].read_bytes() != old
    assert old in {p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    assert_no_temp_files(root)


def test_state_directory_full(lab, tmp_path, mountns):
    """directories.resource (account, key state, where the transaction's journal goes)
    is a small tmpfs that is full: --renew fails with exit 5 naming it and ENOSPC, and no
    certificate is replaced (a transaction that cannot record itself must not start);
    with space again it renews."""
    name = "enospc-state.example.test"
    resource = tmp_path / "resource"
    mountns.mount_tmpfs(resource, "200k")
    config = fault_config(tmp_path, lab, name)
    run = functools.partial(run_acmebot, wrapper=mountns.wrapper)
    assert_ok(run(config))
    root = mountns.path(tmp_path)
    filler = mountns.path(resource) / "filler"
    fill(filler)
    before = snapshot(root)

    result = run(config, "--renew")
    assert_fails(result, 5, str(resource), "No space left on device")
    assert_untouched(before, snapshot(root))
    assert_no_temp_files(root)

    filler.unlink()
    _renews(lab, run, config, root, default_paths(root, name, "ecdsa"), name, root / "archive")


def _read_only_bind(mountns, path):
    mountns.bind_readonly(path)
    return lambda: mountns.umount(path)


def _immutable(mountns, path):
    # root ignores mode bits (chmod 000 stops nothing): the immutable flag stops root too
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)


@pytest.mark.parametrize("fault, strerror", [(_read_only_bind, "Read-only file system"),
                                             (_immutable, "Operation not permitted")],
                         ids=["read-only-mount", "chattr-immutable"])
def test_certificate_directory_not_writable(lab, tmp_path, mountns, fault, strerror):
    """The certificate directory refuses writes (a read-only bind mount: EROFS; the
    immutable flag on an ext4 directory: EPERM): exit 5 naming it, nothing installed
    (the new private key neither), no temp file; writable again, the next run renews."""
    name = f"nowrite-{fault.__name__.strip('_').replace('_', '-')}.example.test"
    certs = tmp_path / "certs"
    config = fault_config(tmp_path, lab, name)
    run = functools.partial(run_acmebot, wrapper=mountns.wrapper)
    assert_ok(run(config))
    root = mountns.path(tmp_path)
    before = snapshot(root)
    undo = fault(mountns, certs)
    try:
        result = run(config, "--rollover", "--force")
        assert_fails(result, 5, str(certs), strerror)
        assert_untouched(before, snapshot(root))
        assert_no_temp_files(root)
    finally:
        undo()
    paths = default_paths(root, name, "ecdsa")
    backup = paths["backup"].read_bytes()
    assert_ok(run(config, "--rollover", "--force"))
    check_issued(lab, paths, "ecdsa", [name])
    assert paths["key"].read_bytes() == backup          # the rollover happened this time
    assert_no_temp_files(root)


@pytest.mark.parametrize("change", ["new-backup-key", "rollover"])
def test_archive_on_another_filesystem(lab, tmp_path, mountns, change):
    """directories.resource and directories.archive are two tmpfs, the keys and
    certificates on a third filesystem: a change of the key state file (a new backup key,
    a rollover) archives files across filesystems, which a hard link cannot do (EXDEV):
    the run must still work and archive what it replaced."""
    name = f"exdev-{change}.example.test"
    mountns.mount_tmpfs(tmp_path / "resource", "4m")
    mountns.mount_tmpfs(tmp_path / "archive", "4m")
    config = fault_config(tmp_path, lab, name)
    run = functools.partial(run_acmebot, wrapper=mountns.wrapper)
    assert_ok(run(config))
    root = mountns.path(tmp_path)
    paths = default_paths(root, name, "ecdsa")
    state_path = root / "resource" / "keys" / f"{name}.json"
    old = {kind: paths[kind].read_bytes() for kind in ("key", "backup", "certificate")}
    old_state = state_path.read_bytes()
    if change == "new-backup-key":
        paths["backup"].unlink()
        args = ()
    else:
        args = ("--rollover", "--force")

    result = run(config, *args)
    assert_ok(result)
    check_issued(lab, paths, "ecdsa", [name])
    assert_no_temp_files(root)
    archived = {p.read_bytes() for p in (root / "archive").rglob("*") if p.is_file()}
    assert old_state in archived, "the replaced key state is not in the archive"
    assert state_path.read_bytes() != old_state
    assert paths["backup"].read_bytes() != old["backup"]
    if change == "rollover":
        assert paths["key"].read_bytes() == old["backup"]
        assert old["key"] in archived and old["certificate"] in archived
    else:
        assert paths["key"].read_bytes() == old["key"]
        state = json.loads(state_path.read_bytes())
        new_backup = base64.b64decode(state["ecdsa"]["backup_spki"])
        assert new_backup != base64.b64decode(json.loads(old_state)["ecdsa"]["backup_spki"])
    before = snapshot(root)
    assert_ok(run(config))
    assert_untouched(before, snapshot(root))


# -- DNS ------------------------------------------------------------------------------------

def _dns_fault(lab, tmp_path, host, fault, code, needles):
    """Issues host.example.test, then adds the name new-host.example.test (a new
    authorization: dns-01) with `fault` merged into the config: the run must fail with
    `code` and an error holding `needles`, leave every file as it was and no record in
    the lab's BIND; without the fault the next run adds the name."""
    name = f"{host}.example.test"
    added = f"new-{host}.example.test"
    lab.add_hosts("example.test", f"new-{host}")
    alt_names = {"certificates": {name: {"alt_names": {"example.test": [host, f"new-{host}"]}}}}
    assert_ok(run_acmebot(fault_config(tmp_path, lab, name)))
    before = snapshot(tmp_path)

    config = fault_config(tmp_path, lab, name, deep_merge(alt_names, fault))
    result = run_acmebot(config)
    assert_fails(result, code, *needles)
    after = snapshot(tmp_path)
    before.pop("acmebot.json"), after.pop("acmebot.json")
    assert_untouched(before, after)
    assert_no_challenge_records(lab, [name, added])
    assert_no_temp_files(tmp_path)

    config = fault_config(tmp_path, lab, name, alt_names)
    assert_ok(run_acmebot(config))
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name, added])
    assert_no_challenge_records(lab, [name, added])
    return result


def test_dns_update_server_down(lab, tmp_path):
    """The zone's update server is a closed loopback port: exit 4 naming the zone, the
    server and the port."""
    port = free_port()      # nothing listens there
    _dns_fault(lab, tmp_path, "dnsdown", {"zone_update_keys": {"example.test": {"port": port}}}, 4,
               ["example.test", "127.0.0.1", f"port {port}"])


def test_tsig_key_rejected_keeps_files(lab, tmp_path):
    """The update key file has a wrong secret: BIND rejects the UPDATE (BADSIG): exit 4
    naming the key; the secret is never printed."""
    bad_key = lab.bad_key_file(tmp_path)
    result = _dns_fault(lab, tmp_path, "badsig", {"zone_update_keys": {"example.test": {"file": str(bad_key)}}},
                        4, ["example.test", "update.example.test"])
    secret = bad_key.read_text().split('secret "')[1].split('"')[0]
    assert secret not in result.stdout + result.stderr


def _start_shadow_bind(lab, directory):
    """A second BIND, primary for example.test with the same update key as the lab's:
    it accepts acmebot's UPDATE, but it is not the server that example.test's NS record
    names (the lab's BIND, which acmebot asks), so the records never show up there."""
    port = free_port()
    key = lab.keys["update.example.test"]
    (directory / "example.test.zone").write_text(
        "$TTL 300\n@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60\n"
        "@ IN NS ns1.example.test.\nns1 IN A 127.0.0.1\n")
    conf = directory / "named.conf"
    conf.write_text(
        tsig_key_text("update.example.test", base64.b64encode(key.secret).decode())
        + named_options(directory, port)
        + 'zone "example.test" {\n    type primary;\n    file "example.test.zone";\n'
          "    update-policy { grant update.example.test zonesub ANY; };\n};\n")
    server = Server("shadow named", ["named", "-g", "-c", conf], directory / "named.log", cwd=directory)

    def ready():
        query = dns.message.make_query("example.test", "SOA")
        return bool(dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5).answer)
    try:
        server.wait_ready(ready)
    except BaseException:
        server.stop()
        raise
    return server, port


def test_challenge_records_never_propagate(lab, tmp_path, tmp_path_factory):
    """The UPDATE goes to a server that accepts it but is not the zone's name server
    (zone_update_keys points at a second BIND; settings.dns_resolvers and the NS record
    lead to the lab's BIND, which never gets the records): acmebot waits for the records
    at the zone's name server, gives up after its lookup attempts with exit 4 naming the
    record and the name server, and does not ask the CA to validate."""
    shadow_dir = tmp_path_factory.mktemp("shadow-bind")
    shadow, port = _start_shadow_bind(lab, shadow_dir)
    try:
        result = _dns_fault(lab, tmp_path, "noprop", {
            "settings": {"max_dns_lookup_attempts": 4, "dns_lookup_delay": 0.25},
            "zone_update_keys": {"example.test": {"port": port}}}, 4,
            ["new-noprop.example.test", "127.0.0.1"])
    finally:
        shadow.stop()
    assert "TXT" in result.stderr
    # the records did reach the second BIND (the update itself worked), and were removed
    log = (shadow_dir / "named.log").read_text()
    assert "_acme-challenge.new-noprop.example.test" in log, log[-2000:]
