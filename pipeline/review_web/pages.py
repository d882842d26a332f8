"""The review page's HTML: server-rendered, a little inline CSS, no JavaScript.

Every value from the database or the request is escaped with :func:`html.escape`.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from pipeline.review_web.worklist import JobLine, ReviewLine, StudyPage, WorklistRow

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #1f3a5f; color: #fff; padding: 8px 16px; display: flex;
         justify-content: space-between; align-items: center; }
header a, header button { color: #fff; }
header form { display: inline; }
header button { background: none; border: 1px solid #fff; border-radius: 3px; cursor: pointer; }
main { padding: 16px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef; }
.views { display: flex; gap: 16px; flex-wrap: wrap; }
figure { margin: 0; background: #000; }
figure img { display: block; max-height: 80vh; image-rendering: pixelated; }
figcaption { color: #fff; padding: 4px; }
.accepted { color: #176117; font-weight: bold; }
.rejected { color: #a11; font-weight: bold; }
.pending { color: #946200; }
.note { background: #ffd; border: 1px solid #cc9; padding: 8px; margin-bottom: 12px; }
.error { background: #fee; border: 1px solid #c99; padding: 8px; margin-bottom: 12px; }
.warning { font-size: 12px; color: #555; }
textarea { width: 28em; max-width: 100%; }
.side h2 { margin-top: 0; }
"""
NOT_DIAGNOSTIC = (
    "Model output for review: research use, not a diagnosis. Check every finding on the scan."
)


def _text(value: object) -> str:
    return "–" if value is None or value == "" else escape(str(value))


def _time(value: datetime) -> str:
    return escape(value.astimezone().strftime("%Y-%m-%d %H:%M"))


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():  # DA: YYYYMMDD
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return _text(value)


def _lesions(counts: dict[str, int]) -> str:
    if not counts:
        return "–"
    return " / ".join(f"{escape(view[:3])} {count}" for view, count in sorted(counts.items()))


def _review(review: ReviewLine | None, has_result: bool) -> str:
    if review is None:
        return '<span class="pending">to review</span>' if has_result else "–"
    return (
        f'<span class="{escape(review.state)}">{escape(review.state)}</span> by '
        f"{escape(review.reviewer)}, {_time(review.reviewed_at)}"
    )


def layout(title: str, body: str, *, user: str | None = None, csrf: str | None = None) -> bytes:
    """A whole page: header (with the reviewer and a logout button when logged in) and body."""
    account = ""
    if user is not None and csrf is not None:
        account = (
            f"<span>{escape(user)} · "
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" '
            f'value="{escape(csrf)}"><button type="submit">log out</button></form></span>'
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · bonescan review</title><style>{STYLE}</style></head>"
        f'<body><header><a href="/"><strong>bonescan review</strong></a>{account}</header>'
        f"<main>{body}</main></body></html>"
    )
    return page.encode("utf-8")


def login_page(*, error: str | None = None, user: str = "", next_path: str = "/") -> bytes:
    """The login form: reviewer name (stored with each review) and the shared password."""
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Log in</h1>{message}"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        "<p><label>Your name (kept with each review)<br>"
        f'<input name="user" id="user" value="{escape(user)}" maxlength="64" required '
        'autocomplete="username"></label></p>'
        '<p><label>Password<br><input type="password" name="password" id="password" required '
        'autocomplete="current-password"></label></p>'
        '<p><button type="submit" id="login">Log in</button></p></form>'
    )
    return layout("Log in", body)


def worklist_page(rows: list[WorklistRow], *, user: str, csrf: str) -> bytes:
    """Studies, newest first, with the newest job's state, lesions per view and review."""
    lines = [
        "<tr>"
        f'<td><a href="/studies/{row.study_id}">{_text(row.patient_name)}</a></td>'
        f"<td>{_text(row.patient_id)}</td><td>{_date(row.study_date)}</td>"
        f"<td>{_text(row.study_description)}</td><td>{_time(row.received_at)}</td>"
        f"<td>{_text(row.job_state)}</td><td>{_lesions(row.lesions)}</td>"
        f"<td>{_review(row.review, bool(row.lesions))}</td></tr>"
        for row in rows
    ]
    table = (
        '<table id="worklist"><tr><th>patient</th><th>patient ID</th><th>study date</th>'
        "<th>description</th><th>received</th><th>job</th><th>lesions (ant / post)</th>"
        "<th>review</th></tr>" + "".join(lines) + "</table>"
        if rows
        else "<p>No studies yet.</p>"
    )
    return layout("Worklist", f"<h1>Worklist</h1>{table}", user=user, csrf=csrf)


def _job_rows(jobs: list[JobLine]) -> str:
    rows = []
    for job in jobs:
        reviews = "<br>".join(
            f"{_review(review, True)}: {_text(review.comment)}" for review in job.reviews
        )
        state = _text(job.state) + (" (superseded)" if job.superseded else "")
        rows.append(
            f"<tr><td>{job.id}</td><td>{job.generation}</td><td>{_text(job.model_version)}</td>"
            f"<td>{state}</td><td>{_time(job.created_at)}</td><td>{_lesions(job.lesions)}</td>"
            f"<td>{reviews or _review(None, bool(job.lesions))}</td></tr>"
        )
    return (
        "<h2>Jobs</h2><table><tr><th>job</th><th>generation</th><th>model</th><th>state</th>"
        "<th>created</th><th>lesions</th><th>reviews</th></tr>" + "".join(rows) + "</table>"
    )


def _views(study: StudyPage, job: JobLine) -> str:
    figures = "".join(
        f'<figure><img id="overlay-{escape(view)}" alt="{escape(view)} view with the lesion mask"'
        f' src="/studies/{study.study_id}/jobs/{job.id}/{escape(view)}.png">'
        f"<figcaption>{escape(view)}: {job.lesions.get(view, 0)} lesion(s)</figcaption></figure>"
        for view in study.views
    )
    return figures


def _lesion_table(study: StudyPage) -> str:
    if not study.lesions:
        return "<p>No lesions found.</p>"
    rows = "".join(
        f"<tr><td>{escape(lesion.view)}</td><td>{lesion.label}</td>"
        f"<td>{lesion.area_mm2:.1f}</td><td>{lesion.centroid_row:.0f}, "
        f"{lesion.centroid_column:.0f}</td><td>{lesion.max_probability:.2f}</td></tr>"
        for lesion in study.lesions
    )
    return (
        '<table id="lesions"><tr><th>view</th><th>lesion</th><th>area (mm²)</th>'
        "<th>centre (row, column)</th><th>max. probability</th></tr>" + rows + "</table>"
    )


def _review_form(study: StudyPage, job: JobLine, csrf: str) -> str:
    return (
        f'<h2>Review job {job.id}</h2><form method="post" id="review" '
        f'action="/studies/{study.study_id}/review">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="job_id" value="{job.id}">'
        '<p><label>Comment (required)<br><textarea name="comment" id="comment" rows="3" '
        'maxlength="2000" required></textarea></label></p>'
        '<p><button type="submit" name="decision" value="accept" id="accept">Accept</button> '
        '<button type="submit" name="decision" value="reject" id="reject">Reject</button></p>'
        "</form>"
    )


def study_page(
    study: StudyPage, *, user: str, csrf: str, note: str | None = None, error: str | None = None
) -> bytes:
    """Both views with the SEG overlay, the lesion table, the review form and the job history."""
    header = (
        f"<h1>{_text(study.patient_name)} <small>({_text(study.patient_id)})</small></h1>"
        f"<p>Study of {_date(study.study_date)} · {_text(study.study_description)} · "
        f"received {_time(study.received_at)} · UID {escape(study.study_instance_uid)}</p>"
    )
    notes = (f'<p class="note">{escape(note)}</p>' if note else "") + (
        f'<p class="error">{escape(error)}</p>' if error else ""
    )
    job = study.current
    if job is None:
        content = "<p>No result to review yet.</p>"
    else:
        content = (
            f"<p>Job {job.id} · {_text(job.state)} · model {_text(job.model_version)} · "
            f"lesions {_lesions(job.lesions)} · review "
            f"{_review(job.reviews[-1] if job.reviews else None, True)}</p>"
            f'<p class="warning">{escape(NOT_DIAGNOSTIC)}</p>'
            f'<div class="views">{_views(study, job)}'
            f'<div class="side">{_review_form(study, job, csrf)}</div></div>'
            "<h2>Lesions</h2>" + _lesion_table(study)
        )
    body = header + notes + content + (_job_rows(study.jobs) if study.jobs else "")
    return layout(study.patient_name or f"Study {study.study_id}", body, user=user, csrf=csrf)


def error_page(title: str, line: str) -> bytes:
    """One line saying what went wrong; never a traceback."""
    return layout(
        title,
        f'<h1>{escape(title)}</h1><p id="error">{escape(line)}</p>'
        '<p><a href="/">Back to the worklist</a></p>',
    )
