"""Network and TLS exceptions -> the closed reason set (exporter/reasons.py), in one place.

Why one module: the same broken path is seen by three checks — the endpoint probe
(probes/tcptls.py), the IMAP/POP3/SMTP probes (probes/mailconn.py) and the token provider
(auth/errors.py, through requests/urllib3). One endpoint must show the same reason on every
check, or alerts and dashboards keyed on `reason` disagree about one fault. Each caller keeps
only what is really its own: the step a timeout happened in, a TLS error after the handshake
(a protocol error, for the mail clients), requests' proxy and timeout exceptions.

The mapping:
- TimeoutError (and errno ETIMEDOUT) -> timeout: silence, such as DROP rules and tarpits.
- refused -> connection_refused, and so are ICMP unreachable (EHOSTUNREACH/ENETUNREACH), a
  local firewall (EACCES/EPERM) and no usable source address (EADDRNOTAVAIL/EAFNOSUPPORT, e.g.
  IPv6 disabled): the path rejected the connection at once, which is what the refused runbook
  covers (REJECT rules, routes).
- reset, aborted, broken pipe, EOF, and a TLS close (SSLEOFError/SSLZeroReturnError) even in
  mid-handshake -> connection_reset.
- ssl.SSLCertVerificationError.verify_code: 10 -> tls_cert_expired; 62/64 (host name / IP
  address mismatch) -> tls_hostname_mismatch; every other verification failure (2, 9, 18, 19,
  20, 21, ...) -> tls_untrusted. Any other ssl.SSLError -> tls_handshake_failed.
- socket.gaierror: the name or its address does not exist -> dns_nxdomain; anything else
  (glibc folds SERVFAIL and an unanswered resolver into EAI_AGAIN) -> dns_servfail.
- EMFILE/ENFILE (no descriptor left for a socket) -> exporter_overloaded: the exporter's own
  overload, so the fix points at the exporter, not at the network path.
- anything else -> unknown.

`describe` words an exception for a result's detail from its type and structured fields only
(errno name, strerror, the OpenSSL reason and verify message, the EAI code), never from
`str(exc)`, which may carry addresses, URLs or whatever a library chose to put there.
"""

from __future__ import annotations

import errno
import socket
import ssl

from ..reasons import Reason

__all__ = ["DNS_REASONS", "ERRNO_REASONS", "TLS_VERIFY_REASONS", "classify", "describe", "verify_reason"]

# OpenSSL X509_V_ERR_* verify code -> reason; a code not listed is untrusted as well.
TLS_VERIFY_REASONS: dict[int, Reason] = {
    10: Reason.TLS_CERT_EXPIRED,  # CERT_HAS_EXPIRED
    62: Reason.TLS_HOSTNAME_MISMATCH,  # HOSTNAME_MISMATCH
    64: Reason.TLS_HOSTNAME_MISMATCH,  # IP_ADDRESS_MISMATCH (connecting by IP literal)
    2: Reason.TLS_UNTRUSTED,  # UNABLE_TO_GET_ISSUER_CERT
    9: Reason.TLS_UNTRUSTED,  # CERT_NOT_YET_VALID
    18: Reason.TLS_UNTRUSTED,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: Reason.TLS_UNTRUSTED,  # SELF_SIGNED_CERT_IN_CHAIN
    20: Reason.TLS_UNTRUSTED,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: Reason.TLS_UNTRUSTED,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}

# getaddrinfo error (EAI_*) -> reason; a code not listed is dns_servfail.
DNS_REASONS: dict[int, Reason] = {
    socket.EAI_NONAME: Reason.DNS_NXDOMAIN,
    socket.EAI_AGAIN: Reason.DNS_SERVFAIL,
    socket.EAI_FAIL: Reason.DNS_SERVFAIL,
}
for _name in ("EAI_NODATA", "EAI_ADDRFAMILY"):  # glibc extensions, absent on some platforms
    if hasattr(socket, _name):
        DNS_REASONS[getattr(socket, _name)] = Reason.DNS_NXDOMAIN

# errno of a socket error -> reason. Most of these arrive as OSError subclasses (refused, reset,
# timeout), the unreachable ones as a plain OSError.
ERRNO_REASONS: dict[int, Reason] = {
    **dict.fromkeys(
        (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM,
         errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT),
        Reason.CONNECTION_REFUSED),
    **dict.fromkeys((errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE), Reason.CONNECTION_RESET),
    errno.ETIMEDOUT: Reason.TIMEOUT,
    # the exporter's own descriptor table (or the system's) is full: our overload, not the path's
    **dict.fromkeys((errno.EMFILE, errno.ENFILE), Reason.EXPORTER_OVERLOADED),
}

_TLS_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def verify_reason(code: int | None) -> Reason:
    """The reason for a failed certificate verification with OpenSSL verify code `code`."""
    return TLS_VERIFY_REASONS.get(code, Reason.TLS_UNTRUSTED) if code is not None else Reason.TLS_UNTRUSTED


def classify(exc: BaseException) -> Reason:
    """The reason for a network or TLS exception; `unknown` for anything else."""
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT
    if isinstance(exc, socket.gaierror):  # before the errno table: EAI codes are not errnos
        return DNS_REASONS.get(exc.errno, Reason.DNS_SERVFAIL) if exc.errno is not None else Reason.DNS_SERVFAIL
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_reason(getattr(exc, "verify_code", None))
    if isinstance(exc, _TLS_CLOSED):
        return Reason.CONNECTION_RESET  # the server hung up, mid-handshake too
    if isinstance(exc, ssl.SSLError):  # before the errno table: its errno is OpenSSL's, not the OS's
        return Reason.TLS_HANDSHAKE_FAILED
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONNECTION_REFUSED
    if isinstance(exc, ConnectionError | EOFError):  # reset, aborted, broken pipe; IncompleteReadError
        return Reason.CONNECTION_RESET
    if isinstance(exc, OSError) and exc.errno is not None:
        return ERRNO_REASONS.get(exc.errno, Reason.UNKNOWN)
    return Reason.UNKNOWN


def describe(exc: BaseException) -> str:
    """Short, non-secret words for `exc` (see the module docstring for what it never includes)."""
    name = type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        return f"certificate verify failed: {getattr(exc, 'verify_message', None) or 'error'} (X509 code {code})"
    if isinstance(exc, ssl.SSLError):
        what = getattr(exc, "reason", None) or name
        if isinstance(exc, _TLS_CLOSED):
            return f"TLS connection closed by the server: {what}"
        return f"TLS handshake failed: {what}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror or 'error'} (EAI {exc.errno})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError | EOFError):
        return f"connection lost ({name})"
    code_name = None
    if isinstance(exc, OSError) and exc.errno is not None:
        code_name = errno.errorcode.get(exc.errno, str(exc.errno))
        reason = ERRNO_REASONS.get(exc.errno)
        if reason is Reason.CONNECTION_REFUSED:
            return f"{code_name}: the network path rejected the connection"
        if reason is Reason.CONNECTION_RESET:
            return f"{code_name}: connection lost"
        if reason is Reason.TIMEOUT:
            return f"{code_name}: no answer from the server"
        if reason is Reason.EXPORTER_OVERLOADED:
            return f"{code_name}: the exporter has no file descriptor left"
    if isinstance(exc, TimeoutError):
        return "no answer"
    return f"unexpected {name} ({code_name})" if code_name else f"unexpected {name}"
