"""National clouds: identity authority, Exchange Online hosts, scopes and Graph per cloud.

Why a table: the same tenant settings mean different hosts in GCC High, DoD and China
(21Vianet); a wrong cloud shows up as AADSTS90002/500011, so the defaults must be right.
GCC (moderate) uses the worldwide `global` endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cloud:
    name: str
    authority_host: str  # https://login.microsoftonline.com
    imap_host: str
    pop3_host: str
    smtp_host: str
    app_scope: str  # app-only (client credentials) scope
    delegated_resource: str  # prefix for delegated scopes
    graph_url: str


CLOUDS: dict[str, Cloud] = {
    "global": Cloud(
        "global", "https://login.microsoftonline.com", "outlook.office365.com", "outlook.office365.com",
        "smtp.office365.com", "https://outlook.office365.com/.default", "https://outlook.office.com",
        "https://graph.microsoft.com",
    ),
    "usgov-gcchigh": Cloud(
        "usgov-gcchigh", "https://login.microsoftonline.us", "outlook.office365.us", "outlook.office365.us",
        "smtp.office365.us", "https://outlook.office365.us/.default", "https://outlook.office365.us",
        "https://graph.microsoft.us",
    ),
    "usgov-dod": Cloud(
        "usgov-dod", "https://login.microsoftonline.us", "outlook-dod.office365.us", "outlook-dod.office365.us",
        "outlook-dod.office365.us", "https://outlook-dod.office365.us/.default", "https://outlook-dod.office365.us",
        "https://dod-graph.microsoft.us",
    ),
    "china": Cloud(
        "china", "https://login.partner.microsoftonline.cn", "partner.outlook.cn", "partner.outlook.cn",
        "smtp.partner.outlook.cn", "https://partner.outlook.cn/.default", "https://partner.outlook.cn",
        "https://microsoftgraph.chinacloudapi.cn",
    ),
}

DEFAULT_PORTS = {"imap": 993, "pop3": 995, "smtp": 587}

# What each mail check needs in the token: delegated scope (scp) / app-only role (roles).
DELEGATED_SCOPE = {"imap": "IMAP.AccessAsUser.All", "pop3": "POP.AccessAsUser.All", "smtp": "SMTP.Send"}
APP_ROLE = {"imap": "IMAP.AccessAsApp", "pop3": "POP.AccessAsApp", "smtp": "SMTP.SendAsApp"}
