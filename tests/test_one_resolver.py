"""`defaults.dns.resolvers` is used by every connection: the DNS check, the mail probes and
the token requests (MSAL's HTTP). Proven with the loopback DNS server (tests/dnsserver.py):
the simulator's certificate is for `localhost`; our DNS server first answers `localhost` with
127.0.0.1 (and records the query), then with NXDOMAIN, which the system resolver (/etc/hosts)
would never say. TLS is still verified against the host name."""

from __future__ import annotations

from urllib.parse import urlsplit

from exporter.config import Config
from exporter.probes.imap import probe_imap
from exporter.reasons import Reason
from tests.dnsserver import start_dns_server
from tests.simenv import Env, env_fixture, runtime_for

env = env_fixture(delegated_login=False)


def by_name(env: Env, resolver: str) -> Config:
    raw = env.config(mailboxes=[{"address": "sales@contoso.example", "credential": "app", "checks": ["imap"]}],
                     network_checks=False).model_dump(mode="json", exclude_none=True)
    d = raw["defaults"]
    d["https"]["authority_host"] = f"https://localhost:{urlsplit(env.sim.authority_host).port}"
    for check in ("imap", "pop3", "smtp"):
        d["endpoints"][check]["host"] = "localhost"
    d["dns"] = {"resolvers": [resolver]}
    return Config.model_validate(raw)


async def test_mail_probes_and_token_requests_ask_the_configured_resolvers(env: Env) -> None:
    dns = await start_dns_server()
    try:
        dns.zone["localhost."] = {"A": ["127.0.0.1"]}
        cfg = by_name(env, f"127.0.0.1:{dns.port}")
        rt = await runtime_for(cfg)
        try:
            token = await rt.run_token_probe("app")
            assert token.success, (token.reason, token.detail)
            assert dns.queries.count(("localhost.", "A")) >= 1  # MSAL's HTTP asked our resolver
            dns.queries.clear()
            ep = cfg.endpoint_for(cfg.mailboxes[0], "imap")
            assert ep.resolvers == (f"127.0.0.1:{dns.port}",)
            tok = rt.providers["app"].current
            assert tok is not None
            imap = await probe_imap(ep, "sales@contoso.example", tok.access_token, 5.0)
            assert imap.success, (imap.reason, imap.detail)  # verified as localhost (SNI = host name)
            assert ("localhost.", "A") in dns.queries  # the mail probe asked it too
            assert any("via 127.0.0.1" in text for _, text in imap.transcript.lines)

            dns.zone["localhost."] = "nxdomain"  # /etc/hosts would still say 127.0.0.1
            imap = await probe_imap(ep, "sales@contoso.example", tok.access_token, 5.0)
            assert imap.reason is Reason.DNS_NXDOMAIN, (imap.reason, imap.detail)
        finally:
            await rt.stop()
        rt = await runtime_for(cfg)  # a fresh provider: no token yet, no HTTP connection pooled
        try:
            token = await rt.run_token_probe("app")
            assert token.reason is Reason.DNS_NXDOMAIN, (token.reason, token.detail)
        finally:
            await rt.stop()
    finally:
        dns.transport.close() if dns.transport else None
