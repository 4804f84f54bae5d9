#!/usr/bin/env python3
"""fsprobe: what a small synced append costs on a filesystem, against an
overwrite of already written blocks and a write into fallocate'd space.

usage: examples/bench/fsprobe.py [DIR] [N]   (DIR defaults to ., N to 2000)

Each mode writes N records of 2,600 bytes (a 2 KB message's WAL record),
each followed by fdatasync, and prints the wall time and this process's
CPU time per write. An append changes the file's size, so on ext4 its
fdatasync also commits the journal; an overwrite inside the file does not.
"""
import os, resource, sys, time


def run(path, mode, n):
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    buf = b'x' * 2600
    if mode == 'overwrite':
        os.write(fd, b'\0' * (2600 * n)); os.fsync(fd); os.lseek(fd, 0, 0)
    if mode == 'falloc':
        os.posix_fallocate(fd, 0, 2600 * n); os.fsync(fd)
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time()
    for _ in range(n):
        os.write(fd, buf); os.fdatasync(fd)
    t = time.time() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print(f"{mode:10s} {t / n * 1e6:7.0f} us wall/op  {cpu / n * 1e6:6.0f} us cpu/op")
    os.close(fd); os.unlink(path)


if __name__ == '__main__':
    d = sys.argv[1] if len(sys.argv) > 1 else '.'
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    for m in ['append', 'overwrite', 'falloc', 'append', 'overwrite']:
        run(os.path.join(d, 'fsprobe.dat'), m, n)
