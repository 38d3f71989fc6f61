#!/usr/bin/env python3
"""The floor under any restore: write a data directory's bytes durably, with nothing to fetch, decode or verify.

Usage: write_floor.py SIZES DEST WORKERS MODE

SIZES is a list of "<bytes> <relative path>" lines (the restored data directory's regular files, `find -printf
'%s %P\\n'`); DEST an empty directory. WORKERS threads take the files largest first and write each from one 16 MiB
buffer of random bytes (no file system can compress it; a restore leaves all-zero blocks out, and a pgbench data
directory has none), start its writeback as they go (sync_file_range, as pitr-restore does), fsync it, and at the
end fsync every directory. MODE:
  buffered  through the page cache (what pitr-restore and pgBackRest do)
  direct    O_DIRECT for the 4 KiB-aligned part of each file (the disk's own rate, no page cache), the tail buffered
Prints one line: seconds (from the first directory made to the last fsync), MiB, files. Python's threads release
the GIL in pwrite and fsync, so the WORKERS write at once.
"""
import ctypes
import mmap
import os
import sys
import threading
import time

SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
ALIGN = 4096
CHUNK = 16 << 20

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def main():
    sizes, dest, workers, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode not in ("buffered", "direct"):
        sys.exit(f"write_floor.py: MODE must be buffered or direct, not {mode!r}")
    files = []
    with open(sizes) as f:
        for line in f:
            size, rel = line.rstrip("\n").split(" ", 1)
            files.append((int(size), rel))
    files.sort(reverse=True)
    # one page-aligned buffer per worker (as O_DIRECT needs), filled before the clock starts
    pattern = os.urandom(1 << 20) * (CHUNK >> 20)
    buffers = []
    for _ in range(workers):
        buf = mmap.mmap(-1, CHUNK)
        buf.write(pattern)
        buffers.append(memoryview(buf))
    t0 = time.monotonic()
    dirs = sorted({os.path.dirname(rel) for _, rel in files})
    for d in dirs:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    lock = threading.Lock()
    todo = iter(files)
    errors = []

    def worker(view):
        try:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                write_file(os.path.join(dest, item[1]), item[0], view, mode)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(b,)) for b in buffers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"write_floor.py: {errors[0]}")
    for d in dirs:
        fd = os.open(os.path.join(dest, d), os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    total = sum(s for s, _ in files)
    print(f"{time.monotonic() - t0:.2f} s, {total / 1048576:.0f} MiB in {len(files)} files, {workers} writers, {mode}")


def write_file(path, size, view, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        aligned = size - size % ALIGN if mode == "direct" else 0
        if aligned:
            dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            try:
                write_range(dfd, 0, aligned, view)
            finally:
                os.close(dfd)
        write_range(fd, aligned, size, view)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_range(fd, start, end, view):
    off = start
    while off < end:
        n = os.pwrite(fd, view[: min(CHUNK, end - off)], off)
        libc.sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE)
        off += n


if __name__ == "__main__":
    main()
