"""Runs several processes in one terminal with prefixed, coloured logs.

Used by `manage.py dev`. Ctrl-C (or SIGTERM) stops every child with SIGTERM,
waits for them, and only then returns, so state is flushed cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m", "\033[96m", "\033[93m"]
RESET = "\033[0m"


@dataclass
class Program:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Supervisor:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.lock = threading.Lock()
        self.children: list[tuple[Program, subprocess.Popen]] = []
        self.width = 8
        self.colour = out.isatty() if hasattr(out, "isatty") else False

    def say(self, name: str, line: str, index: int = 0) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.colour:
            prefix = f"{COLOURS[index % len(COLOURS)]}{prefix}{RESET}"
        with self.lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def start(self, program: Program) -> subprocess.Popen:
        self.width = max(self.width, len(program.name))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **program.env)
        process = subprocess.Popen(
            program.args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C reaches only us, and we stop children in order.
            start_new_session=True,
        )
        index = len(self.children)
        self.children.append((program, process))
        threading.Thread(target=self._pump, args=(program, process, index), daemon=True).start()
        return process

    def _pump(self, program: Program, process: subprocess.Popen, index: int) -> None:
        for raw in process.stdout:
            self.say(program.name, raw.decode(errors="replace").rstrip(), index)
        code = process.wait()
        self.say(program.name, f"exited with code {code}", index)

    def wait(self) -> int:
        """Block until Ctrl-C, SIGTERM or a child dies; then stop everything."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        failed = None
        try:
            while not stop.is_set():
                for program, process in self.children:
                    if process.poll() is not None:
                        failed = program.name
                        stop.set()
                        break
                stop.wait(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop_all()
        if failed:
            self.say("dev", f"{failed} stopped unexpectedly; stopped the rest.")
            return 1
        return 0

    def stop_all(self, timeout: float = 15) -> None:
        # SIGTERM to each leader only: Dramatiq and uvicorn stop their own children
        # gracefully; the whole group is killed only if that takes too long.
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for program, process in reversed(self.children):
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.say("dev", f"{program.name} did not stop in time; killing it")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
