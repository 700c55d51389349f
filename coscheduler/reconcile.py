"""The Slurm room: lends of jobs that no longer run are revoked even when the plugin's
revoke never arrived (a node that died, a record lost).

Every ``reconcile_s`` the step asks Slurm about the jobs that lend, in a worker thread (a
slow squeue on a big cluster must not stall dispatching); once the answer is there, the
loop revokes the lends of jobs Slurm says ended, and learns end times it did not know.

May not touch: agent sessions, client requests, placement.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

from sqlalchemy.orm import Session

from . import db as D
from .db.bulk import chunks
from .hub import Hub
from .lends import slot_parts
from .slurm import JobInfo, SlurmAccess, SlurmError

log = logging.getLogger("faas.coscheduler")


class Reconciler:
    def __init__(self, hub: Hub, slurm: SlurmAccess, revoke_slot: Callable[[Session, str, str], None]):
        self.hub = hub
        self.slurm = slurm
        self.revoke_slot = revoke_slot
        self._last = 0.0
        self._worker: Optional[ThreadPoolExecutor] = None
        self._answer: Optional[Future] = None  # a question to Slurm under way
        self._asked: Optional[set[str]] = None  # the slots it is about (None: every active slot)

    def step_reconcile(self) -> None:
        if self._answer is not None:
            if not self._answer.done():
                return
            answer, self._answer = self._answer, None
            try:
                jobs = answer.result()
            except SlurmError as exc:
                log.warning("cannot reconcile with Slurm: %s", exc)
                return
            self._apply(jobs, self._asked)
            return
        full = time.monotonic() - self._last >= self.hub.config.reconcile_s
        if not full and not self.hub.lends_to_check:
            return  # a new lend is asked about at once: placement waits for its job's end
        if full:
            self._last = time.monotonic()
            self.hub.lends_to_check.clear()
            self._asked = None
            with self.hub.database.session() as s:
                job_ids = {slot.job_id for slot in D.active_slots(s)}
        else:
            # Only the new lends' jobs: at scale lends come every second, and reading every
            # active slot for each was a cost of the loop (the full round is every reconcile_s).
            self._asked, self.hub.lends_to_check = self.hub.lends_to_check, set()
            job_ids = {slot_parts(slot_id)[0] for slot_id in self._asked}
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="slurm")
        self._answer = self._worker.submit(self._ask, job_ids)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def _ask(self, job_ids: set[int]) -> dict[int, Optional[JobInfo]]:
        """(worker thread) What Slurm says of each job: its JobInfo, or None when unknown."""
        jobs = self.slurm.jobs()
        answer: dict[int, Optional[JobInfo]] = {}
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is None:
                # squeue forgets finished jobs after MinJobAge; a job squeue does not list
                # may also be one the controller has not reported yet: ask once more.
                try:
                    job = self.slurm.job(job_id)
                except SlurmError as exc:
                    log.warning("cannot ask Slurm about job %d: %s", job_id, exc)
                    continue  # not in the answer: left alone this round
            answer[job_id] = job
        return answer

    def _apply(self, jobs: dict[int, Optional[JobInfo]], slot_ids: Optional[set[str]]) -> None:
        with self.hub.database.session() as s:
            slots = D.active_slots(s) if slot_ids is None else [
                sl for chunk in chunks(sorted(slot_ids))
                for sl in s.scalars(D.select(D.Slot).where(D.Slot.id.in_(chunk), D.Slot.state == "ACTIVE"))]
            for slot in slots:
                if slot.job_id not in jobs:
                    continue  # lent after the question, or Slurm could not say
                job = jobs[slot.job_id]
                if job is None or not job.alive:
                    self.revoke_slot(s, slot.id, f"job {slot.job_id} is {job.state if job else 'gone'} in Slurm")
                    continue
                if job.end_time is not None and slot.end_time != job.end_time:
                    slot.end_time = job.end_time  # learned, or changed (scontrol update TimeLimit=...)
                    self.hub.slot_changed(slot.id)
                if slot.id not in self.hub.end_known:
                    self.hub.end_known.add(slot.id)  # Slurm answered: no end time means none
                    self.hub.mark_dirty()
