"""Where the time of a sweep went: per job, the shared artifacts it built (a sweep builds each once, in the
first job that needs it), its distillation loop and its evaluation, from ``metrics.json``'s
``timings_seconds`` (written by the evaluate stage). Measured on the machine that ran the jobs."""

from __future__ import annotations

from pathlib import Path

from fdistill.files import atomic_write_text
from fdistill.reporting.collect import JobResult

#: build_<kind>_seconds keys in pipeline order; teacher_eval is built inside evaluate_seconds
BUILD_ORDER = ("gguf", "teacher", "student_init", "predistill", "teacher_samples", "teacher_eval")


def stage_time_rows(jobs: list[JobResult], method_key: str | None) -> list[tuple[str, str, float]]:
    """(job label, stage, seconds) for every timed stage of every job, artifacts first."""
    rows = []
    for job in jobs:
        label = job.overrides.get(method_key, job.job_dir.name) if method_key else job.job_dir.name
        timings = job.metadata.get("timings_seconds") or {}
        for kind in BUILD_ORDER:
            if f"build_{kind}_seconds" in timings:
                rows.append((label, f"build {kind}", float(timings[f"build_{kind}_seconds"])))
        for stage in ("distill", "evaluate"):
            if f"{stage}_seconds" in timings:
                rows.append((label, stage, float(timings[f"{stage}_seconds"])))
    return rows


def job_total_seconds(timings: dict) -> float:
    """A job's wall time in its stages: artifacts built + distillation + evaluation (teacher_eval's build is
    part of the evaluation, the training loops part of their artifact's build)."""
    builds = sum(float(value) for key, value in timings.items()
                 if key.startswith("build_") and key != "build_teacher_eval_seconds")
    return builds + float(timings.get("distill_seconds", 0.0)) + float(timings.get("evaluate_seconds", 0.0))


def write_stage_times(jobs: list[JobResult], out: str | Path, title: str, method_key: str | None,
                      provenance: list[str]) -> Path:
    """``<out>_stage_times.md``: one line per timed stage, each job's total and the sweep's sum."""
    rows = stage_time_rows(jobs, method_key)
    lines = [f"# {title}: stage times", "", *[f"{line}  " for line in provenance], "",
             "Seconds of wall time per stage on the machine that ran the jobs (metrics.json `timings_seconds`). "
             "Shared artifacts are built once, by the first job that needs them; later jobs load them from the "
             "cache. `build teacher_eval` (the teacher's evaluation samples and TeacherDist) is part of that "
             "job's `evaluate`.", "", "| job | stage | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {label} | {stage} | {seconds:,.1f} |" for label, stage, seconds in rows]
    totals = []
    for job in jobs:
        label = job.overrides.get(method_key, job.job_dir.name) if method_key else job.job_dir.name
        totals.append((label, job_total_seconds(job.metadata.get("timings_seconds") or {})))
    lines += ["", "| job | total seconds |", "| --- | ---: |"]
    lines += [f"| {label} | {seconds:,.1f} |" for label, seconds in totals]
    lines += [f"| **all jobs** | **{sum(seconds for _, seconds in totals):,.1f}** |", ""]
    path = Path(f"{out}_stage_times.md")
    atomic_write_text(path, "\n".join(lines))
    return path
