"""The shared network/TLS error mapping (exporter/probes/neterrors.py), and that its three users
(endpoint probe, mail probes, token provider) agree on it: one endpoint, one reason on every check."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest
import requests
import urllib3.exceptions

from exporter.auth.errors import from_exception
from exporter.probes import neterrors, tcptls
from exporter.probes.mailconn import classify_exception
from exporter.reasons import Reason

R = Reason


def verify_error(code: int | None, message: str = "unable to get local issuer certificate") -> ssl.SSLError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    if code is not None:
        exc.verify_code = code
        exc.verify_message = message
    return exc


def gai(code: int) -> socket.gaierror:
    return socket.gaierror(code, "lookup failed")


def eai(name: str) -> int:
    if not hasattr(socket, name):
        pytest.skip(f"{name} not on this platform")
    return getattr(socket, name)


# --------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize(("code", "reason"), [
    (10, R.TLS_CERT_EXPIRED), (62, R.TLS_HOSTNAME_MISMATCH), (64, R.TLS_HOSTNAME_MISMATCH),
    (2, R.TLS_UNTRUSTED), (9, R.TLS_UNTRUSTED), (18, R.TLS_UNTRUSTED), (19, R.TLS_UNTRUSTED),
    (20, R.TLS_UNTRUSTED), (21, R.TLS_UNTRUSTED), (23, R.TLS_UNTRUSTED), (None, R.TLS_UNTRUSTED),
])
def test_verify_codes(code: int | None, reason: Reason) -> None:
    assert neterrors.verify_reason(code) is reason
    assert neterrors.classify(verify_error(code)) is reason


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError(), R.TIMEOUT),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), R.TIMEOUT),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), R.CONNECTION_REFUSED),
    (OSError(errno.EHOSTUNREACH, "No route to host"), R.CONNECTION_REFUSED),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), R.CONNECTION_REFUSED),
    (PermissionError(errno.EACCES, "Permission denied"), R.CONNECTION_REFUSED),
    (PermissionError(errno.EPERM, "Operation not permitted"), R.CONNECTION_REFUSED),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), R.CONNECTION_REFUSED),
    (OSError(errno.EAFNOSUPPORT, "Address family not supported"), R.CONNECTION_REFUSED),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), R.CONNECTION_RESET),
    (ConnectionAbortedError(), R.CONNECTION_RESET),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), R.CONNECTION_RESET),
    (EOFError(), R.CONNECTION_RESET),
    (asyncio.IncompleteReadError(b"", 10), R.CONNECTION_RESET),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), R.CONNECTION_RESET),
    (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), R.CONNECTION_RESET),
    # an SSLError's errno is OpenSSL's: 1 must not read as EPERM (a firewall)
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), R.TLS_HANDSHAKE_FAILED),
    (OSError(errno.EINVAL, "Invalid argument"), R.UNKNOWN),
    (OSError("no errno"), R.UNKNOWN),
    (KeyError("x"), R.UNKNOWN),
])
def test_errors(exc: BaseException, reason: Reason) -> None:
    assert neterrors.classify(exc) is reason


@pytest.mark.parametrize(("name", "reason"), [
    ("EAI_NONAME", R.DNS_NXDOMAIN), ("EAI_NODATA", R.DNS_NXDOMAIN), ("EAI_ADDRFAMILY", R.DNS_NXDOMAIN),
    ("EAI_AGAIN", R.DNS_SERVFAIL), ("EAI_FAIL", R.DNS_SERVFAIL), ("EAI_SERVICE", R.DNS_SERVFAIL),
])
def test_dns(name: str, reason: Reason) -> None:
    assert neterrors.classify(gai(eai(name))) is reason


def test_dns_codes_are_not_errnos() -> None:
    # on some platforms EAI codes are small positive numbers that collide with errnos
    for code in (errno.EPERM, errno.ECONNRESET, errno.ETIMEDOUT):
        assert neterrors.classify(socket.gaierror(code, "x")) in (R.DNS_NXDOMAIN, R.DNS_SERVFAIL)
    assert neterrors.classify(socket.gaierror("no code")) is R.DNS_SERVFAIL


# --------------------------------------------------------------------------- describe


@pytest.mark.parametrize(("exc", "text"), [
    (verify_error(20), "certificate verify failed: unable to get local issuer certificate (X509 code 20)"),
    (verify_error(None), "certificate verify failed: error (X509 code None)"),
    (ssl.SSLEOFError(8, "EOF"), "TLS connection closed by the server: SSLEOFError"),
    (ssl.SSLError(1, "alert"), "TLS handshake failed: SSLError"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
     f"DNS lookup failed: Name or service not known (EAI {socket.EAI_NONAME})"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.1', 993)"), "connection refused"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "connection lost (ConnectionResetError)"),
    (asyncio.IncompleteReadError(b"", 4), "connection lost (IncompleteReadError)"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "EHOSTUNREACH: the network path rejected the connection"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), "ETIMEDOUT: no answer from the server"),
    (TimeoutError(), "no answer"),
    (OSError(errno.EINVAL, "Invalid argument"), "unexpected OSError (EINVAL)"),
    (KeyError("x"), "unexpected KeyError"),
])
def test_describe(exc: BaseException, text: str) -> None:
    assert neterrors.describe(exc) == text


def test_describe_never_quotes_the_exception_text() -> None:
    secret = "hunter2-in-a-url?sig=abc"
    samples: list[BaseException] = [
        OSError(errno.EINVAL, secret), ConnectionResetError(errno.ECONNRESET, secret), RuntimeError(secret),
        ssl.SSLError(1, secret), ssl.SSLEOFError(8, secret), ConnectionRefusedError(secret), EOFError(secret),
    ]
    for exc in samples:
        assert secret not in neterrors.describe(exc), exc


# --------------------------------------------------------------------------- the three users agree


def _wrapped_like_requests(exc: BaseException) -> requests.exceptions.RequestException:
    """What requests raises around `exc` (through urllib3's MaxRetryError, as it does)."""
    if isinstance(exc, ssl.SSLError):
        return requests.exceptions.SSLError(
            urllib3.exceptions.MaxRetryError(None, "/token", urllib3.exceptions.SSLError(exc)))  # type: ignore[arg-type]
    inner = urllib3.exceptions.ProtocolError("Connection aborted.", exc)
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/token", inner))  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [
    verify_error(10, "certificate has expired"), verify_error(62, "Hostname mismatch"),
    verify_error(64, "IP address mismatch"), verify_error(9, "certificate is not yet valid"),
    verify_error(19, "self-signed certificate in certificate chain"),
    ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version"),
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
], ids=lambda e: f"{type(e).__name__}-{getattr(e, 'verify_code', None) or e.errno}")
def test_every_check_shows_the_same_reason(exc: BaseException) -> None:
    reason = neterrors.classify(exc)
    assert reason is not R.UNKNOWN
    assert tcptls.classify_tls_error(exc) is reason  # endpoint probe
    assert classify_exception(exc, "tls handshake", 5)[0] is reason  # IMAP / POP3 / SMTP probes
    token_error = from_exception(_wrapped_like_requests(exc))  # token provider
    assert token_error.reason is reason, token_error.detail
    assert token_error.detail.startswith("login host: ")


def test_token_path_keeps_its_own_exceptions() -> None:
    assert from_exception(requests.exceptions.ProxyError("CONNECT refused")).reason is R.PROXY_ERROR
    assert from_exception(requests.exceptions.ConnectTimeout("slow")).reason is R.TIMEOUT
    # the ssl error survives only as text
    text_only = requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate has expired")
    assert from_exception(text_only).reason is R.TLS_CERT_EXPIRED
    assert from_exception(requests.exceptions.ConnectionError("boom")).reason is R.IDP_UNAVAILABLE
    # a bare socket error (not wrapped by requests) is still recognised by its type
    assert from_exception(ConnectionRefusedError()).reason is R.CONNECTION_REFUSED


def test_token_path_does_not_read_a_file_errno_as_a_firewall() -> None:
    # e.g. the token cache cannot be saved: EACCES is a firewall only when it came off a socket
    assert from_exception(PermissionError(errno.EACCES, "Permission denied")).reason is R.UNKNOWN
    wrapped = RuntimeError("saving the cache failed")
    wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied")
    assert from_exception(wrapped).reason is R.UNKNOWN


def test_mail_probe_calls_a_late_tls_error_a_protocol_error() -> None:
    exc = ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac")
    assert classify_exception(exc, "tls handshake", 5)[0] is R.TLS_HANDSHAKE_FAILED
    assert classify_exception(exc, "authenticate", 5)[0] is R.PROTOCOL_ERROR
    assert classify_exception(ssl.SSLEOFError(8, "EOF"), "authenticate", 5)[0] is R.CONNECTION_RESET
