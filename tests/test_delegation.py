"""CNAME-delegated dns-01 challenges through the lab's BIND."""

import json

import pytest

from conftest import make_config, run_acmebot
from test_issue import assert_ok, check_issued, default_paths


@pytest.fixture(scope="module")
def cname_pebble(lab):
    """A pebble whose validation resolver recurses, so it follows CNAMEs into
    other zones (the authoritative lab BIND answers a CNAME and stops there)."""
    return lab.pebbles.get("cname") or lab.start_pebble("cname", dns_server=lab.start_resolver())


def _without_example_test_key(config, pebble):
    raw = json.loads(config.read_text())
    raw["settings"]["acme_directory_url"] = pebble.directory_url
    raw["zone_update_keys"].pop("example.test")          # only example.net may be updated
    raw["settings"]["reload_zone_command"] = None        # and no local handling either
    config.write_text(json.dumps(raw))


def test_cname_delegated_challenge_is_written_where_it_points(lab, cname_pebble, tmp_path):
    lab.add_hosts("example.test", "deleg")
    update = lab.update("example.test")
    update.replace("_acme-challenge.deleg", 300, "CNAME", "deleg.acme.example.net.")
    lab.send_update(update)
    name = "deleg.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    _without_example_test_key(config, cname_pebble)
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "delegated to deleg.acme.example.net (zone example.net)" in result.stdout
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=cname_pebble)
    assert lab.txt("deleg.acme.example.net") == []                     # cleaned up
    assert [r.to_text() for r in lab.query("_acme-challenge.deleg.example.test", "CNAME")] == \
        ["deleg.acme.example.net."]                                     # left alone


def test_configured_alias_without_a_cname(lab, cname_pebble, tmp_path):
    lab.add_hosts("example.test", "alias")
    name = "alias.example.test"
    seen = tmp_path / "seen"
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0},
        "challenge_aliases": {name: "alias-target.example.net"},
        # pebble follows CNAMEs, not our config: the hook adds the CNAME the alias
        # stands for, as an admin would have done in the zone once
        "hooks": {"set_dns_challenge": f"echo {{domain}} {{zone}} >> {seen}"},
        "certificates": {name: {}}})
    update = lab.update("example.test")
    update.replace("_acme-challenge.alias", 300, "CNAME", "alias-target.example.net.")
    lab.send_update(update)
    _without_example_test_key(config, cname_pebble)
    result = run_acmebot(config)
    assert_ok(result)
    assert seen.read_text().split() == [name, "example.net"]
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=cname_pebble)
    assert lab.txt("alias-target.example.net") == []


def test_challenge_without_any_way_to_publish_fails_clearly(lab, cname_pebble, tmp_path):
    lab.add_hosts("example.test", "nowhere")
    name = "nowhere.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    _without_example_test_key(config, cname_pebble)
    result = run_acmebot(config)
    assert result.returncode == 4
    assert "no zone_update_keys entry and settings.reload_zone_command is null" in result.stderr
    assert not default_paths(tmp_path, name, "ecdsa")["certificate"].exists()
