"""The manager outlives trainers that vanish mid-conversation (the case fault tolerance is for)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from osmos.ft.manager import ENV_TOKEN, ManagerClient


def test_a_trainer_vanishing_mid_conversation_is_not_an_error():
    job, token = f"vanish-{os.getpid()}", secrets.token_hex(8)
    folder = tempfile.mkdtemp(prefix="osmos_ft_test_")
    path = os.path.join(folder, "m.sock")
    env = dict(os.environ, **{ENV_TOKEN: token})
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from osmos.ft.manager import main; sys.exit(main(sys.argv[1:]))",
         "--job-id", job, "--socket", path], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(3):  # ask, and die before reading the answer: the manager's next read is reset
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.sendall(json.dumps({"job_id": job, "token": token, "op": "ping"}).encode() + b"\n")
            time.sleep(0.2)
            s.close()
        client = ManagerClient(job, token, path)
        assert client.request("ping")["ok"]  # still serving
        client.request("end_job")
        client.close()
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "Error" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)
