"""Batch jobs from files: formats in and out, the journal, the cache, prices.

    report = await surge.jobs.run_job(surge.jobs.JobSettings("prompts.jsonl", "out.jsonl", model="gpt-4o-mini"))

The command line (`surge run`, `surge status`) is the usual way in.
"""

from surge.jobs._model import InputError, JobInputError, Request
from surge.jobs.journal import JobSummary, Journal
from surge.jobs.runner import JobReport, JobSettings, run_job

__all__ = [
    "InputError",
    "JobInputError",
    "JobReport",
    "JobSettings",
    "JobSummary",
    "Journal",
    "Request",
    "run_job",
]
