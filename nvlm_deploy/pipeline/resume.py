"""What an interrupted run leaves: `.<name>.tmp-<pid>` next to the outputs (artifacts.atomic_output_dir,
manifest.write_manifest), never a finished-looking stage. The next run removes those of processes
that are gone and redoes their stage; those of a live process (a build running now) stay.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_interrupted(directory: Path) -> list[str]:
    """Remove the temporary outputs of dead processes in `directory`; returns their names."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        match = _TEMP.match(path.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed
