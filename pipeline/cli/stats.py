"""``bonescan stats``: jobs and exports per state, and per-stage latency from the job events."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.admin import duration, parse_since, print_json, sessions, show_table
from pipeline.cli.common import settings_or_exit
from pipeline.db import queries


def stats(
    since: Annotated[
        str | None,
        typer.Option(help="Jobs created since DATE (2024-05-01) or DURATION ago (2h, 3d)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Counts of jobs and exports per state, and p50 / p95 of each stage
    (received → queued → running → segmented → exported)."""
    settings = settings_or_exit()
    cutoff = parse_since(since)
    with sessions(settings) as factory, factory() as session:
        result = queries.stats(session, since=cutoff)
    if as_json:
        print_json(result)
        return
    show_table(
        "jobs", [("state", lambda i: i[0]), ("count", lambda i: i[1])], [*result.jobs.items()]
    )
    show_table(
        "exports", [("state", lambda i: i[0]), ("count", lambda i: i[1])], [*result.exports.items()]
    )
    show_table(
        "latency",
        [
            ("stage", lambda i: i[0]),
            ("jobs", lambda i: i[1].count),
            ("p50", lambda i: duration(i[1].p50_s)),
            ("p95", lambda i: duration(i[1].p95_s)),
        ],
        [*result.latency.items()],
    )
