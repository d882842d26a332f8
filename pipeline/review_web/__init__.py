"""The review page: a small server-rendered web app where radiologists look at both views with
the SEG overlay and accept or reject a job's result (``bonescan review-server``)."""
