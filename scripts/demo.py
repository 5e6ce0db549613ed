#!/usr/bin/env python3
"""`make demo`: the same questions asked on the host and inside a sandbox, side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nsbox

PROBE = r"""
import json, os, socket
def writable(path):
    try:
        with open(os.path.join(path, ".nsbox-demo"), "w"):
            pass
        os.unlink(os.path.join(path, ".nsbox-demo"))
        return "yes"
    except OSError as e:
        return "no (" + os.strerror(e.errno) + ")"
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print(json.dumps({
    "user": f"uid {os.getuid()}",
    "hostname": socket.gethostname(),
    "processes visible": f"{len(pids)} (PID 1 is {open('/proc/1/comm').read().strip()})",
    "network interfaces": ", ".join(n for _, n in socket.if_nameindex()),
    "capabilities (CapEff)": status["CapEff"].strip(),
    "/ writable": writable("/"),
    "/usr writable": writable("/usr"),
    "/root and /home": "visible" if os.path.exists("/root") or os.path.exists("/home") else "absent",
    "this checkout": "visible" if os.path.exists(REPO) else "absent",
}))
"""


def main() -> int:
    repo = str(Path(__file__).resolve().parents[1])
    probe = PROBE.replace("REPO", repr(repo))
    print("== nsbox check ==")
    subprocess.run([str(Path(sys.executable).with_name("nsbox")), "check"])

    host = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout)
    with nsbox.NsSandbox() as sandbox:
        result = sandbox.run(["python3", "-c", probe], capture_output=True, check=True)
        inside = json.loads(result.stdout or b"{}")
        print("\n== the same probe, on the host and in a sandbox ==")
        print(f"{'':24} {'host':34} sandbox")
        for key, value in host.items():
            print(f"{key:24} {value:34} {inside[key]}")

        print("\n== escape attempts from inside (each should be refused) ==")
        for what, argv in (
            ("make the read-only /usr writable again", ["mount", "-o", "remount,rw", "/usr"]),
            ("a new user namespace, to be root in it", ["unshare", "-Urm", "true"]),
            ("write a file into the host's /usr", ["sh", "-c", "echo x > /usr/nsbox-demo"]),
        ):
            tried = sandbox.run(argv, capture_output=True)
            said = (tried.stderr or tried.stdout or b"").decode(errors="replace").strip().splitlines()
            verdict = "refused" if not tried.ok else "NOT REFUSED: this sandbox is not isolated"
            print(f"{what:42} {verdict} (exit {tried.exit_code}: {said[0].strip() if said else 'no message'})")

        print("\n== a run that overstays its welcome (timeout=0.5) ==")
        started = time.monotonic()
        slow = sandbox.run(["sleep", "10"], timeout=0.5)
        print(f"status={slow.status.value} exit_code={slow.exit_code} after {time.monotonic() - started:.2f} s")

        print("\n== the workspace persists between runs of a session ==")
        sandbox.run(["sh", "-c", "echo 'written by run 1' > notes.txt"])
        print((sandbox.run(["cat", "notes.txt"], capture_output=True).stdout or b"").decode().strip())

        print("\n== Python that keeps its state between calls (execute_code) ==")
        for code in ("x = 41", "print('the answer is near'); x + 1", "import os; os._exit(1)", "x"):
            got = sandbox.execute_code(code, timeout=5)
            print(f">>> {code!r:40} -> {got.status.value:9} value={got.value} state_lost={got.state_lost}")
            if got.error:
                print(f"    {got.error}")

        print("\n== the file API never follows a symlink the sandbox planted ==")
        sandbox.run(["ln", "-s", "/etc", "/workspace/etc-link"], check=True)
        try:
            sandbox.read_file("etc-link/passwd")
        except nsbox.SecurityError as exc:
            print(f"SecurityError: {exc}")

    print("\n== nsbox exec, the command line ==")
    cmd = [str(Path(sys.executable).with_name("nsbox")), "exec", "--hostname", "demo", "--", "sh", "-c",
           "echo \"hello from $(hostname), I am $(id -un)\"; exit 3"]  # fmt: skip
    print("$ nsbox exec --hostname demo -- sh -c '...; exit 3'")
    code = subprocess.run(cmd).returncode
    print(f"exit code: {code}")
    print(f"\nsandboxes left running: {sum(1 for p in os.listdir('/proc') if p.isdigit() and _is_sandbox(p))}")
    return 0


def _is_sandbox(pid: str) -> bool:
    from nsbox._userns import HOST_ID_BASE, ID_RANGE, RANGE_SLOTS

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    return HOST_ID_BASE <= uid < HOST_ID_BASE + RANGE_SLOTS * ID_RANGE


if __name__ == "__main__":
    sys.exit(main())
