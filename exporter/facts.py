"""The names of the facts probes record on a ProbeResult, one vocabulary for who writes and who reads.

Why a module of its own: the token probe (runtime.py), the Graph audit (audit.py) and the mail
probes write these keys; the exposition (collector.py), the status board (board.py), the `check`
checklist (checklist.py) and root-cause attribution (rootcause.py) read them. With the names here
none of them imports another for a string (runtime and audit used to import them from the
renderer). A fact's value is a float (a number, a unix time, 1/0) unless noted.
"""

from __future__ import annotations

# ("credential", name): the token probe
TOKEN_EXPIRY = "token_expiry"  # unix time the access token expires
TOKEN_REFRESHED = "token_last_refresh"  # unix time of the last successful refresh
IDENTITY_MATCH = "identity_match"  # 1 when the token is for the configured identity
TOKEN_REQUESTS = "token_requests"  # requests sent to the identity platform so far
SCOPE_PREFIX = "scope:"  # "scope:IMAP.AccessAsApp" -> 1 missing / 0 present

# ("audit", credential, "graph"): the app-registration audit; "certificate": the local client certificate
SECRET_PREFIX = "secret_expiry:"  # "secret_expiry:<key_id>" -> unix time
KEY_NAME_PREFIX = "key_name:"  # "key_name:<keyId>" -> displayName / hint (str)
KEY_TYPE_PREFIX = "key_type:"  # "key_type:<keyId>" -> secret | certificate (str)
REDIRECT_MATCH = "redirect_uri_match"  # 1/0, only when app_external_url is configured
REDIRECT_URIS = "redirect_uris"  # the web redirect URIs found, comma separated (str), for `check`
DISPLAY_NAME = "display_name"  # the app registration's name (str)

# ("mailbox", address, "imap" | "pop3"): the mail probes
MESSAGES = "messages"  # messages in INBOX (IMAP EXISTS, POP3 STAT)
OLDEST_MESSAGE = "oldest_message_timestamp"  # unix time the oldest message arrived (probes/oldest.py)
