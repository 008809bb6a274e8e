"""A facade that can face a network: TLS / mutual TLS material, and the rule for non-loopback addresses.

The service listens on loopback by default. On any other address it refuses to start unless the calls are
protected — TLS (`--tls-cert` + `--tls-key`), or the shared token (`--auth-token-env`) — or the operator
says explicitly that the network is trusted (`--allow-insecure-network`). With `--tls-client-ca`, clients
must present a certificate signed by that CA (mutual TLS); the token, when set, is still required.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TlsFiles:
    cert: str = ""
    key: str = ""
    client_ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (an unresolvable name counts as not)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_files(tls: TlsFiles) -> Optional[str]:
    """What is wrong with the TLS flags and files (a sentence naming the flag and file), or None."""
    if bool(tls.cert) != bool(tls.key):
        return "--tls-cert and --tls-key go together (the certificate chain and its private key, PEM)"
    if tls.client_ca and not tls.cert:
        return "--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)"
    if not tls.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        return f"--tls-cert {tls.cert} / --tls-key {tls.key} could not be loaded as a PEM certificate chain and key: {exc}"
    if tls.client_ca:
        try:
            ctx.load_verify_locations(tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            return f"--tls-client-ca {tls.client_ca} could not be loaded as PEM CA certificates: {exc}"
    return None


def exposure_problem(host: str, tls: TlsFiles, token: str, allow_insecure: bool) -> Optional[str]:
    """Why binding `host` as configured is refused, or None."""
    if is_loopback(host) or tls.enabled or token or allow_insecure:
        return None
    return (f"--host {host} is not a loopback address and the calls would be neither encrypted nor "
            f"authenticated: give --tls-cert/--tls-key (and --tls-client-ca for client certificates), or set the "
            f"shared token (the variable named by --auth-token-env), or pass --allow-insecure-network if this "
            f"network is trusted")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def grpc_server_credentials(tls: TlsFiles):
    import grpc
    ca = read(tls.client_ca) if tls.client_ca else None
    return grpc.ssl_server_credentials([(read(tls.key), read(tls.cert))], root_certificates=ca,
                                       require_client_auth=ca is not None)


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """The same certificate for the HTTP API (aiohttp)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        ctx.load_verify_locations(tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
