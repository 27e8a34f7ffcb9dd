"""Running model-written code: each program in its own process, temporary directory and limits (Linux).

Generated code is untrusted code. `run_program` runs one program to completion or to its wall-clock timeout and
reports how it ended; what contains it, by layer:

- time: a wall-clock timeout, after which every process the program started is killed (its cgroup, else its PID
  namespace and process group), and an RLIMIT_CPU of the timeout plus one second;
- memory, files, processes: RLIMIT_AS (address space), RLIMIT_FSIZE (the largest file it may write, its captured
  output included), no core files; the number of processes by a pids cgroup (pids.max) where one can be made
  (root, cgroup v1 or a writable v2 tree), else RLIMIT_NPROC (a user other than root: the processes it already has
  plus the limit; root is exempt from RLIMIT_NPROC, so root without a pids cgroup is refused);
- network and the process tree: `unshare` (util-linux) puts the program in new network and PID namespaces, the
  network holding only a loopback that is down, the program its namespace's init (so its descendants die with it);
- files outside its directory: as root, the program runs as a dedicated unprivileged uid (`SANDBOX_UID`), which
  owns only its temporary directory. As another user it runs as that user, who can still change that user's own
  files: run evaluations of untrusted models in a container or as a user that owns nothing else. No quota bounds
  the total it writes where anyone may write (/tmp): each file at most `file_bytes`, for at most the timeout.

`isolation()` says which of these hold on this machine; `evaluate run` records it beside the scores.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SANDBOX_UID = 1_999_999_937  # an id no account uses: root's sandboxed programs run as it (and as its group)
OUTPUT_TAIL = 2000  # characters of a program's stderr kept in its outcome


class SandboxError(RuntimeError):
    """Programs cannot be run with the stated limits on this machine (said why, and what to do)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, per program
    memory_bytes: int = 2 << 30  # address space of each process
    file_bytes: int = 1 << 20  # the largest file it may write (its output file too)
    processes: int = 32  # processes and threads at once, the program's own included


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" (exit 0), "failed" (another exit or a signal), "timed_out"
    detail: str  # the end of its stderr, or the signal that ended it
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """What contains a program on this machine (`isolation()`)."""

    processes: str  # "cgroup", "rlimit"
    namespaces: bool  # network and PID namespaces (unshare)
    uid: int  # the uid programs run as
    interpreter: str

    def describe(self) -> str:
        return (f"processes capped by {'a pids cgroup' if self.processes == 'cgroup' else 'RLIMIT_NPROC'}; "
                + ("network and PID namespaces" if self.namespaces else "no network or PID namespace (unshare "
                   "unavailable): network open, descendants killed by process group")
                + f"; uid {self.uid}; {self.interpreter}")


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
    """Run `program` (Python source) under `limits` in a fresh temporary directory, removed afterwards.

    Raises:
        SandboxError: the limits cannot be enforced here (`isolation`).
    """
    how = isolation()
    workdir = Path(tempfile.mkdtemp(prefix="syllabus-sandbox-"))
    cgroup = _make_cgroup(limits.processes) if how.processes == "cgroup" else None
    try:
        (workdir / "program.py").write_text(program)
        if how.uid != os.getuid():
            os.chown(workdir, how.uid, how.uid)
            os.chown(workdir / "program.py", how.uid, how.uid)
        command = [*(_unshare_prefix() if how.namespaces else []), how.interpreter, "-I", "-B", "program.py"]
        start = time.perf_counter()
        with open(workdir / "stderr", "wb") as stderr:  # a file, never a pipe: a flood cannot block the parent
            process = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=stderr, env={"PATH": "/usr/bin:/bin", "HOME": str(workdir)},
                                       start_new_session=True, preexec_fn=_confine(limits, how, cgroup))
            try:
                code = process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                code, timed_out = None, True
            _kill_all(process, cgroup, how.uid if how.uid != os.getuid() else None)
        seconds = time.perf_counter() - start
        tail = (workdir / "stderr").read_bytes()[-OUTPUT_TAIL:].decode(errors="replace")
        if timed_out:
            return Outcome("timed_out", f"killed after {limits.timeout_s:g} s", seconds)
        if code == 0:
            return Outcome("passed", "", seconds)
        ended = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return Outcome("failed", f"{ended}: {tail.strip()}" if tail.strip() else ended, seconds)
    finally:
        if cgroup is not None:
            _remove_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)


@cache
def isolation() -> Isolation:
    """How programs are contained here, probed once per process.

    Raises:
        SandboxError: not Linux; root without a pids cgroup (root ignores RLIMIT_NPROC, so nothing would stop a
            fork bomb); or no interpreter the sandbox uid can run.
    """
    if not sys.platform.startswith("linux"):
        raise SandboxError("running generated code needs Linux (resource limits, namespaces); evaluate code sets "
                           "on a Linux machine or container")
    root = os.getuid() == 0
    cgroup = _cgroup_root()
    if root and cgroup is None:
        raise SandboxError("running as root with no writable pids cgroup: root ignores RLIMIT_NPROC, so nothing "
                           "would cap a fork bomb. Run as an ordinary user, or in a container with a pids limit "
                           "(docker run --pids-limit 512) and a writable /sys/fs/cgroup")
    uid = SANDBOX_UID if root else os.getuid()
    namespaces = shutil.which("unshare") is not None and _probe(uid, [*_unshare_prefix(), "/bin/true"])
    candidates = [sys.executable] + (["/usr/bin/python3", "/usr/local/bin/python3"] if root else [])
    for interpreter in candidates:
        if os.path.exists(interpreter) and _probe(uid, [interpreter, "-I", "-c", "pass"]):
            return Isolation("cgroup" if cgroup else "rlimit", namespaces, uid, interpreter)
    raise SandboxError(f"no Python interpreter that uid {uid} may run ({', '.join(candidates)}): install a system "
                       "python3 readable by all users")


def _unshare_prefix() -> list[str]:
    # --user maps the caller to root inside, so that an unprivileged uid may make the other namespaces;
    # --kill-child: the program (its PID namespace's init, and so every descendant) dies with unshare
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]


def _probe(uid: int, command: list[str]) -> bool:
    def become() -> None:
        if uid != os.getuid():
            _drop_to(uid)

    try:
        return subprocess.run(command, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              preexec_fn=become).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _confine(limits: Limits, how: Isolation, cgroup: Path | None):
    """What the child does between fork and exec: join the cgroup, set the limits, drop to the sandbox uid."""
    cpu_s = int(limits.timeout_s) + 1
    nproc = None if cgroup else _own_processes() + limits.processes

    def confine() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        for which, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                             (resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if how.uid != os.getuid():
            _drop_to(how.uid)

    return confine


def _own_processes() -> int:
    """The processes (and threads) of this uid now: RLIMIT_NPROC counts them all, not the program's alone."""
    count = 0
    for pid in _processes_of(os.getuid()):
        try:
            count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


@cache
def _cgroup_root() -> Path | None:
    """A directory under which a pids cgroup can be made: cgroup v1's pids hierarchy, or this process's own v2
    cgroup where it is writable and delegates pids."""
    candidates = [Path("/sys/fs/cgroup/pids")]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append(Path("/sys/fs/cgroup") / line[3:].lstrip("/"))
    except OSError:
        pass
    for base in candidates:
        probe = base / f"syllabus-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            usable = (probe / "pids.max").exists()
        finally:
            probe.rmdir()
        if usable:
            return base
    return None


def _make_cgroup(processes: int) -> Path:
    group = _cgroup_root() / f"syllabus-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    (group / "pids.max").write_text(str(processes))
    return group


def _kill_all(process: subprocess.Popen, cgroup: Path | None, uid: int | None) -> None:
    """Kill the program and everything it started, whether it ended or not (a child may outlive it), and, when it
    ran as the sandbox uid, wait until no process of that uid is left (a killed process takes a moment to go)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()] if cgroup is not None else []
        living = _processes_of(uid) if uid is not None else []
        if not pids and not living:
            return
        for pid in {*pids, *living}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _processes_of(uid: int) -> list[int]:
    """The processes of `uid`, zombies included (they go when their parent reaps them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _remove_cgroup(group: Path) -> None:
    for _ in range(100):  # the kernel empties it a moment after its last process dies
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.02)
