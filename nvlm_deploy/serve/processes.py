"""The processes of a running tritonserver, read from /proc (Linux): its Python stubs, whether a
process is alive, its process group, and the shared memory dead stubs leave in /dev/shm.

Why /proc: the Python backend gives no API to see its stubs, and a SIGKILLed stub is only visible as
a process that is gone (or a zombie until tritonserver reaps it).
"""

from __future__ import annotations

from pathlib import Path

# /dev/shm region names of the Python backend: "<shm-region-prefix-name><uuid>" (one per stub)
SHM_DIR = Path("/dev/shm")
STUB_BINARY = "triton_python_backend_stub"


def _process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state letter, process group) of every process, from /proc (Linux)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        table[int(entry.name)] = (int(fields[1]), fields[0], int(fields[2]))
    return table


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def python_stubs(root_pid: int) -> dict[int, str]:
    """pid -> model name of every live Python-backend stub under `root_pid` (children and deeper).

    The stub's first argument is the model's `<repo>/<model>/<version>/model.py`."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stubs, todo = {}, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        argv = _cmdline(pid)
        if table[pid][1] != "Z" and argv and argv[0].endswith(STUB_BINARY) and len(argv) > 1:
            stubs[pid] = Path(argv[1]).parent.parent.name
    return stubs


def alive(pid: int) -> bool:
    """True for a running process; False when gone or a zombie (dead, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies."""
    return [pid for pid, (_, state, group) in _process_table().items() if group == pgid and state != "Z"]


def remove_shm_regions(prefixes: list[str]) -> list[str]:
    """Remove /dev/shm regions named with one of `prefixes` (call only once their server is gone)."""
    removed = []
    for prefix in prefixes:
        for path in SHM_DIR.glob(f"{prefix}*"):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                pass
    return removed
