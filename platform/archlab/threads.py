"""How many intra-op threads one archlab process uses: its share of the machine's cores.

PyTorch's default is one thread per core, each spinning while it waits (GNU OpenMP's active wait policy). That is
right for one process on an idle machine and badly wrong on a shared one: on the 2-core development machine with two
other CPU-bound processes running, a ResNet-20 step on digits took 2269 ms with the default threads against 60 ms
with one (benchmarks/perf.py measures it again). So archlab chooses, once per process and before torch is imported:

    ARCHLAB_THREADS=N       N threads (sweep workers get cores // workers this way); N >= 1
    OMP_NUM_THREADS=N       respected when ARCHLAB_THREADS is unset
    neither                 the cores that other processes leave free (the cores this process may run on, less the
                            processes running now), at least one
OMP_WAIT_POLICY is set to PASSIVE, unless it is set already, when the process gets fewer threads than the cores (the
machine is shared): idle threads sleep instead of spinning against other processes' threads. On an idle machine,
where archlab takes every core, OpenMP's own default (spin a little, then sleep) is kept: measured on the 2-core
machine (`benchmarks/perf.py --sections threads`), a ResNet-20 step on digits took 10.1 ms with 2 threads and the
default policy, 13.7 ms with one thread and 30.9 ms with 2 passive threads, whose every parallel region waits for a
sleeping thread to wake.
"""

import os
import sys
import time

VARIABLE = "ARCHLAB_THREADS"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def running_now(samples: int = 9, interval: float = 0.002) -> int:
    """The runnable processes other than this one (/proc/stat's procs_running, the median of a few samples); 0 where it
    cannot be read."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next(line for line in f if line.startswith("procs_running"))
        except (OSError, StopIteration):
            break
        counts.append(int(line.split()[1]) - 1)  # this process is running as it reads
        time.sleep(interval)
    return sorted(counts)[len(counts) // 2] if counts else 0


def default_threads() -> int:
    """The cores the other processes leave free, at least one."""
    return max(1, cores() - busy_cores())


def busy_cores() -> int:
    """The cores other processes keep busy: the processes running now. Not the load average: it trails by a minute,
    so right after any job (the previous run, a benchmark's own last probe) an idle machine looked busy, and archlab
    took one thread where two were 1.3x faster (`benchmarks/perf.py --sections threads`)."""
    return running_now()


def parse(value: str, name: str = VARIABLE) -> int:
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{name} must be a whole number of threads >= 1; got {value!r}")
    return threads


def configure(environ: dict[str, str] | None = None) -> int:
    """Choose this process's intra-op threads and wait policy, and return the thread count.

    Call it before torch is imported: OpenMP reads OMP_NUM_THREADS and OMP_WAIT_POLICY once, when torch loads it.
    Called later, it still sets torch's intra-op threads (torch.set_num_threads), but not the wait policy.
    """
    environ = os.environ if environ is None else environ
    if environ.get(VARIABLE):
        threads = parse(environ[VARIABLE])
    elif environ.get("OMP_NUM_THREADS"):
        threads = parse(environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS")
    else:
        threads = default_threads()
    torch = sys.modules.get("torch")
    if torch is None:
        # Read by OpenMP and MKL when torch loads them; inherited by this process's children (DataLoader workers).
        environ["OMP_NUM_THREADS"] = environ["MKL_NUM_THREADS"] = str(threads)
        if threads < cores():
            environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        torch.set_num_threads(threads)
    return threads
