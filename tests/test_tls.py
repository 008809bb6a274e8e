"""A facade that can face a network: TLS and mutual TLS on the gRPC port and the HTTP API, the token still
required with TLS, and the refusal to start on a non-loopback address with neither TLS nor a token.
Certificates are made by the test (openssl); nothing leaves loopback."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request

import grpc
import pytest

from common.tls import TlsFiles, check_files, exposure_problem, is_loopback
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.service import PYTHON, ROOT, free_port, start_service, wait_for

pytestmark = pytest.mark.integration


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name, san=None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    make_ca(d, "ca")
    make_ca(d, "other_ca")
    make_cert(d, "ca", "server", san="IP:127.0.0.1,DNS:localhost")
    make_cert(d, "ca", "client")
    make_cert(d, "other_ca", "stranger")
    return {n: os.path.join(d, n) for n in ("ca", "server", "client", "stranger")}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def echo(channel, metadata=None):
    return list(XG.DiagnosticsStub(channel).Echo(X.EchoRequest(pool="fake", payload=b"hi"), timeout=10,
                                                 metadata=metadata))


def secure(port, certs, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(certs["ca"] + ".pem"),
        private_key=read(certs[client] + ".key") if client else None,
        certificate_chain=read(certs[client] + ".pem") if client else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def tls_args(certs, mutual=False):
    args = ["--pools", "fake", "--tls-cert", certs["server"] + ".pem", "--tls-key", certs["server"] + ".key"]
    return args + (["--tls-client-ca", certs["ca"] + ".pem"] if mutual else [])


def served(channel, metadata=None):
    return wait_for(lambda: _try(channel, metadata), timeout=60)


def _try(channel, metadata):
    try:
        return echo(channel, metadata)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE and "worker" in (e.details() or ""):
            return None   # the fake worker is still starting
        raise


def test_tls_serves_secure_clients_and_refuses_plaintext(certs):
    http_port = free_port()
    with start_service(tls_args(certs) + ["--http-port", str(http_port)], wait_service=None) as svc:
        with secure(svc.port, certs) as ch:
            assert served(ch)[0].payload
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                echo(ch)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ctx = ssl.create_default_context(cafile=certs["ca"] + ".pem")
        with urllib.request.urlopen(f"https://127.0.0.1:{http_port}/v1/models", context=ctx, timeout=10) as r:
            assert "data" in json.loads(r.read())
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/models", timeout=10).read()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(certs):
    with start_service(tls_args(certs, mutual=True), wait_service=None) as svc:
        with secure(svc.port, certs, client="client") as ch:
            assert served(ch)
        for who in (None, "stranger"):
            with secure(svc.port, certs, client=who) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    echo(ch)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_still_required_over_tls(certs):
    env = {"PYTHONML_TOKEN": "s3cret-token"}
    with start_service(tls_args(certs), env=env, wait_service=None) as svc:
        with secure(svc.port, certs) as ch:
            assert served(ch, metadata=[("authorization", "Bearer s3cret-token")])
            with pytest.raises(grpc.RpcError) as e:
                echo(ch)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def run_py(*args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "PYTHONML_TOKEN"}
    full.update(env or {})
    return subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), *args], capture_output=True, text=True,
                          timeout=60, env=full)


def test_non_loopback_without_tls_or_token_is_refused(certs):
    p = run_py("--host", "0.0.0.0", "--pools", "fake")
    assert p.returncode == 2 and "not a loopback address" in p.stderr and "--allow-insecure-network" in p.stderr
    assert exposure_problem("0.0.0.0", TlsFiles(), "tok", False) is None
    assert exposure_problem("0.0.0.0", TlsFiles(certs["server"] + ".pem"), "", False) is None
    assert exposure_problem("0.0.0.0", TlsFiles(), "", True) is None
    assert exposure_problem("127.0.0.1", TlsFiles(), "", False) is None
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_bad_tls_flags_are_refused_naming_them(certs, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    p = run_py("--tls-cert", str(junk), "--tls-key", certs["server"] + ".key", "--pools", "fake")
    assert p.returncode == 2 and "--tls-cert" in p.stderr and "junk.pem" in p.stderr
    assert "go together" in check_files(TlsFiles(cert=certs["server"] + ".pem"))
    assert "needs --tls-cert" in check_files(TlsFiles(client_ca=certs["ca"] + ".pem"))
    assert "--tls-client-ca" in check_files(TlsFiles(certs["server"] + ".pem", certs["server"] + ".key", str(junk)))
