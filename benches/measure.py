"""Runs a command and prints "wall_s cpu_s peak_rss_kb" for it and every process it starts.

CPU is the machine's busy time (user + nice + system + irq + softirq, from /proc/stat) during
the run, so it counts processes the command does not wait for (Flink's JVM under PyFlink); run it
on an otherwise idle machine. Peak RSS is the largest sum of resident memory over the command's
process group, sampled every 50 ms.
Usage: python3 benches/measure.py COMMAND [ARGS...]   (the command's stdout goes to stderr)
"""
import os, subprocess, sys, time

def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq

def group_rss_kb(pgid):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total

hz = os.sysconf("SC_CLK_TCK")
t0, c0 = time.monotonic(), busy_ticks()
proc = subprocess.Popen(sys.argv[1:], stdout=sys.stderr, start_new_session=True)
peak = 0
while proc.poll() is None:
    peak = max(peak, group_rss_kb(proc.pid))
    time.sleep(0.05)
wall, cpu = time.monotonic() - t0, (busy_ticks() - c0) / hz
# Whatever the command left running in its group (a JVM) is stopped.
try:
    os.killpg(proc.pid, 9)
except OSError:
    pass
if proc.returncode != 0:
    sys.exit(f"command failed with {proc.returncode}: {' '.join(sys.argv[1:])}")
print(f"{wall:.3f} {cpu:.2f} {peak}")
