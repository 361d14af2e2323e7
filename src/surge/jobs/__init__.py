"""Batch jobs from files: formats in and out, the journal, the cache, prices.

    report = await surge.jobs.run_job(surge.jobs.JobSettings("prompts.jsonl", "out.jsonl", model="gpt-4o-mini"))

The command line (`surge run`, `surge status`) is the usual way in. What cannot run
raises a `JobInputError` (before the first request) or one of its kinds: a
`JournalError` (the journal damaged, on a full disk or held by another run) or an
`OutputError` (an output file that cannot be written); each names the file and says
how to go on.
"""

from surge.jobs._model import InputError, JobInputError, Request
from surge.jobs.journal import JobSummary, Journal, JournalError
from surge.jobs.output import OutputError
from surge.jobs.runner import JobReport, JobSettings, run_job

__all__ = [
    "InputError",
    "JobInputError",
    "JobReport",
    "JobSettings",
    "JobSummary",
    "Journal",
    "JournalError",
    "OutputError",
    "Request",
    "run_job",
]
