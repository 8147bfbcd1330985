"""Retry backoff, client configuration checks and TLS against a real TLS server."""

from __future__ import annotations

import datetime
import random

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.scripted_generation import Script, ScriptedServer, expected_text

from ttdist.client import Client, InvalidRequest, RetryPolicy, TLSConfig, Unavailable
from ttdist.client.calls import Attempts
from ttdist.client.errors import DeadlineExceeded, Overloaded


def test_backoff_grows_exponentially_up_to_the_cap_without_jitter():
    policy = RetryPolicy(max_attempts=8, initial_backoff_s=0.2, max_backoff_s=2.0, multiplier=2.0, jitter=0.0)
    assert [policy.backoff_s(n) for n in range(1, 7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_jitter_stays_within_its_band_and_varies():
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.25)
    rng = random.Random(3)
    delays = [policy.backoff_s(1, rng) for _ in range(200)]
    assert min(delays) >= 0.75 and max(delays) <= 1.25
    assert len({round(d, 6) for d in delays}) > 100


def test_attempts_retry_only_unavailable_and_stop_at_max_attempts():
    attempts = Attempts(RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0.0), timeout=None)
    attempts.start()
    assert attempts.retry_delay(Unavailable("down")) == pytest.approx(0.1)
    attempts.start()
    with pytest.raises(Unavailable, match="gave up after 2 attempts"):
        attempts.retry_delay(Unavailable("down"))
    with pytest.raises(Overloaded):
        Attempts(RetryPolicy(), timeout=None).retry_delay(Overloaded("busy"))


def test_max_wait_bounds_retrying_by_time_instead_of_attempts():
    policy = RetryPolicy(max_attempts=None, initial_backoff_s=0.5, max_backoff_s=0.5, jitter=0.0, max_wait_s=1.2)
    attempts = Attempts(policy, timeout=None)
    attempts.start()
    assert attempts.retry_delay(Unavailable("down")) == pytest.approx(0.5)
    attempts.started_at -= 0.8  # as if 0.8 s had been spent retrying
    with pytest.raises(Unavailable, match=r"down \(gave up after 0\.8 s, 1 attempts\)"):
        attempts.retry_delay(Unavailable("down"))


def test_attempts_never_sleep_past_the_deadline():
    attempts = Attempts(RetryPolicy(initial_backoff_s=5.0, max_backoff_s=5.0, jitter=0.0), timeout=1.0)
    assert 0 < attempts.start() <= 1.0
    with pytest.raises(DeadlineExceeded, match="while retrying: down"):
        attempts.retry_delay(Unavailable("down"))


@pytest.mark.parametrize("kwargs, field", [
    ({"max_attempts": 0}, "retry.max_attempts"),
    ({"initial_backoff_s": 0.0}, "retry.initial_backoff_s"),
    ({"multiplier": 0.5}, "retry.multiplier"),
    ({"jitter": 1.0}, "retry.jitter"),
    ({"max_wait_s": -1.0}, "retry.max_wait_s"),
])
def test_bad_retry_policy_names_the_field(kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"target": ""}, "target"),
    ({"target": "127.0.0.1:1", "timeout": -1}, "timeout"),
    ({"target": "127.0.0.1:1", "token": ""}, "token"),
    ({"target": "127.0.0.1:1", "tls": "yes"}, "tls"),
    ({"target": "127.0.0.1:1", "tls": TLSConfig(root_certificates="/nonexistent/ca.pem")}, "tls.root_certificates"),
    ({"target": "127.0.0.1:1", "retry": 3}, "retry"),
])
def test_bad_client_configuration_names_the_field(kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        Client(**kwargs)
    assert info.value.field == field


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ttdist.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("ttdist.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    return cert_pem, key_pem


def test_tls_channel_talks_to_a_tls_server(tmp_path):
    cert_pem, key_pem = _self_signed(tmp_path)
    server = ScriptedServer(Script(), credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)])).start()
    try:
        tls = TLSConfig(root_certificates=tmp_path / "ca.pem", server_name="ttdist.test")
        with Client(server.address, tls=tls, token="t") as client:
            assert client.generate("hi", max_tokens=2).text == expected_text(2, 2)
        assert server.seen.metadata[0]["authorization"] == "Bearer t"
        retry = RetryPolicy(max_attempts=1)
        with Client(server.address, retry=retry) as plain, pytest.raises(Unavailable):
            plain.generate("hi", max_tokens=2)
    finally:
        server.stop()
