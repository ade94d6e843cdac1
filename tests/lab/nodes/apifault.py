"""`lab fault api-500 nova-api --seconds N` / `lab fault api-ok nova-api`
(CONTRACT.md "Control-plane faults"): nova-api answers 500 for N seconds.

The answer comes from nova-api itself, through a paste filter
(tests/lab/cloud/vigil_lab_apifault.py) at the head of its pipelines: reads
get 500, writes are applied and then get 500. The first use installs the
filter (module into the venv, filter into nova-api-paste.ini) and restarts
nova-api once (`cloud restart-api`, ~5 s); later uses only write the window
file the filter reads.
"""
import glob
import json
import os
import shutil
import subprocess
import time

import labcommon as lc

MAX_SECONDS = 600
FILTER = "vigil_lab_apifault"
CLOUD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "cloud")


def _flag():
    return lc.RUN / "api-500.json"


def _paste_ini():
    return lc.LAB_DIR / "etc" / "nova-api-paste.ini"


def _install():
    """Filter in place and loaded by the running nova-api; restarts it if not."""
    src = os.path.join(CLOUD_DIR, FILTER + ".py")
    sites = glob.glob(str(lc.LAB_DIR / "venv" / "lib" / "python3*" / "site-packages"))
    if not sites:
        raise lc.LabError(f"no site-packages under {lc.LAB_DIR / 'venv'}; `lab up` installs it")
    dst = os.path.join(sites[0], FILTER + ".py")
    changed = False
    if lc.read_text(dst) != lc.read_text(src):
        shutil.copyfile(src, dst)
        changed = True
    ini = _paste_ini()
    text = lc.read_text(ini)
    if not text:
        raise lc.LabError(f"{ini} missing; `lab up` writes it")
    if f"[filter:{FILTER}]" not in text:
        lines = []
        for line in text.splitlines():
            if line.startswith("keystone = cors "):
                line = line.replace("keystone = cors ", f"keystone = {FILTER} cors ", 1)
            lines.append(line)
        lines += ["", f"[filter:{FILTER}]", f"paste.filter_factory = {FILTER}:filter_factory", ""]
        ini.write_text("\n".join(lines))
        changed = True
    marker = lc.RUN / "api-500.installed"
    pid_text = lc.read_text(lc.RUN / "nova-api.pid") or ""
    if changed or lc.read_text(marker) != pid_text:
        subprocess.run([os.path.join(CLOUD_DIR, "cloud"), "restart-api"], check=True,
                       stdout=subprocess.DEVNULL, timeout=180)
        marker.write_text(lc.read_text(lc.RUN / "nova-api.pid") or "")
        return ["nova-api restarted with the api-500 filter"]
    return []


def start(service, seconds):
    if service != "nova-api":
        raise lc.LabError(f"api-500 applies to nova-api only, not {service!r}")
    if not 0 < seconds <= MAX_SECONDS:
        raise lc.LabError(f"--seconds must be in (0, {MAX_SECONDS}], not {seconds}")
    did = _install()
    until = time.time() + seconds
    lc.write_json(_flag(), {"until_unix": until})
    return did + [f"nova-api answers 500 for {seconds:g}s (reads refused, writes applied "
                  "then answered 500)"]


def stop(service):
    try:
        os.unlink(_flag())
    except FileNotFoundError:
        pass
    # The filter re-reads the file at most once a second.
    time.sleep(1.1)
    return [f"{service}: answering normally"]


def active():
    rec = lc.read_json(_flag(), None)
    return bool(rec and rec.get("until_unix", 0) > time.time())


def as_json(kind, service, lines, began_unix_ms, seconds):
    return json.dumps({"fault": kind, "node": service, "did": lines,
                       "began_unix_ms": began_unix_ms, "seconds": seconds})
