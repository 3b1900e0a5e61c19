"""Run the geoseg command line as a child process; stderr lines -> Processing feedback.

geoseg writes one progress line every few seconds or 10 % when stderr is not a terminal
(``predict: 40/120 windows, 12 windows/s, eta 7s``, see geoseg/progress.py); those become
``feedback.setProgress``, ``geoseg: error: ...`` lines become ``feedback.reportError``, ``WARNING``
log lines warnings, and any other line goes to the log as is; on failure the last stderr line (e.g.
a traceback's exception) is reported too. Cancelling in QGIS terminates the child (SIGTERM, then kill).
"""

import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

SETTING = "GEOSEG_EXECUTABLE"
ENV_VAR = "GEOSEG_EXECUTABLE"
PROGRESS = re.compile(r"^(?P<stage>[\w.\- ]+): (?P<n>\d+(?:\.\d+)?)/(?P<total>\d+(?:\.\d+)?) ")
WARNING = re.compile(r"^WARNING\b")
ERROR = re.compile(r"^geoseg: (error|interrupted|terminated)\b|^(Error|Usage):|Traceback \(most recent call last\)")
# Environment variables of QGIS's embedded Python that must not leak into geoseg's own interpreter.
_PY_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")


def default_executable():
    """``$GEOSEG_EXECUTABLE``, else ``geoseg`` on PATH, else this repository's ``.venv/bin/geoseg``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    found = shutil.which("geoseg")
    if found:
        return found
    repo = Path(__file__).resolve().parents[2]  # qgis_plugin/geoseg_processing/runner.py -> repository root
    for cand in (repo / ".venv" / "bin" / "geoseg", repo / ".venv" / "Scripts" / "geoseg.exe"):
        if cand.exists():
            return str(cand)
    return "geoseg"


def child_env():
    """The environment for geoseg: QGIS's minus its Python settings; line progress, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in _PY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream, tag, q):
    for line in iter(stream.readline, ""):
        q.put((tag, line.rstrip("\r\n")))
    q.put((tag, None))


def run_geoseg(executable, args, feedback, stdout_to_log=True):
    """Run ``executable args...``; return ``(returncode, stdout_text, error_lines)``.

    Progress lines set ``feedback`` progress (0-100, per stage); the caller raises on a non-zero code.
    """
    cmd = [executable, *[str(a) for a in args]]
    feedback.pushCommandInfo(" ".join(_quote(c) for c in cmd))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, bufsize=1, env=child_env())  # fmt: skip
    except OSError as e:
        msg = f"cannot start geoseg ({executable}): {e.strerror or e}; set the path in Processing options > geoseg"
        feedback.reportError(msg, True)
        return 127, "", [msg]
    q = queue.Queue()
    threads = [threading.Thread(target=_pump, args=(proc.stdout, "out", q), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", q), daemon=True)]  # fmt: skip
    for t in threads:
        t.start()
    out, errors, open_streams, cancelled, stage, last = [], [], 2, False, None, None
    while open_streams:
        if feedback.isCanceled() and not cancelled:
            cancelled = True
            feedback.pushInfo("cancelled: stopping geoseg")
            proc.terminate()
        try:
            tag, line = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        if tag == "out":
            out.append(line)
            if stdout_to_log:
                feedback.pushConsoleInfo(line)
            continue
        m = PROGRESS.match(line)
        if m and float(m["total"]) > 0:
            if m["stage"] != stage:
                stage = m["stage"]
                feedback.setProgressText(stage)
            feedback.setProgress(min(100.0, 100.0 * float(m["n"]) / float(m["total"])))
            feedback.pushInfo(line)
        elif ERROR.search(line):
            errors.append(line)
            feedback.reportError(line, False)
        elif WARNING.match(line) and hasattr(feedback, "pushWarning"):
            feedback.pushWarning(line)
        else:
            feedback.pushConsoleInfo(line)
        if line.strip() and not m:
            last = line
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    for t in threads:
        t.join(timeout=5)
    proc.stdout.close()
    proc.stderr.close()
    if rc != 0 and last and last not in errors:  # e.g. the last line of a traceback: the actual exception
        errors.append(last)
        feedback.reportError(last, False)
    return rc, "\n".join(out), errors


def _quote(s):
    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"
