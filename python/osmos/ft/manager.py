"""The snapshot manager: a per-node process that owns the shared-memory snapshot slots.

The manager outlives its trainers, so a trainer killed by a software fault loses nothing: the
restarted trainer reattaches (job id, socket path and token come from the environment, which
torchrun passes to restarted workers) and restores the newest published snapshot.

Layout and security
- Slots are files in /dev/shm named ``osmos_ft_<16 random hex>_r<rank>_s<slot>``, created with
  ``O_EXCL`` and mode 0600 by the manager. Two slots per rank, and a third one only when the
  trainer needs a slot while the other is pinned by a flush to disk (``osmos.ft.persist``).
- The control socket lives in a fresh 0700 directory (``tempfile.mkdtemp``); every request carries
  the job id and a 128-bit random token (compared in constant time), and the peer's uid
  (SO_PEERCRED) must be the manager's own.
- Publication is a single message handled under a lock: the trainer first fills the slot the
  manager handed it (never the published one), computes the per-shard checksums, then sends
  ``publish`` with step, layout and checksums. A snapshot whose writer dies before that message is
  never visible, and neither the published slot nor one being flushed to disk is handed out for
  writing.
- Persistence (optional, ``--persist-dir``): a background thread flushes every N-th published
  snapshot of each rank to disk as safetensors + JSON (``osmos.ft.persist``), never blocking the
  trainer.
- Segments are removed on ``end_job``, on SIGTERM/SIGINT and at normal exit.

Protocol: one JSON object per line over the Unix socket, one reply line per request.
"""

from __future__ import annotations

import argparse
import atexit
import hmac
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from osmos.ft.persist import Flusher, PersistConfig

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "osmos_ft_"
ENV_JOB = "OSMOS_FT_JOB_ID"
ENV_SOCKET = "OSMOS_FT_SOCKET"
ENV_TOKEN = "OSMOS_FT_TOKEN"
ENV_PERSIST = "OSMOS_FT_PERSIST_DIR"


@dataclass
class _RankSlots:
    base: str  # slot i is the file f"{base}_s{i}"
    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    published: dict | None = None  # {"slot", "step", "layout", ...} of the last complete snapshot
    complete: list = field(default_factory=list)  # record held by each slot, if whole
    writing: int | None = None
    pinned: set = field(default_factory=set)  # slots being flushed to disk

    def writable_slot(self) -> int:
        """The slot to hand out for writing: never the published one nor a pinned one; of the
        others, an empty one, else the one holding the oldest snapshot; a new slot if none is free."""
        cur = None if self.published is None else self.published["slot"]
        free = [i for i in range(len(self.paths)) if i != cur and i not in self.pinned]
        if free:
            return min(free, key=lambda i: -1 if self.complete[i] is None else self.complete[i]["step"])
        self.paths.append(f"{self.base}_s{len(self.paths)}")
        self.sizes.append(0)
        self.complete.append(None)
        return len(self.paths) - 1


_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def slot_key(rank: int | str) -> str:
    """The name of a slot pair: a trainer rank (int), or a parity holder's key such as
    ``parity_s3_p0`` (letters, digits, '_' and '-')."""
    if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0:
        return str(rank)
    if isinstance(rank, str) and _KEY.fullmatch(rank):
        return rank
    raise ValueError(f"rank must be a non-negative int or a key of [A-Za-z0-9_-]{{1,64}}, got {rank!r}")


class _ManagerState:
    def __init__(self, job_id: str, token: str, persist: PersistConfig | None = None):
        self.job_id = job_id
        self.token = token
        self.tag = secrets.token_hex(8)
        self.ranks: dict[str, _RankSlots] = {}
        self.lock = threading.Lock()
        self.flusher = Flusher(self, persist) if persist is not None else None

    def _slots(self, rank: str) -> _RankSlots:
        if rank not in self.ranks:
            r = self.ranks[rank] = _RankSlots(base=os.path.join(SHM_DIR, f"{SEGMENT_PREFIX}{self.tag}_r{rank}"))
            r.writable_slot(), r.writable_slot()  # slots 0 and 1 (files created on first use)
        return self.ranks[rank]

    def begin(self, rank: str, nbytes: int) -> dict:
        with self.lock:
            r = self._slots(rank)
            slot = r.writable_slot()
            path = r.paths[slot]
            if r.sizes[slot] == 0:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            else:
                fd = os.open(path, os.O_RDWR)
            try:
                if r.sizes[slot] < nbytes:
                    os.ftruncate(fd, nbytes)
                    r.sizes[slot] = nbytes
            finally:
                os.close(fd)
            r.writing = slot
            r.complete[slot] = None  # being overwritten
            return {"slot": slot, "path": path, "size": r.sizes[slot]}

    def publish(self, rank: str, record: dict) -> dict:
        with self.lock:
            r = self._slots(rank)
            if r.writing != record["slot"]:
                raise ValueError(f"slot {record['slot']} was not handed out for writing")
            record["path"] = r.paths[record["slot"]]
            r.published = r.complete[record["slot"]] = record
            r.writing = None
        if self.flusher is not None:
            self.flusher.published(rank)
        return {"published": record["step"]}

    def latest(self, rank: str) -> dict:
        with self.lock:
            r = self.ranks.get(rank)
            return {"snapshot": None if r is None else r.published}

    def complete(self, rank: str) -> dict:
        """Every whole snapshot still held for ``rank`` (the published one and, unless it is being
        overwritten, the other slot's), newest first."""
        with self.lock:
            r = self.ranks.get(rank)
            records = [] if r is None else [c for c in r.complete if c is not None]
            # newest first; of two with one step (a rebuilt copy of a corrupted one), the published first
            return {"snapshots": sorted(records, key=lambda c: (-c["step"], c is not r.published))}

    def keep_until(self, rank: str, step: int) -> dict:
        """Forget whole snapshots newer than ``step`` (after a recovery rolled the job back to
        ``step``); the newest remaining one becomes the published one."""
        with self.lock:
            r = self._slots(rank)
            r.complete = [c if c is not None and c["step"] <= step else None for c in r.complete]
            kept = sorted((c for c in r.complete if c is not None),
                          key=lambda c: (-c["step"], c is not r.published))
            r.published = kept[0] if kept else None
        if self.flusher is not None:
            self.flusher.rolled_back(rank, step)
        return {"published": None if r.published is None else r.published["step"]}

    def persisted(self, rank: str) -> dict:
        """Steps of the rank's persistent checkpoints (newest first), whether a flush is pending
        or running, and the last flush error (None when none or no persistence)."""
        if self.flusher is None:
            return {"persisted": [], "pending": False, "flush_error": None}
        return self.flusher.status(rank)

    def cleanup(self) -> None:
        if self.flusher is not None:
            self.flusher.stop()  # a flush in progress is abandoned, its temporary files removed
        with self.lock:
            for r in self.ranks.values():
                for p in r.paths:
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
            self.ranks.clear()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        state: _ManagerState = self.server.state  # type: ignore[attr-defined]
        creds = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            return
        try:
            self._serve(state)
        except (ConnectionResetError, BrokenPipeError):
            return  # the trainer died mid-conversation: what this process outlives trainers for

    def _serve(self, state: "_ManagerState") -> None:
        for line in self.rfile:
            try:
                req = json.loads(line)
                if req.get("job_id") != state.job_id or not hmac.compare_digest(
                    str(req.get("token", "")).encode(), state.token.encode()
                ):
                    reply = {"error": "refused: wrong job id or token"}
                else:
                    reply = self._dispatch(state, req)
            except Exception as exc:  # report to the client, keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write((json.dumps(reply) + "\n").encode())
            self.wfile.flush()
            if reply.get("ended"):
                threading.Thread(target=self.server.shutdown, daemon=True).start()
                return

    @staticmethod
    def _dispatch(state: _ManagerState, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "begin":
            return state.begin(slot_key(req["rank"]), int(req["nbytes"]))
        if op == "publish":
            return state.publish(slot_key(req["rank"]), req["record"])
        if op == "latest":
            return state.latest(slot_key(req["rank"]))
        if op == "complete":
            return state.complete(slot_key(req["rank"]))
        if op == "keep_until":
            return state.keep_until(slot_key(req["rank"]), int(req["step"]))
        if op == "persisted":
            return state.persisted(slot_key(req["rank"]))
        if op == "end_job":
            state.cleanup()
            return {"ended": True}
        raise ValueError(f"unknown op {op!r}")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(job_id: str, token: str, socket_path: str, persist: PersistConfig | None = None) -> None:
    """Run the manager in this process until ``end_job`` or SIGTERM; prints ``ready`` when listening.
    With ``persist``, snapshots are also flushed to disk in the background."""
    state = _ManagerState(job_id, token, persist)
    atexit.register(state.cleanup)
    old_umask = os.umask(0o177)
    try:
        server = _Server(socket_path, _Handler)
    finally:
        os.umask(old_umask)
    server.state = state  # type: ignore[attr-defined]

    def _stop(signum, frame):
        state.cleanup()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        state.cleanup()
        try:
            os.unlink(socket_path)
            os.rmdir(os.path.dirname(socket_path))
        except OSError:
            pass


class ManagerClient:
    """A trainer's connection to its node's manager (one socket, one request at a time)."""

    def __init__(self, job_id: str, token: str, socket_path: str, timeout: float = 30.0):
        self.job_id, self.token = job_id, token
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(socket_path)
        self._file = self._sock.makefile("rwb")
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: dict | None = None) -> "ManagerClient | None":
        """Connect using OSMOS_FT_JOB_ID / OSMOS_FT_SOCKET / OSMOS_FT_TOKEN; None if unset."""
        env = os.environ if env is None else env
        if not all(k in env for k in (ENV_JOB, ENV_SOCKET, ENV_TOKEN)):
            return None
        return cls(env[ENV_JOB], env[ENV_TOKEN], env[ENV_SOCKET])

    def request(self, op: str, **kwargs) -> dict:
        msg = {"op": op, "job_id": self.job_id, "token": self.token, **kwargs}
        with self._lock:
            self._file.write((json.dumps(msg) + "\n").encode())
            self._file.flush()
            line = self._file.readline()
        if not line:
            raise ConnectionError("snapshot manager closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise PermissionError(reply["error"]) if reply["error"].startswith("refused") else RuntimeError(
                reply["error"]
            )
        return reply

    def close(self) -> None:
        try:
            self._file.close()
            self._sock.close()
        except OSError:
            pass


class ManagerHandle:
    """A started manager process: ``env`` holds the variables a trainer needs to attach."""

    def __init__(self, proc: subprocess.Popen, job_id: str, token: str, socket_path: str,
                 persist_dir: str | None = None):
        self.proc, self.job_id, self.token, self.socket_path = proc, job_id, token, socket_path
        self.env = {ENV_JOB: job_id, ENV_SOCKET: socket_path, ENV_TOKEN: token}
        if persist_dir is not None:
            self.env[ENV_PERSIST] = persist_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self) -> ManagerClient:
        return ManagerClient(self.job_id, self.token, self.socket_path)

    def end_job(self, timeout: float = 10.0) -> None:
        """Tell the manager the job ended: it removes every segment and exits."""
        if self.proc.poll() is None:
            try:
                c = self.client()
                c.request("end_job")
                c.close()
            except (OSError, ConnectionError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()


def start_manager(job_id: str, token: str | None = None, timeout: float = 30.0, persist_dir: str | None = None,
                  persist_every: int = 1, persist_keep: int = 2, persist_fsync: bool = True) -> ManagerHandle:
    """Start a manager process for ``job_id`` (in its own session, so it survives its trainers).

    The token is passed through the environment, never on the command line. Returns once the
    manager listens; ``handle.env`` is what trainers need (merge it into their environment; it
    names ``persist_dir`` too, where ``restore_or_init`` falls back to).
    With ``persist_dir``, every ``persist_every``-th snapshot of each rank is flushed there in the
    background and the newest ``persist_keep`` are kept (``osmos.ft.persist.PersistConfig``).
    """
    persist_args = []
    if persist_dir is not None:
        persist_dir = os.path.abspath(persist_dir)
        PersistConfig(persist_dir, persist_every, persist_keep, persist_fsync)  # validate here, not in the child
        persist_args = ["--persist-dir", persist_dir, "--persist-every", str(persist_every),
                        "--persist-keep", str(persist_keep)] + ([] if persist_fsync else ["--no-fsync"])
    token = token or secrets.token_hex(16)
    sock_dir = tempfile.mkdtemp(prefix="osmos_ft_ctl_")  # mode 0700
    socket_path = os.path.join(sock_dir, "manager.sock")
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **{ENV_TOKEN: token, "PYTHONPATH": path})
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from osmos.ft.manager import main; sys.exit(main(sys.argv[1:]))",
         "--job-id", job_id, "--socket", socket_path, *persist_args],
        env=env, stdout=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != b"ready" or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"snapshot manager failed to start (said {line!r})")
    return ManagerHandle(proc, job_id, token, socket_path, persist_dir)


def add_persist_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--persist-dir", help="flush snapshots to this directory in the background (safetensors + JSON)")
    p.add_argument("--persist-every", type=int, default=1, help="flush every N-th snapshot of each rank")
    p.add_argument("--persist-keep", type=int, default=2, help="persistent checkpoints kept per rank")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync persistent checkpoints")


def persist_config(args: argparse.Namespace) -> PersistConfig | None:
    if args.persist_dir is None:
        return None
    return PersistConfig(os.path.abspath(args.persist_dir), args.persist_every, args.persist_keep, not args.no_fsync)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="osmos snapshot manager (token from $OSMOS_FT_TOKEN)")
    p.add_argument("--job-id", required=True)
    p.add_argument("--socket", required=True)
    add_persist_arguments(p)
    args = p.parse_args(argv)
    serve(args.job_id, os.environ[ENV_TOKEN], args.socket, persist_config(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
