"""Smoke tests of the acme2certifier fixture (tests/lab/a2c.py), driven by the `acme` library
directly (not acmebot): directory, profiles, issuance, ARI renewalInfo, the POST log."""

import datetime

import josepy as jose
import pytest
from acme import challenges, client, crypto_util, messages
from acme.client import _renewal_info_path_component
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.a2c import a2c, ari_cert_id, start_a2c  # noqa: F401

NAME = "a2c.example.test"  # resolves nowhere: validation is disabled, so that is fine
EMAIL = "admin@example.test"


class NewOrderWithReplaces(messages.NewOrder):
    """newOrder with RFC 9773 `replaces` (the acme library has no field for it)."""
    replaces: str | None = jose.field("replaces", omitempty=True)


def new_client(directory_url):
    key = ec.generate_private_key(ec.SECP256R1())
    net = client.ClientNetwork(jose.JWKEC(key=key), alg=jose.ES256, user_agent="acmebot-tests/a2c")
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
    acme.new_account(messages.NewRegistration.from_data(email=EMAIL, terms_of_service_agreed=True))
    return acme


def make_csr(*names):
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return crypto_util.make_csr(key_pem, list(names))


def answer_all(acme, order):
    """Answer one challenge per authorization (validation is disabled: any type will do)."""
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
        acme.answer_challenge(chall, chall.response(acme.net.key))


def issue(acme, order):
    answer_all(acme, order)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    return acme.poll_and_finalize(order, deadline=deadline)


def leaf(fullchain_pem):
    return x509.load_pem_x509_certificate(fullchain_pem.encode())


def chain(fullchain_pem):
    return x509.load_pem_x509_certificates(fullchain_pem.encode())


@pytest.fixture(scope="module")
def acme_client(a2c):  # noqa: F811
    return new_client(a2c.directory_url)


@pytest.fixture(scope="module")
def issued(a2c, acme_client):  # noqa: F811
    """A certificate issued with profile "shortlived": (finalized order, requests index before)."""
    since = len(a2c.requests)
    order = acme_client.new_order(make_csr(NAME), profile="shortlived")
    # a2c 0.46 stores the profile but does not echo it in the order object
    stored = {row["name"]: row for row in a2c.orders()}[order.uri.rstrip("/").rsplit("/", 1)[-1]]
    assert stored["profile"] == "shortlived"
    return issue(acme_client, order), since


def test_directory(a2c):  # noqa: F811
    directory = a2c.directory()
    assert a2c.directory_url == f"http://127.0.0.1:{a2c.port}/directory"
    assert directory["newOrder"].startswith(f"http://127.0.0.1:{a2c.port}/")
    assert directory["renewalInfo"].startswith(f"http://127.0.0.1:{a2c.port}/")
    assert set(directory["meta"]["profiles"]) == {"classic", "shortlived"}
    assert a2c.root_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_issue_with_profile(a2c, issued):  # noqa: F811
    order, since = issued
    assert order.body.status == messages.STATUS_VALID
    certs = chain(order.fullchain_pem)
    assert len(certs) == 2  # leaf + issuing CA, no root
    cert, issuer = certs
    root = x509.load_pem_x509_certificate(a2c.root_pem.encode())
    cert.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(root)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - datetime.timedelta(days=a2c.cert_validity_days)) < datetime.timedelta(minutes=5)

    new_orders = a2c.new_order_payloads(since=since)
    assert len(new_orders) == 1
    assert new_orders[0]["profile"] == "shortlived"
    assert new_orders[0]["identifiers"] == [{"type": "dns", "value": NAME}]
    # every POST of the flow was decoded and answered
    entries = a2c.requests[since:]
    assert all(entry["url"] and entry["url"].endswith(entry["path"]) for entry in entries)
    assert {entry["status"] for entry in entries} <= {200, 201}


def test_unknown_profile_rejected(a2c, acme_client):  # noqa: F811
    since = len(a2c.requests)
    with pytest.raises(messages.Error) as raised:
        acme_client.new_order(make_csr(NAME), profile="no-such-profile")
    assert raised.value.typ == "urn:ietf:params:acme:error:invalidProfile"
    assert a2c.new_order_payloads(since=since)[0]["profile"] == "no-such-profile"


def test_renewal_info(a2c, acme_client, issued):  # noqa: F811
    order, _ = issued
    cert = leaf(order.fullchain_pem)
    assert ari_cert_id(order.fullchain_pem) == _renewal_info_path_component(cert)
    info, retry_after = a2c.get_renewal_info(order.fullchain_pem)
    assert retry_after == 3600
    window = info["suggestedWindow"]
    start = datetime.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    end = datetime.datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    expected_start = not_before + (not_after - not_before) * 0.85
    assert abs(start - expected_start) < datetime.timedelta(minutes=5)
    assert abs(end - not_after) < datetime.timedelta(minutes=5)
    # the acme library's own ARI client agrees
    renew_at, _next_check = acme_client.renewal_time(order.fullchain_pem.encode())
    assert start <= renew_at <= end
    # an unknown certificate is a 404
    assert a2c.renewal_info_response(a2c.issuer_pem).status_code == 404


def test_replaces_is_accepted_and_logged(a2c, acme_client, issued):  # noqa: F811
    order, _ = issued
    cert_id = ari_cert_id(order.fullchain_pem)
    since = len(a2c.requests)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=NAME)]
    response = acme_client._post(acme_client.directory["newOrder"],
                                 NewOrderWithReplaces(identifiers=identifiers, profile="classic",
                                                      replaces=cert_id))
    assert response.status_code == 201
    posted = a2c.new_order_payloads(since=since)
    assert posted == [{"identifiers": [{"type": "dns", "value": NAME}], "profile": "classic",
                       "replaces": cert_id}]


def test_second_instance_short_validity(tmp_path):
    short = start_a2c(tmp_path, name="a2c-short", cert_validity_days=1, renewal_threshold_pctg=50,
                      retry_after_timeout=60)
    try:
        acme = new_client(short.directory_url)
        order = issue(acme, acme.new_order(make_csr(NAME)))
        cert = leaf(order.fullchain_pem)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert abs(lifetime - datetime.timedelta(days=1)) < datetime.timedelta(minutes=5)
        root = x509.load_pem_x509_certificate(short.root_pem.encode())
        chain(order.fullchain_pem)[1].verify_directly_issued_by(root)
        info, retry_after = short.get_renewal_info(order.fullchain_pem)
        assert retry_after == 60
        start = datetime.datetime.fromisoformat(info["suggestedWindow"]["start"].replace("Z", "+00:00"))
        assert abs(start - (cert.not_valid_before_utc + lifetime / 2)) < datetime.timedelta(minutes=5)
    finally:
        short.stop()
    assert not short.running()

