"""``bonescan review``: a radiologist accepts or rejects a job's result (audited)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.admin import actor, parse_id, sessions
from pipeline.cli.common import fail, settings_or_exit
from pipeline.db import admin
from pipeline.db.states import ReviewState

app = typer.Typer(help="Accept or reject a job's result.", no_args_is_help=True)

JobArgument = Annotated[str, typer.Argument(metavar="JOB_ID", help="Job id.")]
CommentOption = Annotated[
    str | None, typer.Option("--comment", help="Why (kept with the review; required).")
]
ReviewerOption = Annotated[
    str | None, typer.Option("--reviewer", help="Who reviews (default: $USER).")
]


def _review(job_id: str, state: ReviewState, comment: str | None, reviewer: str | None) -> None:
    settings = settings_or_exit()
    number = parse_id(job_id, "job id")
    if comment is None or not comment.strip():
        fail("--comment is required: say why")
    who = actor(reviewer)
    with sessions(settings) as factory, factory.begin() as session:
        review = admin.add_review(session, number, state, reviewer=who, comment=comment.strip())
        review_id = review.id
    typer.echo(f"job {number} {state.value} by {who} (review {review_id})")


@app.command("accept")
def accept(
    job_id: JobArgument, comment: CommentOption = None, reviewer: ReviewerOption = None
) -> None:
    """Accept a job's result."""
    _review(job_id, ReviewState.ACCEPTED, comment, reviewer)


@app.command("reject")
def reject(
    job_id: JobArgument, comment: CommentOption = None, reviewer: ReviewerOption = None
) -> None:
    """Reject a job's result."""
    _review(job_id, ReviewState.REJECTED, comment, reviewer)
