"""The snapshot manager: a per-node process that owns the shared-memory snapshot slots.

The manager outlives its trainers, so a trainer killed by a software fault loses nothing: the
restarted trainer reattaches (job id, socket path and token come from the environment, which
torchrun passes to restarted workers) and restores the newest published snapshot.

Layout and security
- Slots are files in /dev/shm named ``osmos_ft_<16 random hex>_r<rank>_s<slot>``, created with
  ``O_EXCL`` and mode 0600 by the manager. Two slots per rank.
- The control socket lives in a fresh 0700 directory (``tempfile.mkdtemp``); every request carries
  the job id and a 128-bit random token (compared in constant time), and the peer's uid
  (SO_PEERCRED) must be the manager's own.
- Publication is a single message handled under a lock: the trainer first fills the slot the
  manager handed it (never the published one), computes the per-shard checksums, then sends
  ``publish`` with step, layout and checksums. A snapshot whose writer dies before that message is
  never visible, and the previously published slot is never handed out for writing.
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

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "osmos_ft_"
ENV_JOB = "OSMOS_FT_JOB_ID"
ENV_SOCKET = "OSMOS_FT_SOCKET"
ENV_TOKEN = "OSMOS_FT_TOKEN"


@dataclass
class _RankSlots:
    paths: list[str]
    sizes: list[int] = field(default_factory=lambda: [0, 0])
    published: dict | None = None  # {"slot", "step", "layout", ...} of the last complete snapshot
    complete: list = field(default_factory=lambda: [None, None])  # record held by each slot, if whole
    writing: int | None = None


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
    def __init__(self, job_id: str, token: str):
        self.job_id = job_id
        self.token = token
        self.tag = secrets.token_hex(8)
        self.ranks: dict[str, _RankSlots] = {}
        self.lock = threading.Lock()

    def _slots(self, rank: str) -> _RankSlots:
        if rank not in self.ranks:
            base = os.path.join(SHM_DIR, f"{SEGMENT_PREFIX}{self.tag}_r{rank}")
            self.ranks[rank] = _RankSlots(paths=[f"{base}_s0", f"{base}_s1"])
        return self.ranks[rank]

    def begin(self, rank: str, nbytes: int) -> dict:
        with self.lock:
            r = self._slots(rank)
            slot = 0 if r.published is None else 1 - r.published["slot"]
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
            return {"published": None if r.published is None else r.published["step"]}

    def cleanup(self) -> None:
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
        if op == "end_job":
            state.cleanup()
            return {"ended": True}
        raise ValueError(f"unknown op {op!r}")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(job_id: str, token: str, socket_path: str) -> None:
    """Run the manager in this process until ``end_job`` or SIGTERM; prints ``ready`` when listening."""
    state = _ManagerState(job_id, token)
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

    def __init__(self, proc: subprocess.Popen, job_id: str, token: str, socket_path: str):
        self.proc, self.job_id, self.token, self.socket_path = proc, job_id, token, socket_path
        self.env = {ENV_JOB: job_id, ENV_SOCKET: socket_path, ENV_TOKEN: token}

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


def start_manager(job_id: str, token: str | None = None, timeout: float = 30.0) -> ManagerHandle:
    """Start a manager process for ``job_id`` (in its own session, so it survives its trainers).

    The token is passed through the environment, never on the command line. Returns once the
    manager listens; ``handle.env`` is what trainers need (merge it into their environment).
    """
    token = token or secrets.token_hex(16)
    sock_dir = tempfile.mkdtemp(prefix="osmos_ft_ctl_")  # mode 0700
    socket_path = os.path.join(sock_dir, "manager.sock")
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **{ENV_TOKEN: token, "PYTHONPATH": path})
    proc = subprocess.Popen(
        [sys.executable, "-m", "osmos.ft.manager", "--job-id", job_id, "--socket", socket_path],
        env=env, stdout=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != b"ready" or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"snapshot manager failed to start (said {line!r})")
    return ManagerHandle(proc, job_id, token, socket_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="osmos snapshot manager (token from $OSMOS_FT_TOKEN)")
    p.add_argument("--job-id", required=True)
    p.add_argument("--socket", required=True)
    args = p.parse_args(argv)
    serve(args.job_id, os.environ[ENV_TOKEN], args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
