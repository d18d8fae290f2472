"""Sharing one run's work among the processes of an `accelerate launch` (or `torchrun`), on one node or many.

    accelerate launch --multi_gpu --num_processes 2 recipes/build_dataset.py --config ...

The labelling builder, `recipes/tts.py` and the evaluation sweep all scale out through this one protocol:

1. Rank 0 takes the output's `output_lock` for the whole run and works out what is left to do (the resume logic of
   the runner: shards not yet written, questions not yet answered) — `Ranks.locked_plan`. The plan goes to every
   rank; an error there (another run holds the output, other settings) reaches every rank, so all stop together.
   The other ranks take no lock of their own on the folder: they are admitted by rank 0, so K processes of one run
   share an output while a second, independent run is refused by the lock rank 0 holds.
2. Rank r does `plan[r::K]` (`Ranks.share`), writing its own atomic outputs: shards with the indices the plan gave
   it, or a part file `<output>.rank-<r>` (`part_path`) that only it appends to.
3. `Ranks.wait_for_all` is a barrier; a rank that died is reported at once by name, a rank that hangs after
   `TRL_VLPRM_RANK_TIMEOUT` seconds (default a day: a slow rank is legitimately waited for). Then rank 0 merges
   the part files (`merge_parts`) and writes the summary, still holding the lock.

A rank that dies leaves its share undone; the next run (any K, 1 included) merges what it did write and plans
exactly the rest.

A rank can also outlive its group: on several nodes, losing node 0 (its launcher and rank 0) leaves rank r running
on another node, where nothing stops it until its next collective, and a rerun may already be planning the same
work. So every run is a *generation*: rank 0, under the lock, bumps the generation in `<lock>.claim` (with its pid,
world size and plan digest) and sends it with the plan (`Ranks.claimed_plan`). A rank that writes shared outputs
(labelling shards) does so inside `RunClaim.writing`, which holds `<lock>.commit.lock` for the write and first
checks that its group still owns the output: rank 0's lock is still held, and no newer generation exists. Rank 0
bumps the generation under that same commit lock before it looks at what is done, so an old rank's write either
lands before the new plan is made (and counts as done) or not at all (`LostGroupError`). The locks are `flock`s:
on several nodes the output folder must be on a file system that shares them (NFSv4, Lustre, GPFS do).

The ranks talk over torch.distributed on gloo (the launcher's environment: RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT); a single process (no launcher) needs none of it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from trl_vlprm.utils.resume import atomic_write_text, output_lock, read_results

T = TypeVar("T")

TIMEOUT_ENV = "TRL_VLPRM_RANK_TIMEOUT"
DEFAULT_TIMEOUT = 24 * 3600.0


class RankFailedError(RuntimeError):
    """Another rank of the run failed, died or hung; this rank stopped too (finished work stays for the rerun)."""


class OrphanPartsError(RuntimeError):
    """Part files of an output that no longer exists: left by a killed run whose output the user deleted."""


class LostGroupError(RankFailedError):
    """This rank's run no longer owns its output (rank 0 is gone, or a newer run took over): it stopped unwritten."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the `world_size` processes of one run (rank 0 of 1 without a launcher).

    Args:
        rank: this process's index, 0 for the one that plans, merges and reports.
        world_size: how many processes share the run.
        timeout: seconds a rank waits for the others (for rank 0's plan, at the final barrier) before giving up.
    """

    rank: int = 0
    world_size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"Ranks: rank {self.rank} is not in a world of {self.world_size} processes")

    @classmethod
    def from_environment(cls) -> Ranks:
        """The ranks a launcher set up (RANK / WORLD_SIZE, as `accelerate launch` and `torchrun` export them).

        With more than one process, joins the gloo process group (unless the caller already made one) with
        `TRL_VLPRM_RANK_TIMEOUT` (seconds) as its timeout.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        ranks = cls(rank, world_size, timeout)
        if world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
                # Left to the interpreter's teardown, gloo can abort a rank that exits while a peer is exiting too
                # ("terminate called without an active exception", exit -6), so its error exit is lost.
                atexit.register(_destroy_process_group)
            if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
                raise RuntimeError(
                    f"the process group says rank {dist.get_rank()} of {dist.get_world_size()}, the environment "
                    f"RANK={rank} WORLD_SIZE={world_size}"
                )
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, plan: Sequence[T]) -> list[T]:
        """This rank's items of `plan`: every world_size-th, from its rank on (disjoint; their union is the plan)."""
        return list(plan[self.rank :: self.world_size])

    def log(self, message: str) -> None:
        """One line on stderr prefixed with the rank, when the run has several processes (a single one is quiet)."""
        if self.world_size > 1:
            sys.stderr.write(f"[rank {self.rank}/{self.world_size}] {message}\n")
            sys.stderr.flush()

    @contextlib.contextmanager
    def locked_plan(self, lock_path: str | Path, plan: Callable[[], T]) -> Iterator[T]:
        """Rank 0 holds `output_lock(lock_path)` for the whole block and computes `plan()`; every rank receives it.

        An error on rank 0 (the output locked by another run, settings that differ, a changed question...) is
        raised there as is, and on the other ranks as a `RankFailedError` carrying its message.
        """
        with self._plan(lock_path, plan, claim=False) as (value, _):
            yield value

    @contextlib.contextmanager
    def claimed_plan(self, lock_path: str | Path, plan: Callable[[], T]) -> Iterator[tuple[T, RunClaim]]:
        """`locked_plan`, plus this run's `RunClaim`: rank 0 starts a new generation of the output before planning,
        and every rank writes its shared outputs through `claim.writing(...)`. For outputs other ranks write under
        names the plan gives them (labelling shards); part files need no claim, as only their rank writes them."""
        with self._plan(lock_path, plan, claim=True) as planned:
            yield planned

    @contextlib.contextmanager
    def _plan(self, lock_path: str | Path, plan: Callable[[], T], claim: bool) -> Iterator[tuple[T, RunClaim | None]]:
        lock_path = Path(lock_path)
        with contextlib.ExitStack() as stack:
            if self.is_main:
                try:
                    stack.enter_context(output_lock(lock_path))
                    generation = _start_generation(lock_path, self.world_size) if claim else None
                    value = plan()
                    if claim:
                        _record_plan(lock_path, generation, value)
                except BaseException as err:
                    self._send({"error": f"{type(err).__name__}: {err}"})
                    raise
                self._send({"plan": value, "generation": generation})
            else:
                message = self._receive()
                if "error" in message:
                    raise RankFailedError(f"rank 0 stopped before any work was shared: {message['error']}")
                value, generation = message["plan"], message["generation"]
            yield value, (RunClaim(self, lock_path, generation) if claim else None)

    @contextlib.contextmanager
    def append_records(self, path: str | Path) -> Iterator[TextIO]:
        """The file this rank appends its records of `path` to, open for appending.

        Rank 0 (which holds `path`'s lock through `locked_plan`) appends to `path` itself; every other rank to its own
        part file, under that file's lock, which rank 0 merges (`merge_parts`) once all are done.
        """
        sink = Path(path) if self.is_main else part_path(path, self.rank)
        with contextlib.ExitStack() as stack:
            if not self.is_main:
                stack.enter_context(output_lock(sink))
            yield stack.enter_context(sink.open("a"))

    def wait_for_all(self, what: str) -> None:
        """A barrier: return when every rank got here; `RankFailedError` naming the ranks that died or timed out."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout), wait_all_ranks=True)
        except RuntimeError as err:
            raise RankFailedError(
                f"{what}: not every rank finished ({str(err).strip()}): a rank died, or did not arrive within "
                f"{self.timeout:.0f} s ({TIMEOUT_ENV}). The work written so far is kept; rerun with any number of "
                "processes to complete the rest."
            ) from err

    def _send(self, message: dict[str, Any]) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list([message], src=0)

    def _receive(self) -> dict[str, Any]:
        import torch.distributed as dist

        box: list[Any] = [None]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as err:
            raise RankFailedError(f"rank 0 did not send its plan ({err})") from err
        return box[0]


SINGLE = Ranks()


def claim_path(lock_path: Path) -> Path:
    """The output's generation record: JSON with the generation, the pid of its rank 0, world size, plan digest."""
    return lock_path.with_name(lock_path.name + ".claim")


@contextlib.contextmanager
def _commit_lock(lock_path: Path) -> Iterator[None]:
    """Hold `<lock>.commit.lock` (blocking: it is only ever held for one write or one generation bump)."""
    path = lock_path.with_name(lock_path.name + ".commit.lock")
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _read_claim(lock_path: Path) -> dict[str, Any]:
    try:
        return json.loads(claim_path(lock_path).read_text())
    except FileNotFoundError:
        return {"generation": 0}
    except ValueError as err:
        raise ValueError(
            f"{claim_path(lock_path)}: unreadable run claim ({err}); remove it only when no run is writing this output"
        ) from err


def _start_generation(lock_path: Path, world_size: int) -> int:
    """Rank 0, under the output lock: the next generation, recorded before anything done is looked at."""
    with _commit_lock(lock_path):
        generation = int(_read_claim(lock_path).get("generation", 0)) + 1
        claim = {"generation": generation, "pid": os.getpid(), "world_size": world_size, "plan": None}
        atomic_write_text(claim_path(lock_path), json.dumps(claim))
    return generation


def _record_plan(lock_path: Path, generation: int, plan: Any) -> None:
    """Add the plan's digest to this generation's claim (what the run set out to write, for a reader)."""
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with _commit_lock(lock_path):
        claim = _read_claim(lock_path)
        if claim.get("generation") == generation:
            atomic_write_text(claim_path(lock_path), json.dumps({**claim, "plan": digest}))


def _lock_is_free(lock_path: Path) -> bool:
    """Whether nobody holds `output_lock` on the output (probed with a shared lock, released at once)."""
    try:
        handle = open(lock_path.with_name(lock_path.name + ".lock"))
    except FileNotFoundError:
        return True
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@dataclass(frozen=True)
class RunClaim:
    """One rank's claim, as a member of generation `generation` of the run, on writing into the output."""

    ranks: Ranks
    lock_path: Path
    generation: int

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Hold the output's commit lock while the block writes `what`; `LostGroupError`, before anything is written,
        when this rank's group no longer owns the output. Rank 0 holds the output lock itself: nobody can take over
        while it lives, so it writes without checking."""
        if self.ranks.is_main:
            yield
            return
        with _commit_lock(self.lock_path):
            self._verify(what)
            yield

    def ensure(self, what: str) -> None:
        """`LostGroupError` now if this rank's group no longer owns the output (before starting costly work)."""
        if not self.ranks.is_main:
            with _commit_lock(self.lock_path):
                self._verify(what)

    def _verify(self, what: str) -> None:
        claim = _read_claim(self.lock_path)
        reason = None
        if claim.get("generation") != self.generation:
            reason = (
                f"a newer run (generation {claim.get('generation')}, rank 0 pid {claim.get('pid')}) took over "
                f"the output since this one (generation {self.generation}) started"
            )
        elif _lock_is_free(self.lock_path):
            reason = f"rank 0 no longer holds the output's lock ({self.lock_path}.lock): it died, or its node did"
        if reason is not None:
            raise LostGroupError(
                f"rank {self.ranks.rank}/{self.ranks.world_size} lost its group before writing {what}: {reason}. "
                "Stopping without writing; what this run finished is kept and a rerun does the rest."
            )


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def part_path(path: str | Path, rank: int) -> Path:
    """The file rank `rank` (> 0) appends its share of `path`'s records to; rank 0 writes `path` itself."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank-{rank}")


def part_files(path: str | Path) -> list[Path]:
    """Every part file of `path` on disk (left by any earlier run, whatever its number of processes)."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.rank-(\d+)")
    found = [p for p in path.parent.glob(f"{path.name}.rank-*") if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(pattern.fullmatch(p.name).group(1)))


def merge_parts(path: str | Path) -> int:
    """Move the records of `path`'s part files into `path` (JSONL, one record with an "id" a line); return how many.

    A record whose id `path` already holds is dropped (a merge cut short by a crash is simply done again); a part's
    cut-short last line (a rank killed mid-write) is dropped, as `read_results` does. `path` is rewritten atomically
    once, then the parts are deleted. Only the holder of `path`'s lock may call this.
    """
    path = Path(path)
    parts = part_files(path)
    if not parts:
        return 0
    if not path.exists():  # rank 0 opens the output as the other ranks open their parts: these outlived it
        raise OrphanPartsError(
            f"{', '.join(str(p) for p in parts)}: part file(s) of an earlier run, but {path} does not exist (deleted "
            "to start anew?); remove the part files to start anew, or restore the output to resume it"
        )
    kept = [json.dumps(record) for record in read_results(path)]
    seen = {str(json.loads(line)["id"]) for line in kept}
    moved = 0
    for part in parts:
        for record in read_results(part, repair=False):
            if str(record["id"]) not in seen:
                seen.add(str(record["id"]))
                kept.append(json.dumps(record))
                moved += 1
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    for part in parts:
        part.unlink()
        part.with_name(part.name + ".lock").unlink(missing_ok=True)  # its writer's `output_lock`, long released
    return moved
