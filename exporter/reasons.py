"""The closed set of failure reasons, each with plain words and the operator's fix.

Why a closed set: `reason` is a Prometheus label, so its values must be bounded and stable
(alerts, dashboards and runbooks key on them). Every failure anywhere in the exporter is
mapped to exactly one of these; anything unrecognised becomes `unknown` (and the raw,
redacted server text stays available in `/probe?debug=true`).

`docs/reasons.md` is generated from this table (`python -m exporter.reasons > docs/reasons.md`)
and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    TOKEN = "token"
    MAIL = "mail"
    NETWORK = "network"
    OTHER = "other"


@dataclass(frozen=True)
class ReasonInfo:
    category: Category
    summary: str  # plain words, shown on dashboards and in alert descriptions
    fix: str  # one line: what an operator does about it
    runbook: str  # page under docs/runbooks/ (without .md)


class Reason(StrEnum):
    # token acquisition (Microsoft Entra ID / MSAL)
    SECRET_INVALID = "secret_invalid"
    SECRET_EXPIRED = "secret_expired"
    CERTIFICATE_INVALID = "certificate_invalid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    PRIVATE_KEY_INVALID = "private_key_invalid"
    CLOCK_SKEW = "clock_skew"
    CONSENT_REQUIRED = "consent_required"
    REFRESH_TOKEN_EXPIRED = "refresh_token_expired"
    GRANT_REVOKED = "grant_revoked"
    INTERACTION_REQUIRED = "interaction_required"
    CONDITIONAL_ACCESS = "conditional_access"
    USER_DISABLED = "user_disabled"
    PASSWORD_EXPIRED = "password_expired"
    USER_NOT_IN_TENANT = "user_not_in_tenant"
    TENANT_NOT_FOUND = "tenant_not_found"
    APP_NOT_FOUND = "app_not_found"
    RESOURCE_NOT_FOUND = "resource_not_found"
    INVALID_SCOPE = "invalid_scope"
    PUBLIC_CLIENT_DISABLED = "public_client_disabled"
    THROTTLED = "throttled"
    IDP_UNAVAILABLE = "idp_unavailable"
    IDP_RESPONSE_INVALID = "idp_response_invalid"
    REDIRECT_URI_MISMATCH = "redirect_uri_mismatch"
    WRONG_IDENTITY = "wrong_identity"
    MISSING_SCOPE = "missing_scope"
    NO_TOKEN_CACHE = "no_token_cache"
    TOKEN_CACHE_CORRUPT = "token_cache_corrupt"
    CREDENTIAL_UNREADABLE = "credential_unreadable"
    # mail protocols (IMAP / POP3 / SMTP with SASL XOAUTH2)
    AUTH_FAILED = "auth_failed"
    SMTP_AUTH_DISABLED = "smtp_auth_disabled"
    SECURITY_DEFAULTS = "security_defaults"
    MAILBOX_NOT_ACCESSIBLE = "mailbox_not_accessible"
    INVALID_USER = "invalid_user"
    XOAUTH2_NOT_OFFERED = "xoauth2_not_offered"
    STARTTLS_UNAVAILABLE = "starttls_unavailable"
    SERVER_UNAVAILABLE = "server_unavailable"
    SERVER_TEMPORARY_FAILURE = "server_temporary_failure"
    MAILBOX_IN_USE = "mailbox_in_use"
    PROTOCOL_ERROR = "protocol_error"
    # network path
    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_SERVFAIL = "dns_servfail"
    DNS_TIMEOUT = "dns_timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    TIMEOUT = "timeout"
    TLS_CERT_EXPIRED = "tls_cert_expired"
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    PROXY_ERROR = "proxy_error"
    # anything else
    UNKNOWN = "unknown"
    EXPORTER_OVERLOADED = "exporter_overloaded"

    @property
    def info(self) -> ReasonInfo:
        return CATALOGUE[self]

    @property
    def summary(self) -> str:
        return CATALOGUE[self].summary

    @property
    def fix(self) -> str:
        return self.fix_for()

    def fix_for(self, mailbox: str | None = None, credential: str | None = None,
                host: str | None = None, port: int | str | None = None) -> str:
        """The fix with the situation filled in (mailbox, credential, host, port), so an operator can
        paste the command as shown. Whatever is not known reads as plain words, never a placeholder
        token: the catalogue's templates use `{mailbox}`, `{credential}`, `{endpoint}` and `{port}`."""
        fields = dict(GENERIC_FIELDS)
        if mailbox:
            fields["mailbox"] = mailbox
        if credential:
            fields["credential"] = credential
        if port:
            fields["port"] = f"port {port}"
            fields["endpoint"] = f"{host}:{port}" if host else f"port {port}"
        elif host:
            fields["endpoint"] = host
        return CATALOGUE[self].fix.format_map(fields)


# What a fix says where the situation is not known (docs/reasons.md, a reason without context).
# Angle brackets mark "put yours here" in the generated reference only: every runtime output
# (check, /probe debug, the landing page) passes the real values (see exporter/fixes.py).
GENERIC_FIELDS: dict[str, str] = {
    "mailbox": "<mailbox address>",
    "credential": "<credential name>",
    "endpoint": "the endpoint",
    "port": "the endpoint's port (443, 587, 993 or 995)",
}
# Tokens that must never reach an operator's screen filled in (tests scan every output for them).
PLACEHOLDER_TOKENS: tuple[str, ...] = (
    "{mailbox}", "{credential}", "{endpoint}", "{port}", "<mailbox address>", "<credential name>",
    "-Identity MAILBOX", "--credential NAME",
)

R = Reason
T, M, N, X = Category.TOKEN, Category.MAIL, Category.NETWORK, Category.OTHER

CATALOGUE: dict[Reason, ReasonInfo] = {
    R.SECRET_INVALID: ReasonInfo(
        T, "client secret is wrong (AADSTS7000215)",
        "Put the secret's Value (not its Secret ID) from Entra ID > App registrations > Certificates & secrets "
        "into the secret file/variable of credential {credential}.", "token"),
    R.SECRET_EXPIRED: ReasonInfo(
        T, "client secret has expired (AADSTS7000222)",
        "Create a new client secret for the app registration of credential {credential}, deploy it to the "
        "exporter and the mail application, then delete the old one.", "token"),
    R.CERTIFICATE_INVALID: ReasonInfo(
        T, "client certificate assertion rejected (AADSTS700027)",
        "Upload the certificate's public part to the app registration (Certificates & secrets) and check the "
        "certificate and private key of credential {credential} belong together and are not expired.", "token"),
    R.CERTIFICATE_EXPIRED: ReasonInfo(
        T, "registered client certificate has expired (AADSTS1000502)",
        "Create a new certificate, upload its public part to the app registration (Certificates & secrets), "
        "deploy it as certificate_file/private_key_file of credential {credential}, then remove the expired "
        "one.", "token"),
    R.PRIVATE_KEY_INVALID: ReasonInfo(
        T, "configured private key cannot be parsed (truncated, not PEM, or wrong passphrase)",
        "Put the complete PEM private key (BEGIN and END lines intact) that belongs to certificate_file into "
        "private_key_file of credential {credential}; if it is encrypted, set private_key_password_env.",
        "token"),
    R.CLOCK_SKEW: ReasonInfo(
        T, "client assertion rejected for clock skew (AADSTS700024)",
        "Synchronise this host's clock (chrony/NTP); assertions are only valid for a few minutes.", "token"),
    R.CONSENT_REQUIRED: ReasonInfo(
        T, "admin or user consent missing (AADSTS65001)",
        "Grant admin consent for the API permissions (IMAP/POP/SMTP AccessAsApp or AccessAsUser) on the app "
        "registration's API permissions page.", "token"),
    R.REFRESH_TOKEN_EXPIRED: ReasonInfo(
        T, "refresh token expired (AADSTS700082/70008)",
        "Re-run `m365-mail-exporter login --credential {credential}` as the configured account; refresh tokens lapse "
        "after 90 days without use.", "token"),
    R.GRANT_REVOKED: ReasonInfo(
        T, "refresh token revoked (AADSTS50173: password change or admin revoke)",
        "Re-run `m365-mail-exporter login --credential {credential}` as the configured account (and re-authorise the "
        "mail application the same way).", "token"),
    R.INTERACTION_REQUIRED: ReasonInfo(
        T, "sign-in needs interaction: MFA or sign-in frequency (AADSTS50076/50079/70043)",
        "Re-run `m365-mail-exporter login --credential {credential}` and complete MFA; exclude the service "
        "account from sign-in frequency policies or "
        "move to app-only (client credentials) access.", "token"),
    R.CONDITIONAL_ACCESS: ReasonInfo(
        T, "blocked by Conditional Access or security defaults (AADSTS53003/530035, SMTP 5.7.139)",
        "Check Entra ID sign-in logs for the policy that blocked the sign-in and exclude this service "
        "account/app or allow this host's network location.", "token"),
    R.USER_DISABLED: ReasonInfo(
        T, "account is disabled (AADSTS50057)",
        "Enable the user account in Entra ID (or configure the correct, enabled account).", "token"),
    R.PASSWORD_EXPIRED: ReasonInfo(
        T, "account password expired (AADSTS50055)",
        "Reset the account's password, then re-run `m365-mail-exporter login --credential {credential}`; "
        "set the service account's password to never "
        "expire.", "token"),
    R.USER_NOT_IN_TENANT: ReasonInfo(
        T, "account does not exist in this tenant (AADSTS50034/50020)",
        "Sign in with an account of the configured tenant, or fix tenant_id of credential {credential}.", "token"),
    R.TENANT_NOT_FOUND: ReasonInfo(
        T, "tenant not found (AADSTS90002)",
        "Fix tenant_id (the Directory (tenant) ID) of credential {credential} or the cloud setting (global "
        "vs usgov/china).", "token"),
    R.APP_NOT_FOUND: ReasonInfo(
        T, "application not found in the tenant (AADSTS700016)",
        "Fix client_id (the Application (client) ID) or tenant_id of credential {credential}; the app must "
        "be registered or consented in this tenant.", "token"),
    R.RESOURCE_NOT_FOUND: ReasonInfo(
        T, "resource (Exchange Online) not found in the tenant (AADSTS500011)",
        "Check the cloud setting and scope: the resource must be Office 365 Exchange Online for this cloud, "
        "and the tenant must have Exchange Online.", "token"),
    R.INVALID_SCOPE: ReasonInfo(
        T, "requested scope is invalid (AADSTS70011)",
        "App-only must request https://outlook.office365.com/.default; delegated uses "
        "https://outlook.office.com/IMAP.AccessAsUser.All etc. Fix the credential's scopes.", "token"),
    R.PUBLIC_CLIENT_DISABLED: ReasonInfo(
        T, "public client flows disabled on the app (AADSTS7000218)",
        "In the app registration > Authentication, set 'Allow public client flows' to Yes (needed for "
        "device-code login and public-client refresh).", "token"),
    R.THROTTLED: ReasonInfo(
        T, "identity platform throttled the requests (HTTP 429 / AADSTS50196)",
        "Wait for Retry-After; raise defaults.token_interval or reduce other clients sharing this app.", "token"),
    R.IDP_UNAVAILABLE: ReasonInfo(
        T, "identity platform unavailable (HTTP 5xx or unreachable)",
        "Check the Microsoft 365 service health and this host's path to the login endpoint (firewall, proxy); "
        "the exporter retries on its schedule.", "token"),
    R.IDP_RESPONSE_INVALID: ReasonInfo(
        T, "the login endpoint answered with a web page, not the identity platform (captive portal or "
        "TLS-inspecting proxy)",
        "Let this host reach the login endpoint directly (allow login.microsoftonline.com through the proxy or "
        "firewall without HTTPS inspection or a sign-in portal), or set defaults.https.proxy to the proxy "
        "that does.", "token"),
    R.REDIRECT_URI_MISMATCH: ReasonInfo(
        T, "redirect URI not registered on the app registration (AADSTS50011)",
        "Add the consuming application's callback URL as a Web redirect URI in Entra ID > App registrations "
        "> Authentication; its FQDN must equal ECE's External URL of the Application.", "token"),
    R.WRONG_IDENTITY: ReasonInfo(
        T, "token was issued for a different account than configured",
        "Re-run `m365-mail-exporter login --credential {credential}` from a private browser window signed in as the "
        "configured account only.", "token"),
    R.MISSING_SCOPE: ReasonInfo(
        T, "token lacks a permission the mailbox checks need",
        "Add the missing API permission (IMAP/POP AccessAsApp or AccessAsUser, SMTP.SendAsApp or SMTP.Send) "
        "and grant admin consent; for delegated tokens re-run `m365-mail-exporter login --credential "
        "{credential}`.", "token"),
    R.NO_TOKEN_CACHE: ReasonInfo(
        T, "no delegated token for the account in the token cache",
        "Run `m365-mail-exporter login --credential {credential}` to bootstrap the token cache.", "token"),
    R.TOKEN_CACHE_CORRUPT: ReasonInfo(
        T, "token cache file cannot be read or parsed",
        "Check the token_cache file of credential {credential} (permissions, content); if it is damaged, "
        "delete it and run `m365-mail-exporter login --credential {credential}`.", "token"),
    R.CREDENTIAL_UNREADABLE: ReasonInfo(
        T, "configured secret, certificate or key file cannot be read",
        "Check the path, permissions and format (PEM) of the secret/certificate/key file or the environment "
        "variable of credential {credential}.", "token"),
    R.AUTH_FAILED: ReasonInfo(
        M, "mail server rejected the OAuth token (AUTHENTICATE failed / 535 5.7.3)",
        "App-only: register the app's service principal in Exchange (New-ServicePrincipal with the Enterprise "
        "Application's object id) and grant it FullAccess on {mailbox} (Add-MailboxPermission); delegated: "
        "the token's user must own {mailbox} or have FullAccess to it.", "mail"),
    R.SMTP_AUTH_DISABLED: ReasonInfo(
        M, "SMTP AUTH is disabled for the tenant or mailbox (5.7.139)",
        "Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false (or Set-TransportConfig "
        "-SmtpClientAuthenticationDisabled $false for the tenant); without Exchange PowerShell: Microsoft 365 "
        "admin center > Users > Active users > the user > Mail > Manage email apps > Authenticated SMTP.", "mail"),
    R.SECURITY_DEFAULTS: ReasonInfo(
        M, "blocked by the tenant's security defaults (5.7.139)",
        "Security defaults block SMTP AUTH: move to Conditional Access with an exclusion for this account or "
        "use app-only access.", "mail"),
    R.MAILBOX_NOT_ACCESSIBLE: ReasonInfo(
        M, "authenticated but the mailbox cannot be opened (User is authenticated but not connected)",
        "Grant the token's identity FullAccess on {mailbox} (Add-MailboxPermission -Identity {mailbox}), "
        "and check {mailbox} is licensed and IMAP/POP enabled (Set-CASMailbox, or admin center > Users > "
        "Active users > the user > Mail > Manage email apps).", "mail"),
    R.INVALID_USER: ReasonInfo(
        M, "mail server rejected the user address in XOAUTH2 (501 5.5.124)",
        "Configure the mailbox's primary SMTP address instead of {mailbox} (Get-Mailbox -Identity {mailbox} "
        "shows PrimarySmtpAddress).", "mail"),
    R.XOAUTH2_NOT_OFFERED: ReasonInfo(
        M, "server does not offer AUTH XOAUTH2",
        "Check {endpoint} is Exchange Online (outlook.office365.com / smtp.office365.com) and not a mail "
        "proxy; for SMTP, XOAUTH2 is offered only after STARTTLS.", "mail"),
    R.STARTTLS_UNAVAILABLE: ReasonInfo(
        M, "SMTP server did not offer or complete STARTTLS",
        "Check for a TLS-intercepting firewall or proxy between this host and {endpoint} that strips "
        "STARTTLS.", "mail"),
    R.SERVER_UNAVAILABLE: ReasonInfo(
        M, "mail server closed or refused the session (BYE / 421 / -ERR unavailable)",
        "Usually transient on Microsoft's side; check service health. If persistent, enable the protocol "
        "for {mailbox} (Set-CASMailbox -Identity {mailbox} -ImapEnabled $true -PopEnabled $true, or admin "
        "center > Users > Active users > the user > Mail > Manage email apps) and check its licence.", "mail"),
    R.SERVER_TEMPORARY_FAILURE: ReasonInfo(
        M, "mail server reported a temporary failure ([SYS/TEMP], [UNAVAILABLE], 454)",
        "Not the credentials: the server (e.g. its token validation) is failing for now and the exporter "
        "retries on its schedule; if it persists, check the mail service's health.", "mail"),
    R.MAILBOX_IN_USE: ReasonInfo(
        M, "mailbox locked by another session or a session limit reached ([IN-USE], [INUSE], [LIMIT])",
        "Another client holds {mailbox} (POP3 allows one session at a time) or too many sessions are open: "
        "check how many retrievers the consuming application runs; the exporter retries on its schedule.",
        "mail"),
    R.PROTOCOL_ERROR: ReasonInfo(
        M, "unexpected or malformed reply from the mail server",
        "Check nothing between this host and {endpoint} rewrites the protocol (TLS interception, mail "
        "proxies); the redacted dialogue is on the exporter's /probe page with debug=true.", "mail"),
    R.DNS_NXDOMAIN: ReasonInfo(
        N, "host name does not exist in DNS",
        "Check {endpoint} is spelled right in the config and resolves with this host's DNS configuration.",
        "network"),
    R.DNS_SERVFAIL: ReasonInfo(
        N, "DNS server failed to answer", "Check this host's DNS resolvers (/etc/resolv.conf or the configured "
        "resolver).", "network"),
    R.DNS_TIMEOUT: ReasonInfo(
        N, "DNS lookup timed out", "Check this host's DNS resolvers are reachable (UDP/TCP 53).", "network"),
    R.CONNECTION_REFUSED: ReasonInfo(
        N, "TCP connection refused",
        "Open the firewall from this host to {endpoint}, and check the host and port are right.", "network"),
    R.CONNECTION_RESET: ReasonInfo(
        N, "connection reset or closed unexpectedly",
        "Check firewalls/IPS between this host and {endpoint} that reset the connection.", "network"),
    R.TIMEOUT: ReasonInfo(
        N, "no answer within the timeout",
        "Check whether a firewall between this host and {endpoint} silently drops the connection, or whether "
        "the server is overloaded.",
        "network"),
    R.TLS_CERT_EXPIRED: ReasonInfo(
        N, "server certificate has expired",
        "If this is a TLS-intercepting proxy, renew its certificate; Microsoft's certificates do not expire "
        "unnoticed.", "network"),
    R.TLS_HOSTNAME_MISMATCH: ReasonInfo(
        N, "server certificate does not match the host name",
        "Check the host name and DNS of {endpoint}; a mismatch usually means interception or the wrong "
        "host.",
        "network"),
    R.TLS_UNTRUSTED: ReasonInfo(
        N, "server certificate chain is not trusted",
        "Configure the intercepting proxy's CA as ca_file for {endpoint} (defaults.https.ca_file for the "
        "login host, tls.ca_file for a mail endpoint).",
        "network"),
    R.TLS_HANDSHAKE_FAILED: ReasonInfo(
        N, "TLS handshake failed",
        "Check the TLS versions and ciphers middleboxes allow between this host and {endpoint} (TLS 1.2+ "
        "required).",
        "network"),
    R.PROXY_ERROR: ReasonInfo(
        N, "HTTPS proxy refused or failed the connection",
        "Check defaults.https.proxy (address, credentials) and that the proxy allows CONNECT to the login "
        "endpoint.",
        "network"),
    R.UNKNOWN: ReasonInfo(
        X, "unclassified failure",
        "Report the detail shown with the exporter version; the redacted dialogue is on the exporter's /probe "
        "page with debug=true (for a mail check) or from `--log.level debug`.", "index"),
    R.EXPORTER_OVERLOADED: ReasonInfo(
        X, "the exporter itself ran out of file descriptors (EMFILE/ENFILE), not Microsoft 365",
        "Check who holds connections to the web port (ss -tnp sport = :9731), lower --web.max-connections "
        "or raise LimitNOFILE in the systemd unit; the mailbox and its credentials are not at fault.", "index"),
}

# AADSTS error code -> reason. Codes from Microsoft's reference-error-codes page.
AADSTS_REASONS: dict[int, Reason] = {
    7000215: R.SECRET_INVALID,
    7000222: R.SECRET_EXPIRED,
    700027: R.CERTIFICATE_INVALID,
    1000502: R.CERTIFICATE_EXPIRED,
    50011: R.REDIRECT_URI_MISMATCH,
    700024: R.CLOCK_SKEW,
    65001: R.CONSENT_REQUIRED,
    700082: R.REFRESH_TOKEN_EXPIRED,
    70008: R.REFRESH_TOKEN_EXPIRED,
    50173: R.GRANT_REVOKED,
    50076: R.INTERACTION_REQUIRED,
    50079: R.INTERACTION_REQUIRED,
    70043: R.INTERACTION_REQUIRED,
    53003: R.CONDITIONAL_ACCESS,
    530035: R.CONDITIONAL_ACCESS,
    50057: R.USER_DISABLED,
    50055: R.PASSWORD_EXPIRED,
    50034: R.USER_NOT_IN_TENANT,
    50020: R.USER_NOT_IN_TENANT,
    90002: R.TENANT_NOT_FOUND,
    700016: R.APP_NOT_FOUND,
    500011: R.RESOURCE_NOT_FOUND,
    70011: R.INVALID_SCOPE,
    7000218: R.PUBLIC_CLIENT_DISABLED,
    50196: R.THROTTLED,
}

# OAuth2 `error` field -> reason, used when no known AADSTS code is present.
OAUTH_ERROR_REASONS: dict[str, Reason] = {
    "invalid_client": R.SECRET_INVALID,
    "unauthorized_client": R.APP_NOT_FOUND,
    "invalid_scope": R.INVALID_SCOPE,
    "interaction_required": R.INTERACTION_REQUIRED,
    "consent_required": R.CONSENT_REQUIRED,
    "temporarily_unavailable": R.IDP_UNAVAILABLE,
    "invalid_grant": R.GRANT_REVOKED,
}


def classify_aadsts(error: str | None, error_codes: list[int] | None, status: int | None = None) -> Reason:
    """Map an identity-platform error (OAuth `error`, `error_codes`, HTTP status) to a reason."""
    for code in error_codes or []:
        if code in AADSTS_REASONS:
            return AADSTS_REASONS[code]
    if status == 429:
        return R.THROTTLED
    if status is not None and status >= 500:
        return R.IDP_UNAVAILABLE
    if error and error in OAUTH_ERROR_REASONS:
        return OAUTH_ERROR_REASONS[error]
    return R.UNKNOWN


def render_markdown() -> str:
    """The reasons catalogue as Markdown (docs/reasons.md is this output)."""
    lines = [
        "# Failure reasons",
        "",
        "<!-- generated by `python -m exporter.reasons > docs/reasons.md`; do not edit by hand -->",
        "",
        "Every failed probe carries exactly one `reason` label from this closed set. "
        "AADSTS codes map as shown; anything unrecognised is `unknown` "
        "(see `/probe?debug=true` for the raw, redacted dialogue).",
        "",
        "The fixes below are templates: `<mailbox address>`, `<credential name>` and \"the endpoint\" stand "
        "for what every real output (`check`, `/probe?debug=true`, the landing page, `login`) fills in: "
        "the mailbox, the credential and the host:port of the failing check, ready to paste.",
        "",
    ]
    for cat in Category:
        lines += [f"## {cat.value}", "", "| reason | meaning | fix | runbook |", "|---|---|---|---|"]
        for reason, info in CATALOGUE.items():
            if info.category is not cat:
                continue
            meaning = info.summary
            fix = info.fix.replace("|", "\\|")
            lines.append(f"| `{reason.value}` | {meaning} | {fix} | [{info.runbook}](runbooks/{info.runbook}.md) |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
