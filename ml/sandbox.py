"""Untrusted decoding in child processes with a memory and a time limit.

Pillow, pydicom and the codecs behind it (openjpeg, CharLS, libjpeg) parse whatever a user
uploads. A file can make them allocate gigabytes, loop for minutes or crash the process. So
they never run in the caller's process: each `Sandbox.inspect` sends the file's bytes to a
child process (a fresh interpreter, never a fork of the caller with its threads, models and
connections) whose address space is capped with RLIMIT_AS; the caller waits at most
`time_limit_s`, then kills the child. A file that exhausts the memory,
runs over time or crashes the decoder is refused alone, with the reason; the child is replaced.

Each child is a fresh interpreter that imports the decoders once, then decodes one file after
another. One decode per file: the child returns what serving needs from it (format, stored
size, the allowed DICOM fields, the model-ready pixels, and a working copy when the original
is costly to decode again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


READY = b"ready"
STARTUP_TIMEOUT_S = 120.0


class DecodeRefused(Exception):
    """The file cannot be decoded safely; the message says why (user-facing)."""


@dataclass(frozen=True)
class Inspection:
    """One decode of one file, as the caller needs it."""

    format: str
    height: int  # of the stored image
    width: int
    metadata: dict[str, str] = field(default_factory=dict)  # ml.decode's allow-list only
    # Model-ready float32 grayscale in [0, 1]: the working-copy pixels when the original is
    # larger than a working copy, else the image itself.
    pixels: np.ndarray | None = None
    working_copy: bytes = b""  # JPEG of those pixels when the original is costly to decode


def inspect_bytes(data: bytes, *, working_copies: bool = True,
                  full_pixels: bool = False) -> Inspection:
    """Decode once (in the current process): what `Sandbox.inspect` runs in its child.

    `full_pixels`: the model needs more than a working copy's resolution, so the pixels come
    back at full size (the working copy is still made).
    """
    from ml.decode import (
        WORKING_COPY_SIDE,
        decode_image,
        needs_working_copy,
        working_copy_pixels,
    )

    reduce = working_copies and not full_pixels
    decoded = decode_image(data, reduce_to=WORKING_COPY_SIDE if reduce else None)
    height, width = decoded.shape
    pixels = decoded.pixels
    working = b""
    if working_copies and needs_working_copy(decoded.format, height, width):
        gray = working_copy_pixels(pixels)
        working = _jpeg(gray)
        if not full_pixels:
            pixels = gray.astype(np.float32) / 255.0
    return Inspection(format=decoded.format, height=int(height), width=int(width),
                      metadata=dict(decoded.metadata), pixels=np.ascontiguousarray(pixels),
                      working_copy=working)


def _jpeg(gray: np.ndarray) -> bytes:
    import io

    from PIL import Image

    from ml.decode import WORKING_COPY_QUALITY

    out = io.BytesIO()
    Image.fromarray(gray, mode="L").save(out, format="JPEG", quality=WORKING_COPY_QUALITY)
    return out.getvalue()


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(conn: Connection, memory_bytes: int, working_copies: bool,
                full_pixels: bool) -> None:
    """The decoding child: one file at a time until the parent closes the pipe."""
    # What is mapped already (the interpreter, the decoders' libraries) plus the budget.
    with contextlib.suppress(OSError, ValueError):
        limit = _vm_size_bytes() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Not ours to handle: the parent stops us by closing the pipe or with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ml.decode import ImageDecodeError

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        too_big = ("decoding this image needs more memory than the limit of "
                   f"{memory_bytes // 2**20} MB")
        try:
            _send(conn, inspect_bytes(data, working_copies=working_copies,
                                      full_pixels=full_pixels))
            continue
        except ImageDecodeError as exc:
            reason = str(exc)
        except MemoryError:
            reason = too_big
        except Exception as exc:  # a decoder bug refuses one file, never the batch
            reason = f"could not read the image ({exc.__class__.__name__})"
        del data
        conn.send_bytes(json.dumps({"refused": reason}).encode())


# The reply is JSON plus raw buffers, never pickle: a decoder compromised by a crafted file
# must not be able to run code in the parent by what it sends back.
def _send(conn: Connection, item: Inspection) -> None:
    pixels = np.ascontiguousarray(item.pixels, dtype=np.float32)
    conn.send_bytes(json.dumps({
        "format": item.format, "height": item.height, "width": item.width,
        "metadata": item.metadata, "shape": list(pixels.shape),
    }).encode())
    conn.send_bytes(pixels.tobytes())
    conn.send_bytes(item.working_copy)


def _receive(conn: Connection) -> Inspection:
    head = json.loads(conn.recv_bytes())
    if "refused" in head:
        raise DecodeRefused(str(head["refused"]))
    rows, cols = (int(v) for v in head["shape"])
    # A writable array (torch warns about read-only ones); the copy is in the receive itself.
    buffer = bytearray(conn.recv_bytes())
    pixels = np.frombuffer(buffer, dtype=np.float32).reshape(rows, cols)
    metadata = {str(k): str(v) for k, v in dict(head["metadata"]).items()}
    return Inspection(format=str(head["format"]), height=int(head["height"]),
                      width=int(head["width"]), metadata=metadata, pixels=pixels,
                      working_copy=conn.recv_bytes())


# A child inherits the scheduling policy of the thread that starts it: a worker's I/O threads
# may run at SCHED_IDLE, and a child at idle priority on a busy machine never got the CPU to
# even start. Decoding is the work itself: back to the normal policy, before anything else.
_LAUNCH = (
    "import os, sys\n"
    "try:\n"
    "    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\n"
    "except (AttributeError, OSError):\n"
    "    pass\n"
    "from ml.sandbox import main\n"
    "main(sys.argv[1:])\n"
)


class _Child:
    """One decoding child: a fresh interpreter (`ml.sandbox.main`), not a fork.

    Not a fork of the caller, which may hold models, threads, database connections or a
    Celery pool's state; and a plain subprocess works from a daemonic Celery pool process,
    where multiprocessing refuses to start children. It talks over a socket pair.
    """

    def __init__(self, memory_bytes: int, working_copies: bool, full_pixels: bool) -> None:
        mine, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, str(theirs.fileno()), str(memory_bytes),
                 str(int(working_copies)), str(int(full_pixels))],
                pass_fds=[theirs.fileno()], cwd=root, env=env, stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        # The time limit is for decoding, not for the interpreter's start: wait for it here.
        if not self.conn.poll(STARTUP_TIMEOUT_S) or self.conn.recv_bytes() != READY:
            self.stop()
            raise RuntimeError("the decoding child process did not start")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()


class Sandbox:
    """A few decoding children shared by the threads of one process (thread-safe)."""

    def __init__(self, *, processes: int, memory_bytes: int, time_limit_s: float,
                 working_copies: bool = True, full_pixels: bool = False) -> None:
        self.processes = max(1, processes)
        self.full_pixels = full_pixels
        self.memory_bytes = memory_bytes
        self.time_limit_s = time_limit_s
        self.working_copies = working_copies
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    def _spawn(self) -> _Child:
        return _Child(self.memory_bytes, self.working_copies, self.full_pixels)

    def _take(self) -> _Child:
        with self._lock:
            if self._closed:
                raise RuntimeError("the decoding sandbox is closed")
            if self._idle.empty() and self._started < self.processes:
                self._started += 1
                try:
                    return self._spawn()
                except BaseException:
                    self._started -= 1
                    raise
        return self._idle.get()

    def _give_back(self, child: _Child | None) -> None:
        if child is None:
            with self._lock:
                self._started -= 1
            return
        self._idle.put(child)

    def inspect(self, data: bytes) -> Inspection:
        """Decode `data` in a child; DecodeRefused says why a file cannot be used."""
        child: _Child | None = self._take()
        try:
            assert child is not None
            try:
                try:
                    child.conn.send_bytes(data)
                except OSError:  # the idle child died meanwhile: not this file's doing
                    child.stop()
                    child = self._spawn()
                    child.conn.send_bytes(data)
                ready = child.conn.poll(self.time_limit_s)
                if not ready:
                    child.stop()
                    child = None
                    raise DecodeRefused(f"decoding this image took longer than the limit of "
                                        f"{self.time_limit_s:g} s")
                return _receive(child.conn)
            except (EOFError, OSError) as exc:
                code = None
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.process.wait(timeout=2)  # dying: let it finish, to see how
                    child.stop()
                    code = child.exitcode
                child = None
                if code is not None and code < 0:
                    raise DecodeRefused(f"the decoder crashed on this file (signal "
                                        f"{-code})") from exc
                raise DecodeRefused("the decoder stopped on this file") from exc
            except (ValueError, KeyError, TypeError) as exc:  # a reply that makes no sense
                child.stop()
                child = None
                raise DecodeRefused("the decoder answered nonsense for this file") from exc
        finally:
            self._give_back(child)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                return


_sandbox: Sandbox | None = None
_sandbox_lock = threading.Lock()


def shared_sandbox(*, processes: int, memory_bytes: int, time_limit_s: float,
                   full_pixels: bool = False) -> Sandbox:
    """This process's sandbox, created on first use (so never before a fork)."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None or _sandbox._pid != os.getpid():
            _sandbox = Sandbox(processes=processes, memory_bytes=memory_bytes,
                               time_limit_s=time_limit_s, working_copies=not full_pixels,
                               full_pixels=full_pixels)
        return _sandbox


__all__ = ["DecodeRefused", "Inspection", "Sandbox", "inspect_bytes", "shared_sandbox"]


def main(argv: list[str]) -> None:
    """Entry point of a decoding child: `python -m ml.sandbox FD MEMORY WORKING FULL`."""
    fd, memory_bytes, working, full = (int(a) for a in argv[:4])
    import ml.decode  # noqa: F401  (the decoders, loaded before the address-space limit)

    conn = Connection(fd)
    conn.send_bytes(READY)
    _child_main(conn, memory_bytes, bool(working), bool(full))


if __name__ == "__main__":
    main(sys.argv[1:])
