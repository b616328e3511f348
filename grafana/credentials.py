"""Credentials & certificates: client secret, access token and TLS certificate expiries, soonest first."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    CRED,
    EXPIRY_STEPS,
    PASS_STEPS,
    TOKEN_STEPS,
    bar_timeseries,
    cell,
    credential_info,
    credential_variable,
    job_instance_variables,
    labelled_table,
    merged_table,
    missing_scopes,
    new_dashboard,
    prop,
    query,
    query_variable,
    runbook_link,
    sel,
    status_mappings,
    table_query,
    thresholds_json,
    token_refresh_failures,
)

UID = "m365-credentials"

HOST = sel("host")


def soonest_first(
    keys: Sequence[tuple[str, str]], values: Sequence[tuple[str, str, Sequence[dm.DynamicConfigValue]]]
) -> table.Panel:
    """`merged_table` sorted by its "Time left" column, smallest first."""
    return (
        merged_table(keys, values)
        .cell_height(cm.TableCellHeight.MD)
        .sort_by([cb.TableSortByFieldState().display_name("Time left").desc(False)])
    )


def time_left(spec: list[tuple[float | None, str]]) -> list:
    return [
        prop("unit", "dtdurations"),
        prop("decimals", 2),
        prop("thresholds", thresholds_json(spec)),
        cell("color-background"),
    ]


def expires_at() -> list:
    return [prop("unit", "dateTimeAsIso")]


def status(ok: str = "OK", bad: str = "FAILING") -> list:
    return [
        prop("unit", "bool"),
        prop("mappings", status_mappings(ok, bad)),
        prop("thresholds", thresholds_json(PASS_STEPS)),
        cell("color-background"),
    ]


def build() -> db.Dashboard:
    lay = new_dashboard(
        UID,
        "M365 mail: credentials & certificates",
        "What expires and when: app registration client secrets/certificates, access tokens and the TLS "
        "certificates of the Microsoft 365 endpoints, soonest first; plus token permissions and refresh "
        "failures.",
        [
            *job_instance_variables(),
            credential_variable("Credential(s) from the exporter config"),
            query_variable(
                "host", "Host", f"label_values(m365_tcp_connect_success{sel()}, host)", "Endpoint host(s)"
            ),
        ],
    )

    secret = f"min by (credential, key_id) (m365_client_secret_expiry_timestamp_seconds{CRED})"
    lay.row("Client secrets and certificates of the app registrations")
    lay.add(
        soonest_first(
            [("credential", "Credential"), ("key_id", "Key id")],
            [("A", "Time left", time_left(EXPIRY_STEPS)), ("B", "Expires", expires_at())],
        ),
        title="Client secret / certificate expiry (soonest first)",
        unit="dtdurations",
        w=24,
        h=7,
        description="Each client secret or certificate credential of the app registrations (read from "
        "Microsoft Graph, or `secret_expiry` declared in config as key_id=declared). Orange "
        "under 30 days, red under 7: create a new secret, deploy it, then delete the old one.",
        targets=[table_query("A", f"{secret} - time()"), table_query("B", f"1000 * {secret}")],
        links=[runbook_link("token")],
    )

    lay.row("Access tokens")
    by_cred = "min by (credential) "
    lay.add(
        soonest_first(
            [("credential", "Credential")],
            [
                ("A", "Time left", time_left(TOKEN_STEPS)),
                ("B", "Since last refresh", [prop("unit", "dtdurations"), prop("decimals", 2)]),
                ("C", "Refresh", status()),
                ("D", "Identity", status("MATCHES", "WRONG IDENTITY")),
            ],
        ),
        title="Access tokens (soonest expiry first)",
        unit="dtdurations",
        w=14,
        h=7,
        description="Per credential: time until the current access token expires, time since it was "
        "obtained, whether the last refresh succeeded and whether the token is for the "
        "configured identity.",
        targets=[
            table_query("A", f"{by_cred}(m365_token_expiry_timestamp_seconds{CRED}) - time()"),
            table_query("B", f"time() - max by (credential) (m365_token_last_refresh_timestamp_seconds{CRED})"),
            table_query("C", f"{by_cred}(m365_token_refresh_success{CRED})"),
            table_query("D", f"{by_cred}(m365_token_identity_match{CRED})"),
        ],
        links=[runbook_link("token")],
    )
    lay.place(
        credential_info(),
        title="Credentials",
        w=10,
        h=7,
        description="Tenant, application (client) id, OAuth2 flow and how each credential authenticates.",
    )
    lay.place(
        missing_scopes(missing_first=True),
        title="Permissions the checks need (missing first)",
        w=8,
        h=8,
        description="Each scope/role the mailbox checks of a credential need: granted, or MISSING from the "
        "token (add the API permission and grant admin consent; delegated: re-run `login`).",
    )
    lay.place(
        token_refresh_failures(),
        title="Token refresh failures now",
        w=8,
        h=8,
        description="Credentials whose token refresh fails, with the reason in plain words and the runbook.",
    )
    lay.add(
        bar_timeseries(),
        title="Token refresh failures by reason",
        unit="short",
        w=8,
        h=8,
        description="Failed token refreshes per credential and reason in each interval.",
        targets=[
            query(
                "A",
                f"sum by (credential, reason) (increase(m365_token_refresh_failures_total{CRED}"
                "[$__rate_interval]))",
                "{{credential}}: {{reason}}",
            )
        ],
    )

    cert = f"min by (host, port) (m365_tls_cert_expiry_timestamp_seconds{HOST})"
    lay.row("TLS certificates of the endpoints")
    lay.add(
        soonest_first(
            [("host", "Host"), ("port", "Port")],
            [
                ("A", "Time left", time_left(EXPIRY_STEPS)),
                ("B", "Expires", expires_at()),
                ("C", "Verified", status("VERIFIED", "NOT VERIFIED")),
            ],
        ),
        title="TLS certificate expiry (soonest first)",
        unit="dtdurations",
        w=16,
        h=8,
        description="Earliest notAfter in the chain each endpoint sends (also when verification fails), and "
        "whether chain and host name verified. NOT VERIFIED or an unexpected expiry usually "
        "means a TLS-intercepting proxy.",
        targets=[
            table_query("A", f"{cert} - time()"),
            table_query("B", f"1000 * {cert}"),
            table_query("C", f"min by (host, port) (m365_tls_cert_verified{HOST})"),
        ],
        links=[runbook_link("network")],
    )
    lay.add(
        labelled_table([("host", "Host"), ("port", "Port"), ("version", "TLS version")]),
        title="Negotiated TLS version",
        unit="string",
        w=8,
        h=8,
        description="TLS version negotiated with each endpoint (TLS 1.2 or later is required).",
        targets=[table_query("A", f"max by (host, port, version) (m365_tls_version_info{HOST} == 1)")],
        links=[runbook_link("network")],
    )
    return lay.dashboard
