"""Building blocks shared by the dashboards.

Conventions enforced here (and checked by tests/test_dashboards.py):
- every panel, target and query variable uses the `${datasource}` variable, never a datasource uid;
- every query is filtered by the `job` and `instance` variables (see `sel`);
- every panel has a title, a description and a unit; panel ids are sequential in build order (stable);
- failure reasons are shown in plain words, mapped from the closed catalogue in exporter/reasons.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from exporter.reasons import CATALOGUE

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["m365", "mail", "oauth2"]
REPO_URL = "https://github.com/m365-mail-exporter/m365-mail-exporter"
RUNBOOK_URL = f"{REPO_URL}/blob/main/docs/runbooks/"
# Where dashboard links send on-call: set by `python -m grafana.generate --runbook-base-url` (default: the
# alerts' `runbook_base_url` in alerts/config.yml), so a fork or an internal mirror serves both.
_runbook_base = RUNBOOK_URL


def set_runbook_base(url: str) -> None:
    """Base URL of the runbook pages for the dashboards built after this call."""
    global _runbook_base
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"runbook base URL must be http(s): {url!r}")
    _runbook_base = url.rstrip("/") + "/"

DAY = 86400
# Time-until thresholds for long-lived things (client secrets, TLS certificates).
EXPIRY_STEPS: list[tuple[float | None, str]] = [(None, "red"), (7 * DAY, "orange"), (30 * DAY, "green")]
# Access tokens live ~60-90 minutes and are renewed well before expiry.
TOKEN_STEPS: list[tuple[float | None, str]] = [(None, "red"), (120, "orange"), (300, "green")]
# 0/1 values: 1 is good (success, match, up) / 1 is bad (missing, overdue; also counts of failures).
PASS_STEPS: list[tuple[float | None, str]] = [(None, "red"), (1, "green")]
FAIL_STEPS: list[tuple[float | None, str]] = [(None, "green"), (1, "red")]
# Labels that only identify the scrape, hidden from tables.
SCRAPE_FIELDS = ("Time", "Value", "__name__", "job", "instance")


def runbook(page: str) -> str:
    return f"{_runbook_base}{page}.md"


# --- selectors and queries -------------------------------------------------------------------------------


def sel(*labels: str) -> str:
    """Selector filtered by job/instance and the given labels, each by the variable of the same name."""
    return "{" + ",".join(f'{name}=~"${name}"' for name in ("job", "instance", *labels)) + "}"


def query(
    ref: str, expr: str, legend: str | None = None, *, instant: bool = False, table_format: bool = False
) -> pb.Dataquery:
    q = pb.Dataquery().ref_id(ref).expr(expr).datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(pm.PromQueryFormat.TABLE)
    if legend is not None:
        q = q.legend_format(legend)
    return q


def table_query(ref: str, expr: str) -> pb.Dataquery:
    """Instant query in table format (one row per series), for table panels."""
    return query(ref, expr, instant=True, table_format=True)


def with_meaning(expr: str) -> str:
    """Copy the `reason` label into `meaning` and `runbook` so each can get its own value mapping."""
    return (
        f'label_replace(label_replace({expr}, "meaning", "$1", "reason", "(.*)"), '
        f'"runbook", "$1", "reason", "(.*)")'
    )


# --- variables -------------------------------------------------------------------------------------------


def datasource_variable() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("Prometheus that scrapes m365-mail-exporter")
    )


def query_variable(
    name: str,
    label: str,
    expr: str,
    description: str,
    *,
    multi: bool = True,
    include_all: bool = True,
    all_value: str | None = ".*",
) -> db.QueryVariable:
    """A label_values() variable. all_value=None: "All" means exactly the listed values (Grafana builds the
    regex), used for job/instance so `up` is not matched for every other target of the Prometheus."""
    v = (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .query(expr)
        .datasource(DATASOURCE)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if include_all and all_value is not None:
        v = v.all_value(all_value)
    return v


def job_instance_variables() -> list[db.QueryVariable]:
    return [
        query_variable(
            "job",
            "Job",
            "label_values(m365_exporter_build_info, job)",
            "Prometheus job(s) scraping the exporter",
            all_value=None,
        ),
        query_variable(
            "instance",
            "Instance",
            'label_values(m365_exporter_build_info{job=~"$job"}, instance)',
            "Exporter instance(s)",
            all_value=None,
        ),
    ]


def mailbox_variable(*, multi: bool = True) -> db.QueryVariable:
    return query_variable(
        "mailbox",
        "Mailbox",
        f"label_values(m365_probe_success{sel()}, mailbox)",
        "Monitored mailbox(es)",
        multi=multi,
        include_all=multi,
    )


def check_variable() -> db.QueryVariable:
    return query_variable(
        "check",
        "Check",
        f"label_values(m365_probe_success{sel('mailbox')}, check)",
        "Per-mailbox checks: token, imap, pop3, smtp",
    )


def credential_variable(description: str) -> db.QueryVariable:
    return query_variable(
        "credential", "Credential", f"label_values(m365_credential_info{sel()}, credential)", description
    )


def mailbox_credential_variable() -> db.QueryVariable:
    """`credential` that follows `mailbox`: the credential(s) the selected mailbox(es) use, from
    m365_mailbox_info. Hidden (it is derived, not a choice); "All" (the default, and what Grafana falls back
    to when a value carried in the URL is not a credential of the mailbox) means exactly the listed
    credentials, not `.*`, so a multi-valued `mailbox` gets every credential it uses and no other."""
    return (
        query_variable(
            "credential",
            "Credential",
            f"label_values(m365_mailbox_info{sel('mailbox')}, credential)",
            "Credential(s) the selected mailbox uses (m365_mailbox_info); follows the mailbox variable",
            all_value=None,
        )
        .hide(dm.VariableHide.HIDE_VARIABLE)
        .allow_custom_value(False)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


# --- field config helpers --------------------------------------------------------------------------------


def steps(spec: Sequence[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in spec])
    )


def thresholds_json(spec: Sequence[tuple[float | None, str]]) -> dict[str, object]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in spec]}


def status_mappings(ok: str = "OK", bad: str = "FAILING") -> list[dm.ValueMapping]:
    """1 -> green OK, 0 -> red FAILING, no data -> grey."""
    return [
        dm.ValueMap(
            options={
                "1": dm.ValueMappingResult(text=ok, color="green", index=0),
                "0": dm.ValueMappingResult(text=bad, color="red", index=1),
            }
        ),
        dm.SpecialValueMap(
            options=dm.DashboardSpecialValueMapOptions(
                match=dm.SpecialValueMatch.NULL_AND_NAN,
                result=dm.ValueMappingResult(text="NO DATA", color="text", index=2),
            )
        ),
    ]


def reason_summary_mapping() -> dm.ValueMap:
    """reason label value -> plain-words summary, generated from the catalogue so it cannot drift."""
    return dm.ValueMap(
        options={
            reason.value: dm.ValueMappingResult(text=info.summary, index=i)
            for i, (reason, info) in enumerate(CATALOGUE.items())
        }
    )


def reason_runbook_mapping() -> dm.ValueMap:
    """reason label value -> runbook page name (docs/runbooks/<page>.md)."""
    return dm.ValueMap(
        options={
            reason.value: dm.ValueMappingResult(text=info.runbook, index=i)
            for i, (reason, info) in enumerate(CATALOGUE.items())
        }
    )


def prop(id_: str, value: object) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=id_, value=value)


def cell(type_: str) -> dm.DynamicConfigValue:
    return prop("custom.cellOptions", {"type": type_})


def mailbox_detail_link() -> dict[str, object]:
    return {
        "title": "Mailbox detail",
        "url": "/d/m365-mailbox?var-mailbox=${__value.raw}&${datasource:queryparam}"
        "&${job:queryparam}&${instance:queryparam}&${__url_time_range}",
    }


def link(title: str, url: str, tooltip: str = "") -> db.DashboardLink:
    return (
        db.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(url).tooltip(tooltip).target_blank(True)
    )


def runbook_link(page: str) -> db.DashboardLink:
    """Panel link to one runbook page: "Token runbook" -> docs/runbooks/token.md."""
    return link(f"{page.capitalize()} runbook", runbook(page))


def transformation(id_: str, options: dict[str, object]) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=id_, options=options)


def organize(order: Sequence[str], exclude: Iterable[str] = SCRAPE_FIELDS) -> dm.DataTransformerConfig:
    return transformation(
        "organize",
        {
            "excludeByName": dict.fromkeys(exclude, True),
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": {},
        },
    )


# --- panels ----------------------------------------------------------------------------------------------


class Viz(NamedTuple):
    """A panel builder with what it shows; title, description and size are given where it is placed."""

    panel: Any
    unit: str
    targets: Sequence[pb.Dataquery]
    links: Sequence[db.DashboardLink] = ()


class Layout:
    """Sequential, stable panel ids and a dashboard under construction."""

    def __init__(self, dashboard: db.Dashboard) -> None:
        self.dashboard = dashboard
        self._ids: Iterator[int] = itertools.count(1)

    def row(self, title: str) -> None:
        self.dashboard.with_row(db.Row(title).id(next(self._ids)))

    def add(
        self,
        panel: Any,
        *,
        title: str,
        description: str,
        unit: str,
        w: int,
        h: int,
        targets: Sequence[pb.Dataquery],
        links: Sequence[db.DashboardLink] = (),
    ) -> None:
        """Finish a panel builder (id, title, description, datasource, unit, size, targets) and place it."""
        panel.id(next(self._ids)).title(title).description(description).datasource(DATASOURCE)
        panel.unit(unit).span(w).height(h).targets(list(targets))
        if links:
            panel.links(list(links))
        self.dashboard.with_panel(panel)

    def place(self, viz: Viz, *, title: str, description: str, w: int, h: int) -> None:
        """Add a ready-made panel (see `Viz`) with its title, description and size."""
        self.add(
            viz.panel,
            title=title,
            description=description,
            unit=viz.unit,
            w=w,
            h=h,
            targets=viz.targets,
            links=viz.links,
        )


def new_dashboard(uid: str, title: str, description: str, variables: Sequence[cogbuilder.Builder]) -> Layout:
    d = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .timepicker(db.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
        .link(
            db.DashboardLink("Microsoft 365 mail")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["m365"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
            .tooltip("Other m365-mail-exporter dashboards")
        )
        .link(link("Runbooks", runbook("index"), "What to do about each failure reason and alert"))
        .link(
            link(
                "Failure reasons",
                f"{REPO_URL}/blob/main/docs/reasons.md",
                "The closed set of reason label values",
            )
        )
    )
    d.with_variable(datasource_variable())
    for v in variables:
        d.with_variable(v)
    return Layout(d)


def number_stat(spec: Sequence[tuple[float | None, str]], *, name_mode: bool = False) -> stat.Panel:
    """Big tiles of the last value, background coloured by `spec`."""
    return (
        stat.Panel()
        .thresholds(steps(spec))
        .color_mode(cm.BigValueColorMode.BACKGROUND_SOLID)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME if name_mode else cm.BigValueTextMode.VALUE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def status_stat(*, name_mode: bool = True) -> stat.Panel:
    """Big green/red tiles for 0/1 gauges."""
    return (
        number_stat(PASS_STEPS, name_mode=name_mode)
        .mappings(status_mappings())
        .orientation(cm.VizOrientation.AUTO)
        .no_value("NO DATA")
    )


def time_left_bargauge(spec: Sequence[tuple[float | None, str]], max_seconds: float) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .thresholds(steps(spec))
        .min(0)
        .max(max_seconds)
        .decimals(2)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .show_unfilled(True)
        .name_placement(cm.BarGaugeNamePlacement.LEFT)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .no_value("none known")
    )


def labelled_table(
    columns: Sequence[tuple[str, str]],
    *,
    props: Mapping[str, Sequence[dm.DynamicConfigValue]] | None = None,
    exclude: Iterable[str] = SCRAPE_FIELDS,
    merge: bool = False,
) -> table.Panel:
    """Table of the given (field, display name) columns in this order; `props` adds properties by field.

    merge=True first joins instant table queries A, B, ... on their labels (value columns `Value #A`, ...).
    """
    p = table.Panel()
    if merge:
        p = p.with_transformation(transformation("merge", {}))
    p = p.with_transformation(organize([name for name, _ in columns], exclude))
    for name, display in columns:
        p = p.override_by_name(name, [prop("displayName", display), *(props or {}).get(name, ())])
    return p


def merged_table(
    keys: Sequence[tuple[str, str]], values: Sequence[tuple[str, str, Sequence[dm.DynamicConfigValue]]]
) -> table.Panel:
    """Join instant table queries on their labels: `keys` columns, then (refId, column name, properties)."""
    return labelled_table(
        [*keys, *((f"Value #{ref}", name) for ref, name, _ in values)],
        props={f"Value #{ref}": props for ref, _, props in values},
        exclude=("Time",),
        merge=True,
    )


def failure_table(
    columns: Sequence[tuple[str, str]], *, subject_link: dict[str, object] | None = None
) -> table.Panel:
    """Table of *_failure_info series: the given label columns, then reason, its meaning and runbook.

    The query must be `with_meaning(...)` so `meaning` and `runbook` exist as copies of `reason`.
    """
    open_runbook = {
        "title": "Open runbook",
        "url": _runbook_base + "${__value.text}.md#${__value.raw}",
        "targetBlank": True,
    }
    props = {
        "reason": [prop("color", {"mode": "fixed", "fixedColor": "red"}), cell("color-text")],
        "meaning": [prop("mappings", [reason_summary_mapping()])],
        "runbook": [prop("mappings", [reason_runbook_mapping()]), prop("links", [open_runbook])],
    }
    if subject_link is not None:
        props["mailbox"] = [prop("links", [subject_link])]
    return (
        labelled_table(
            [*columns, ("reason", "Reason"), ("meaning", "What it means"), ("runbook", "Runbook")], props=props
        )
        .cell_height(cm.TableCellHeight.MD)
        .no_value("No failures")
        .show_header(True)
    )


def list_legend(*, show: bool) -> cb.VizLegendOptions:
    """Legend as a list below the graph; show=False hides it (state timelines name their rows)."""
    return (
        cb.VizLegendOptions()
        .show_legend(show)
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
    )


def state_timeline(
    mappings: list[dm.ValueMapping], spec: Sequence[tuple[float | None, str]]
) -> statetimeline.Panel:
    """One coloured band per series over time (equal values merged, no text), legend hidden."""
    return (
        statetimeline.Panel()
        .mappings(mappings)
        .thresholds(steps(spec))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(90)
        .legend(list_legend(show=False))
    )


def status_timeline() -> statetimeline.Panel:
    """Pass/fail history of 0/1 gauges: green OK, red FAILING."""
    return state_timeline(status_mappings(), PASS_STEPS)


def line_timeseries() -> timeseries.Panel:
    return timeseries.Panel().legend(list_legend(show=True)).min(0)


def bar_timeseries() -> timeseries.Panel:
    """Counts per interval (increase(...[$__rate_interval])) as bars."""
    return line_timeseries().draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)


# --- token panels shared by the mailbox and credentials dashboards ---------------------------------------

CRED = sel("credential")


def credential_info() -> Viz:
    """Tenant, client id, flow and authentication of each credential."""
    columns = [
        ("credential", "Credential"),
        ("tenant_id", "Tenant id"),
        ("client_id", "Client (application) id"),
        ("flow", "Flow"),
        ("auth", "Authenticates with"),
    ]
    by = ", ".join(name for name, _ in columns)
    return Viz(
        labelled_table(columns), "string", [table_query("A", f"max by ({by}) (m365_credential_info{CRED})")]
    )


def scope_mappings() -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                "0": dm.ValueMappingResult(text="granted", color="green", index=0),
                "1": dm.ValueMappingResult(text="MISSING", color="red", index=1),
            }
        )
    ]


def missing_scopes(*, missing_first: bool = False) -> Viz:
    """Each scope/role a credential's checks need: granted or MISSING from its token."""
    p = labelled_table(
        [("credential", "Credential"), ("scope", "Permission (scope / role)"), ("Value", "State")],
        props={"Value": [prop("mappings", scope_mappings()), cell("color-background")]},
        exclude=("Time",),
    ).thresholds(steps(FAIL_STEPS))
    if missing_first:
        p = p.sort_by([cb.TableSortByFieldState().display_name("State").desc(True)])
    return Viz(
        p,
        "bool",
        [table_query("A", f"max by (credential, scope) (m365_token_missing_scope{CRED})")],
        [runbook_link("token")],
    )


def token_refresh_failures() -> Viz:
    """Credentials whose token refresh fails now, with the reason in plain words and the runbook."""
    return Viz(
        failure_table([("credential", "Credential")]),
        "bool",
        [table_query("A", with_meaning(f"max by (credential, reason) (m365_token_refresh_failure_info{CRED} == 1)"))],
        [runbook_link("token")],
    )
