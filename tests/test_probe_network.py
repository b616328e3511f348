"""Endpoint probe (DNS, TCP, STARTTLS, TLS) against loopback servers only.

Why real servers: the reasons and certificate facts come from real resolver answers and real
OpenSSL verification errors; mocks would only test our assumptions about them. Names resolve
through tests/dnsserver.py (or /etc/hosts for `localhost`), never through real DNS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.config import Endpoint, TLSSettings
from exporter.probes import dns as dnsprobe
from exporter.probes import tcptls
from exporter.probes.endpoint import probe_endpoint
from exporter.probes.result import Transcript
from exporter.reasons import Reason

try:
    from tests.dnsserver import TestDNSServer, start_dns_server
except ImportError:  # tests/ is not a package: pytest put the directory itself on sys.path
    from dnsserver import TestDNSServer, start_dns_server  # type: ignore[no-redef]

NOW = dt.datetime.now(dt.UTC)
IDENTITIES = ("127.0.0.1", "::1", "localhost", "mail.test", "v6.test")


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_available()


# --------------------------------------------------------------------------- certificates


class Certs:
    def __init__(self, workdir: Path):
        self.ca = trustme.CA()
        self.ca_file = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.valid_not_after = NOW + dt.timedelta(days=90)
        self.expired_not_after = NOW - dt.timedelta(days=2)
        self.wrong_not_after = NOW + dt.timedelta(days=45)
        self.valid = self.ca.issue_cert(*IDENTITIES, not_after=self.valid_not_after)
        self.expired = self.ca.issue_cert(*IDENTITIES, not_before=NOW - dt.timedelta(days=30),
                                          not_after=self.expired_not_after)
        self.wrong_host = self.ca.issue_cert("other.invalid", not_after=self.wrong_not_after)
        self.other_ca = trustme.CA()
        self.untrusted_not_after = NOW + dt.timedelta(days=20)
        self.untrusted = self.other_ca.issue_cert(*IDENTITIES, not_after=self.untrusted_not_after)

    def server_ctx(self, leaf: trustme.LeafCert, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx

    def tls(self, **kw: object) -> TLSSettings:
        return TLSSettings(ca_file=self.ca_file, **kw)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_chain(workdir: Path, intermediate_not_after: dt.datetime, leaf_not_after: dt.datetime
                ) -> tuple[Path, Path, Path]:
    """root -> intermediate (expires first) -> leaf for 127.0.0.1. Returns (root, chain, key) files."""
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, issuer: str, pub: ec.EllipticCurvePublicKey, signer: ec.EllipticCurvePrivateKey,
             not_after: dt.datetime, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                critical=True)
        else:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            b = b.add_extension(san, critical=False)
        return b.sign(signer, hashes.SHA256())

    rk, ik, lk = key(), key(), key()
    root = cert("test root", "test root", rk.public_key(), rk, NOW + dt.timedelta(days=3650), True)
    inter = cert("test intermediate", "test root", ik.public_key(), rk, intermediate_not_after, True)
    leaf = cert("leaf", "test intermediate", lk.public_key(), ik, leaf_not_after, False)
    pem = serialization.Encoding.PEM
    (workdir / "root.pem").write_bytes(root.public_bytes(pem))
    (workdir / "chain.pem").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    (workdir / "key.pem").write_bytes(lk.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return workdir / "root.pem", workdir / "chain.pem", workdir / "key.pem"


# --------------------------------------------------------------------------- servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _drain_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TLS service that greets and waits for the client to leave (at most 5 s)."""
    try:
        async with asyncio.timeout(5):
            writer.write(b"* OK test server ready\r\n")
            while await reader.read(4096):
                pass
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads whatever comes, never answers (bounded)."""
    try:
        async with asyncio.timeout(5):
            while await reader.read(4096):
                pass
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


class Servers:
    """Starts loopback servers and closes them all at teardown."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler, ctx: ssl.SSLContext | None = None,
                    host: str = "127.0.0.1") -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:  # torn down at the end of the test: not an error
                writer.transport.abort()

        server = await asyncio.start_server(tracked, host, 0, ssl=ctx)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        pending = {t for t in self.handlers if not t.done()}
        if pending:  # handlers end by themselves once the client is gone; give them a moment
            _done, pending = await asyncio.wait(pending, timeout=2)
        for t in pending:
            t.cancel()
        for s in self.servers:
            try:
                async with asyncio.timeout(2):
                    await s.wait_closed()
            except TimeoutError:
                pass


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    await s.close()


@pytest.fixture
async def dns_server() -> AsyncIterator[TestDNSServer]:
    server = await start_dns_server()
    yield server
    server.close()


def resolvers_for(server: TestDNSServer) -> list[str]:
    return [f"127.0.0.1:{server.port}"]


class SMTPServer:
    """Scripted SMTP server: greeting, EHLO (STARTTLS optional), STARTTLS, QUIT."""

    def __init__(self, ctx: ssl.SSLContext, offer_starttls: bool = True,
                 greeting: str = "220 mail.test ESMTP"):
        self.ctx, self.offer_starttls, self.greeting = ctx, offer_starttls, greeting
        self.received: list[str] = []

    async def _reply(self, writer: asyncio.StreamWriter, lines: list[str], code: int = 250) -> None:
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            writer.write(f"{code}{sep}{line}\r\n".encode())
        await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                writer.write(self.greeting.encode() + b"\r\n")
                await writer.drain()
                if not self.greeting.startswith("220"):
                    return
                tls = False
                for _ in range(20):
                    line = await reader.readline()
                    if not line:
                        return
                    cmd = line.decode().strip()
                    self.received.append(cmd)
                    verb = cmd.split()[0].upper() if cmd else ""
                    if verb == "EHLO":
                        ext = ["mail.test Hello", "SIZE 35882577", "8BITMIME"]
                        if self.offer_starttls and not tls:
                            ext.append("STARTTLS")
                        if tls:
                            ext.append("AUTH LOGIN XOAUTH2")
                        await self._reply(writer, ext)
                    elif verb == "STARTTLS":
                        await self._reply(writer, ["2.0.0 SMTP server ready"], 220)
                        await writer.start_tls(self.ctx)
                        tls = True
                    elif verb == "QUIT":
                        await self._reply(writer, ["2.0.0 Service closing transmission channel"], 221)
                        return
                    else:
                        await self._reply(writer, ["5.3.3 Unrecognized command"], 500)
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            writer.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_time(value: object, expected: dt.datetime) -> None:
    assert isinstance(value, float)
    assert abs(value - expected.timestamp()) < 3


# --------------------------------------------------------------------------- DNS


def test_parse_resolver() -> None:
    assert dnsprobe.parse_resolver("10.0.0.2") == ("10.0.0.2", 53)
    assert dnsprobe.parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert dnsprobe.parse_resolver("[::1]:53") == ("::1", 53)
    assert dnsprobe.parse_resolver("[::1]") == ("::1", 53)
    assert dnsprobe.parse_resolver("::1") == ("::1", 53)
    for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            dnsprobe.parse_resolver(bad)


async def test_success_through_configured_resolver(certs: Certs, servers: Servers,
                                                   dns_server: TestDNSServer) -> None:
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.valid))
    ep = Endpoint("mail.test", port, certs.tls())
    r = await probe_endpoint(ep, 5.0, resolvers_for(dns_server))
    assert r.success, (r.reason, r.detail, r.transcript.render())
    assert r.reason is None
    f = r.facts
    assert f["dns_success"] == 1.0 and f["dns_addresses"] == 1.0 and 0 <= f["dns_duration"] < 5
    assert f["tcp_success"] == 1.0 and f["tcp_duration"] >= 0
    assert f["tls_success"] == 1.0 and f["tls_cert_verified"] == 1.0 and f["tls_duration"] >= 0
    assert f["tls_version"] == "TLSv1.3"
    assert_time(f["tls_cert_expiry"], certs.valid_not_after)
    assert_time(f["tls_cert_not_after_leaf"], certs.valid_not_after)
    assert set(f) == {"dns_success", "dns_duration", "dns_addresses", "tcp_success", "tcp_duration",
                      "tls_success", "tls_duration", "tls_version", "tls_cert_verified", "tls_cert_expiry",
                      "tls_cert_not_after_leaf"}
    assert {("mail.test.", "A"), ("mail.test.", "AAAA")} <= set(dns_server.queries)


@pytest.mark.parametrize(("name", "reason"), [
    ("missing.test", Reason.DNS_NXDOMAIN),
    ("noaddr.test", Reason.DNS_NXDOMAIN),  # exists, but neither A nor AAAA
    ("broken.test", Reason.DNS_SERVFAIL),
])
async def test_dns_failures(dns_server: TestDNSServer, name: str, reason: Reason) -> None:
    r = await probe_endpoint(Endpoint(name, 993, TLSSettings()), 3.0, resolvers_for(dns_server))
    assert not r.success and r.reason is reason, r.detail
    assert r.facts["dns_success"] == 0.0 and r.facts["dns_addresses"] == 0.0
    assert not any(k.startswith(("tcp_", "tls_")) for k in r.facts)


async def test_dns_timeout_is_bounded(dns_server: TestDNSServer) -> None:
    start = time.monotonic()
    r = await probe_endpoint(Endpoint("slow.test", 993, TLSSettings()), 1.0, resolvers_for(dns_server))
    assert time.monotonic() - start < 1.5
    assert r.reason is Reason.DNS_TIMEOUT and r.facts["dns_success"] == 0.0


async def test_system_resolver_uses_hosts_file(certs: Certs, servers: Servers) -> None:
    """`localhost` comes from /etc/hosts (never DNS); if it also maps to ::1 with nothing
    listening there, the probe fails over to 127.0.0.1."""
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.valid))
    r = await probe_endpoint(Endpoint("localhost", port, certs.tls()), 5.0)
    assert r.success, (r.reason, r.detail, r.transcript.render())
    assert r.facts["dns_success"] == 1.0 and r.facts["dns_addresses"] >= 1


@pytest.mark.parametrize(("code", "delay", "reason"), [
    (socket.EAI_NONAME, 0.0, Reason.DNS_NXDOMAIN),
    (socket.EAI_AGAIN, 0.0, Reason.DNS_SERVFAIL),  # fast EAI_AGAIN: the server said SERVFAIL
    (socket.EAI_AGAIN, 0.2, Reason.DNS_TIMEOUT),  # slow EAI_AGAIN: the resolver timed out
    (socket.EAI_FAIL, 0.0, Reason.DNS_SERVFAIL),
])
async def test_getaddrinfo_error_mapping(monkeypatch: pytest.MonkeyPatch, code: int, delay: float,
                                         reason: Reason) -> None:
    async def fake_getaddrinfo(*args: object, **kw: object) -> list:
        await asyncio.sleep(delay)
        raise socket.gaierror(code, "fake")

    monkeypatch.setattr(dnsprobe, "EAI_AGAIN_TIMEOUT_AFTER", 0.1)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    r = await probe_endpoint(Endpoint("anything.test", 993, TLSSettings()), 2.0)
    assert r.reason is reason and r.facts["dns_success"] == 0.0


async def test_ip_literal_skips_dns(certs: Certs, servers: Servers) -> None:
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.valid))
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls()), 5.0, ["127.0.0.1:9"])
    assert r.success, r.detail
    assert not any(k.startswith("dns_") for k in r.facts)


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback")
async def test_ipv6_literal_and_aaaa(certs: Certs, servers: Servers, dns_server: TestDNSServer) -> None:
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.valid), host="::1")
    r = await probe_endpoint(Endpoint("::1", port, certs.tls()), 5.0)
    assert r.success, r.detail
    r = await probe_endpoint(Endpoint("v6.test", port, certs.tls()), 5.0, resolvers_for(dns_server))
    assert r.success, r.detail
    assert r.facts["dns_addresses"] == 1.0


# --------------------------------------------------------------------------- TCP


async def test_connection_refused() -> None:
    r = await probe_endpoint(Endpoint("127.0.0.1", free_port(), TLSSettings()), 3.0)
    assert r.reason is Reason.CONNECTION_REFUSED
    assert r.facts["tcp_success"] == 0.0
    assert not any(k.startswith("tls_") for k in r.facts)


async def test_tcp_fails_over_to_next_address(servers: Servers) -> None:
    port = await servers.start(_tarpit)
    closed = free_port()
    addresses = [(socket.AF_INET, ("127.0.0.1", closed)), (socket.AF_INET, ("127.0.0.1", port))]
    t = Transcript()
    deadline = asyncio.get_running_loop().time() + 3
    conn, _duration, failure = await tcptls.tcp_connect(addresses, deadline, t)
    assert conn is not None and failure is None
    assert conn.address[1][1] == port
    conn.abort()
    assert "failed" in t.render()


async def test_tarpit_times_out_within_budget(servers: Servers) -> None:
    port = await servers.start(_tarpit)
    start = time.monotonic()
    r = await probe_endpoint(Endpoint("127.0.0.1", port, TLSSettings()), 1.0)
    assert time.monotonic() - start < 1.5
    assert r.reason is Reason.TIMEOUT
    assert r.facts["tcp_success"] == 1.0 and r.facts["tls_success"] == 0.0


async def test_reset_during_handshake(servers: Servers) -> None:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            async with asyncio.timeout(2):
                await reader.read(1)  # wait for the ClientHello, then reset
        except TimeoutError:
            pass
        writer.transport.abort()

    port = await servers.start(rst)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, TLSSettings()), 3.0)
    assert r.reason is Reason.CONNECTION_RESET, r.detail


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize(("max_version", "expected"), [
    (None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
])
async def test_tls_version_fact(certs: Certs, servers: Servers, max_version: ssl.TLSVersion | None,
                                expected: str) -> None:
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.valid, max_version))
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls()), 5.0)
    assert r.success and r.facts["tls_version"] == expected


@pytest.mark.parametrize(("which", "host", "reason"), [
    ("expired", "127.0.0.1", Reason.TLS_CERT_EXPIRED),
    ("wrong_host", "127.0.0.1", Reason.TLS_HOSTNAME_MISMATCH),  # verify code 64 (IP)
    ("wrong_host", "mail.test", Reason.TLS_HOSTNAME_MISMATCH),  # verify code 62 (name)
    ("untrusted", "127.0.0.1", Reason.TLS_UNTRUSTED),
])
async def test_certificate_failures_still_export_expiry(certs: Certs, servers: Servers,
                                                        dns_server: TestDNSServer, which: str, host: str,
                                                        reason: Reason) -> None:
    leaf = getattr(certs, which)
    expected = getattr(certs, f"{which.split('_')[0]}_not_after")
    port = await servers.start(_drain_until_eof, certs.server_ctx(leaf))
    r = await probe_endpoint(Endpoint(host, port, certs.tls()), 5.0, resolvers_for(dns_server))
    assert not r.success and r.reason is reason, (r.detail, r.transcript.render())
    f = r.facts
    assert f["tcp_success"] == 1.0 and f["tls_success"] == 0.0 and f["tls_cert_verified"] == 0.0
    assert_time(f["tls_cert_expiry"], expected)
    assert_time(f["tls_cert_not_after_leaf"], expected)
    assert f["tls_version"] == "TLSv1.3"


async def test_expiry_is_earliest_in_chain(tmp_path: Path, servers: Servers) -> None:
    inter_not_after = NOW + dt.timedelta(days=10)
    leaf_not_after = NOW + dt.timedelta(days=60)
    root, chain, key = build_chain(tmp_path, inter_not_after, leaf_not_after)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(chain, key)
    port = await servers.start(_drain_until_eof, ctx)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, TLSSettings(ca_file=root)), 5.0)
    assert r.success, r.detail
    assert_time(r.facts["tls_cert_expiry"], inter_not_after)
    assert_time(r.facts["tls_cert_not_after_leaf"], leaf_not_after)


async def test_insecure_skip_verify_succeeds_unverified(certs: Certs, servers: Servers) -> None:
    port = await servers.start(_drain_until_eof, certs.server_ctx(certs.untrusted))
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls(insecure_skip_verify=True)), 5.0)
    assert r.success
    assert r.facts["tls_success"] == 1.0 and r.facts["tls_cert_verified"] == 0.0
    assert_time(r.facts["tls_cert_expiry"], certs.untrusted_not_after)


async def test_not_tls_at_all(servers: Servers) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 4)
        try:
            async with asyncio.timeout(2):
                await writer.drain()
                await reader.read(1)
        except (TimeoutError, OSError):
            pass
        writer.close()

    port = await servers.start(http)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, TLSSettings()), 3.0)
    assert r.reason is Reason.TLS_HANDSHAKE_FAILED, r.detail
    assert "tls_cert_expiry" not in r.facts


@pytest.mark.parametrize(("code", "reason"), [
    (10, Reason.TLS_CERT_EXPIRED), (62, Reason.TLS_HOSTNAME_MISMATCH), (64, Reason.TLS_HOSTNAME_MISMATCH),
    (2, Reason.TLS_UNTRUSTED), (18, Reason.TLS_UNTRUSTED), (19, Reason.TLS_UNTRUSTED),
    (20, Reason.TLS_UNTRUSTED), (21, Reason.TLS_UNTRUSTED),
])
def test_verify_code_mapping(code: int, reason: Reason) -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    assert tcptls.classify_tls_error(exc) is reason
    assert tcptls.classify_tls_error(ssl.SSLError(1, "alert")) is Reason.TLS_HANDSHAKE_FAILED


# --------------------------------------------------------------------------- SMTP STARTTLS


async def test_starttls_success_sends_no_credentials(certs: Certs, servers: Servers,
                                                     dns_server: TestDNSServer) -> None:
    smtp = SMTPServer(certs.server_ctx(certs.valid))
    port = await servers.start(smtp.handle)
    r = await probe_endpoint(Endpoint("mail.test", port, certs.tls(), starttls=True), 5.0,
                             resolvers_for(dns_server))
    assert r.success, (r.reason, r.detail, r.transcript.render())
    assert r.facts["tls_version"] == "TLSv1.3" and r.facts["tls_cert_verified"] == 1.0
    assert_time(r.facts["tls_cert_expiry"], certs.valid_not_after)
    await asyncio.sleep(0.05)  # let the server record QUIT
    assert smtp.received[0].startswith("EHLO [127.0.0.1]")
    assert smtp.received[1] == "STARTTLS"
    assert not any(c.upper().startswith("AUTH") for c in smtp.received)
    assert "QUIT" in smtp.received


async def test_starttls_not_offered(certs: Certs, servers: Servers) -> None:
    smtp = SMTPServer(certs.server_ctx(certs.valid), offer_starttls=False)
    port = await servers.start(smtp.handle)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls(), starttls=True), 5.0)
    assert r.reason is Reason.STARTTLS_UNAVAILABLE
    assert r.facts["tcp_success"] == 1.0 and r.facts["tls_success"] == 0.0
    assert "tls_duration" not in r.facts and "tls_cert_expiry" not in r.facts


async def test_starttls_expired_certificate_exports_expiry(certs: Certs, servers: Servers) -> None:
    smtp = SMTPServer(certs.server_ctx(certs.expired))
    port = await servers.start(smtp.handle)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls(), starttls=True), 5.0)
    assert r.reason is Reason.TLS_CERT_EXPIRED
    assert_time(r.facts["tls_cert_expiry"], certs.expired_not_after)
    assert smtp.received.count("STARTTLS") == 2  # verified attempt + inspect-only attempt


async def test_smtp_greeting_421(certs: Certs, servers: Servers) -> None:
    smtp = SMTPServer(certs.server_ctx(certs.valid), greeting="421 4.3.2 Service not available")
    port = await servers.start(smtp.handle)
    r = await probe_endpoint(Endpoint("127.0.0.1", port, certs.tls(), starttls=True), 5.0)
    assert r.reason is Reason.SERVER_UNAVAILABLE


async def test_smtp_tarpit_after_connect(servers: Servers) -> None:
    port = await servers.start(_tarpit)
    start = time.monotonic()
    r = await probe_endpoint(Endpoint("127.0.0.1", port, TLSSettings(), starttls=True), 1.0)
    assert time.monotonic() - start < 1.5
    assert r.reason is Reason.TIMEOUT
