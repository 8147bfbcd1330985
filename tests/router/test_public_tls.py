"""The router's public listeners over TLS and mutual TLS, with API keys, and the cluster token
on the replicas' internal ports: real gRPC and HTTP servers, certificates made in the test."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import grpc
import httpx2 as httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.scripted import expected_tokens
from tests.support.stack import Stack, make_stack
from ttdist.client import AsyncClient, RetryPolicy, TLSConfig, Unauthenticated, Unavailable
from ttdist.router.router import RouterConfig
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

TOKEN = "cluster-secret"
KEY = "api-key-1"


def _cert(name, issuer_key=None, issuer_name=None, ca=False, sans=()):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path, key, cert):
    (path.with_suffix(".key")).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (path.with_suffix(".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _cert("test-ca", ca=True)
    server = _cert("127.0.0.1", ca_key, ca.subject,
                   sans=(x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")))
    client = _cert("a-client", ca_key, ca.subject)
    other_ca_key, other_ca = _cert("other-ca", ca=True)
    stranger = _cert("stranger", other_ca_key, other_ca.subject)
    return {"ca": _write(d / "ca", ca_key, ca)[0], "server": _write(d / "server", *server),
            "client": _write(d / "client", *client), "stranger": _write(d / "stranger", *stranger)}


@pytest.fixture
async def serve():
    stacks: list[Stack] = []

    async def build(api: ApiConfig):
        stack = await make_stack(lambda i: ScriptedEngine(ScriptedEngineConfig(vocab_size=1000)),
                                 router_config=RouterConfig(refresh_s=0.05, cluster_token=TOKEN),
                                 replica_token=TOKEN, public_api=api)
        stacks.append(stack)
        return stack.server, stack.replica_servers[0]

    yield build
    for stack in stacks:
        await stack.close()


def _ssl(pki, client=None):
    context = ssl.create_default_context(cafile=pki["ca"])
    if client:
        context.load_cert_chain(*pki[client])
    return context


async def _generate(port, **options):
    async with AsyncClient(f"127.0.0.1:{port}", retry=RetryPolicy(max_attempts=1), timeout=20, **options) as client:
        return (await client.generate([1, 2, 3], max_tokens=4)).token_ids


async def test_tls_and_api_keys_on_grpc_and_http(serve, pki):
    cert, key = pki["server"]
    public, _ = await serve(ApiConfig(http_port=0, api_keys=(KEY,), tls_cert=cert, tls_key=key))
    tls = TLSConfig(root_certificates=pki["ca"])
    assert list(await _generate(public.port, tls=tls, token=KEY)) == expected_tokens([1, 2, 3], 4)
    for token in (None, "wrong"):
        with pytest.raises(Unauthenticated):
            await _generate(public.port, tls=tls, token=token)
    with pytest.raises(Unavailable):                  # plaintext to a TLS port
        await _generate(public.port, token=KEY)
    async with AsyncClient(f"127.0.0.1:{public.port}", tls=tls) as client:
        assert await client.health() == "SERVING"    # health needs no key

    base = f"https://127.0.0.1:{public.http_port}"
    async with httpx.AsyncClient(verify=_ssl(pki)) as http:
        assert (await http.get(base + "/health")).status_code == 200
        assert (await http.get(base + "/v1/models")).status_code == 401
        wrong = await http.get(base + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
    oa = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0,
                            http_client=httpx.AsyncClient(verify=_ssl(pki)))
    done = await oa.completions.create(model="scripted", prompt=[1, 2, 3], max_tokens=4)
    assert done.usage.completion_tokens == 4
    await oa.close()
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{public.http_port}/health")


async def test_mutual_tls_wants_a_client_certificate_from_the_ca(serve, pki):
    cert, key = pki["server"]
    public, _ = await serve(ApiConfig(http_port=0, tls_cert=cert, tls_key=key, tls_client_ca=pki["ca"]))
    mine = TLSConfig(root_certificates=pki["ca"], certificate_chain=pki["client"][0], private_key=pki["client"][1])
    assert list(await _generate(public.port, tls=mine)) == expected_tokens([1, 2, 3], 4)
    stranger = TLSConfig(root_certificates=pki["ca"], certificate_chain=pki["stranger"][0],
                         private_key=pki["stranger"][1])
    for tls in (TLSConfig(root_certificates=pki["ca"]), stranger):
        with pytest.raises(Unavailable):
            await _generate(public.port, tls=tls)
    base = f"https://127.0.0.1:{public.http_port}"
    async with httpx.AsyncClient(verify=_ssl(pki, "client")) as http:
        assert (await http.get(base + "/v1/models")).json()["data"][0]["id"] == "scripted"
    for context in (_ssl(pki), _ssl(pki, "stranger")):
        async with httpx.AsyncClient(verify=context) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(base + "/health")


async def test_the_replica_port_accepts_only_the_cluster_token(serve):
    public, replica = await serve(ApiConfig(http_port=None))
    assert public.http_port is None
    assert list(await _generate(public.port)) == expected_tokens([1, 2, 3], 4)   # the router presents the token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), sampling=pb.SamplingParams(max_tokens=2))
        for metadata in ((), (("authorization", "Bearer guess"),), (("authorization", f"Bearer {KEY}"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(request, metadata=metadata):
                    pass
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetClusterStatus(pb.ClusterStatusRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = [r async for r in stub.Generate(request, metadata=(("authorization", f"Bearer {TOKEN}"),))]
        assert answers[-1].complete.usage.completion_tokens == 2
