#!/usr/bin/env python3
"""The command a packaged systemd unit runs, computed the way systemd does,
so the lab (and the tests' deciders) start what ships rather than the build
tree. A subset of systemd.exec(5)/systemd.service(5), enough for Vigil's two
units; anything outside it is refused, never guessed:

  ExecStart=        exactly one, no prefix (`-@:+!`); words split on
                    whitespace with "..." / '...' quoting; /usr/bin/X and
                    every other absolute path go through --map;
  Environment=      KEY=VALUE words, in order;
  EnvironmentFile=  in order, after Environment= (their values win, as in
                    systemd); `-` prefix: a missing file is no error; lines
                    KEY=VALUE, `#`/`;` comments, optional quotes;
  LoadCredential=   ID:PATH: PATH (mapped) copied to CREDS/ID, %d = CREDS;
  specifiers        %H (host name, given), %n (unit name), %d, %%.

    sdunit.py command --unit FILE [--map FROM=TO]... [--host NAME]
                      [--creds DIR]            -> JSON {argv, env, ...}

--map FROM=TO rewrites a path that equals FROM or starts with FROM (FROM
ending in `/`); the longest FROM wins. The env holds only what the unit
sets: the caller adds the base environment (systemd's PATH, LANG, ...).
"""

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

MAX_UNIT_BYTES = 256 * 1024
MAX_ENV_FILE_BYTES = 256 * 1024


class UnitError(Exception):
    pass


def read_bounded(path, limit, what):
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UnitError(f"cannot read {what} {path}: {e}") from e
    if len(data) > limit:
        raise UnitError(f"{what} {path} is larger than {limit} bytes")
    return data.decode("utf-8", errors="strict")


def parse_unit(text):
    """{section: [(key, value), ...]} in file order; continuation lines
    (trailing backslash) joined with a space, as systemd does."""
    sections, current, pending = {}, None, ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        if current is None or "=" not in line:
            raise UnitError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def expand(value, spec):
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(value):
            raise UnitError(f"a lone % at the end of {value!r}")
        k = value[i + 1]
        if k == "%":
            out.append("%")
        elif k in spec and spec[k] is not None:
            out.append(spec[k])
        else:
            raise UnitError(f"specifier %{k} in {value!r} is not supported here "
                            f"(known: {', '.join('%' + s for s in sorted(spec) if spec[s])})")
        i += 2
    return "".join(out)


def map_path(path, maps):
    """Longest matching FROM wins; a FROM without a trailing / matches only
    the whole path."""
    best = None
    for src, dst in maps:
        hit = path == src if not src.endswith("/") else path.startswith(src)
        if hit and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    if best is None:
        return path
    src, dst = best
    return dst if path == src else dst + path[len(src):]


def map_word(word, maps):
    """An argument that is an absolute path, or --opt=/path, is mapped."""
    if word.startswith("/"):
        return map_path(word, maps)
    if word.startswith("-") and "=/" in word:
        opt, _, path = word.partition("=")
        return f"{opt}={map_path(path, maps)}"
    return word


def env_file_assignments(text, origin):
    """systemd's EnvironmentFile= format, the subset the package ships:
    KEY=VALUE per line, comments, whole-value quotes."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise UnitError(f"{origin}:{n}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append((key, value))
    return out


def command(unit_path, maps=(), host=None, creds=None):
    unit_path = Path(unit_path)
    sections = parse_unit(read_bounded(unit_path, MAX_UNIT_BYTES, "unit"))
    service = sections.get("Service")
    if service is None:
        raise UnitError(f"{unit_path} has no [Service] section")
    spec = {"H": host, "n": unit_path.name, "d": str(creds) if creds else None}
    env, env_files, exec_start, loaded = {}, [], [], []
    for key, value in service:
        if key == "Environment":
            for word in shlex.split(value):
                k, eq, v = word.partition("=")
                if not eq:
                    raise UnitError(f"{unit_path}: Environment={value!r}: not KEY=VALUE")
                env[k] = expand(v, spec)
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            env_files.append((expand(value.lstrip("-"), spec), optional))
        elif key == "ExecStart":
            exec_start.append(value)
        elif key == "LoadCredential":
            cid, colon, path = value.partition(":")
            if not colon or "/" in cid:
                raise UnitError(f"{unit_path}: LoadCredential={value!r}: not ID:PATH")
            if creds is None:
                raise UnitError(f"{unit_path} loads credential {cid}: give --creds DIR")
            src = map_path(expand(path, spec), maps)
            Path(creds).mkdir(parents=True, exist_ok=True)
            os.chmod(creds, 0o700)
            dst = Path(creds) / cid
            try:
                shutil.copyfile(src, dst)
            except OSError as e:
                raise UnitError(f"{unit_path}: LoadCredential {cid} from {src}: {e}") from e
            os.chmod(dst, 0o400)
            loaded.append({"id": cid, "from": src, "to": str(dst)})
    # Every EnvironmentFile= after every Environment=: systemd gives the
    # files precedence whatever their order in the unit.
    for path, optional in env_files:
        real = map_path(path, maps)
        if optional and not Path(real).exists():
            continue
        for k, v in env_file_assignments(read_bounded(real, MAX_ENV_FILE_BYTES,
                                                      "environment file"), real):
            env[k] = v
    if len(exec_start) != 1:
        raise UnitError(f"{unit_path}: {len(exec_start)} ExecStart= lines; exactly one "
                        "is supported")
    line = exec_start[0]
    if line[:1] in "-@:+!":
        raise UnitError(f"{unit_path}: ExecStart={line!r}: prefixes are not supported")
    words = [map_word(expand(w, spec), maps) for w in shlex.split(line)]
    if not words or not words[0].startswith("/"):
        raise UnitError(f"{unit_path}: ExecStart={line!r}: no absolute executable")
    return {"unit": str(unit_path), "exec_start": line, "argv": words, "env": env,
            "environment_files": [map_path(p, maps) for p, _ in env_files],
            "credentials": loaded}


def parse_maps(items):
    maps = []
    for item in items or []:
        src, eq, dst = item.partition("=")
        if not eq or not src.startswith("/"):
            raise UnitError(f"--map {item!r}: want /FROM=TO")
        maps.append((src, dst))
    return maps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("command", help="the unit's command line and environment, as JSON")
    c.add_argument("--unit", required=True)
    c.add_argument("--map", action="append", default=[], metavar="FROM=TO")
    c.add_argument("--host")
    c.add_argument("--creds")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(command(args.unit, parse_maps(args.map), args.host, args.creds)))
    except UnitError as e:
        print(f"sdunit: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
