#!/usr/bin/env python3
"""NEUTRON STAND-IN for the Vigil lab - not Neutron.

Vigil never calls Neutron.  This exists only because Nova cannot boot, show or
evacuate a server without a Neutron API behind it.  It implements the part of
the Neutron v2.0 API that Nova 2025.1 (nova/network/neutron.py, through
python-neutronclient) uses for boot, show, delete and evacuate, with the same
JSON shapes, so that Nova's server details carry the address the way a real
cloud shows it:

    "addresses": {"vlab-inst": [{"addr": "198.18.0.1xx", "version": 4,
                   "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": ...}]}

What exists: one shared flat network `vlab-inst` with one subnet
198.18.0.0/24 (gateway .1, no DHCP); ports with one fixed IP each from
198.18.0.100-.250 (first free); `binding:host_id` updates (boot binds the port
to its host; evacuation re-binds the same port, same IP, to the new host); one
`default` security group; empty floating IPs; unlimited quotas.  Extensions
advertised: binding, security-group, quotas (so Nova takes the plain port
update path for binding, not the multiple-bindings API).  Every request is
logged (method, path, status) to stdout, an unknown one answers 404 with the
path, so a Nova change that needs more shows up in logs/neutron-standin.log.

No tokens are checked (Nova sends them; the stand-in is not a security
boundary, it binds the lab's management address only).  State is kept in a
JSON file so ports survive a control-plane restart, as Nova's database does.

Usage: neutron_standin.py --listen 198.51.100.1 --port 9696 --state FILE
"""
import argparse
import ipaddress
import json
import os
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

NETWORK_ID = "5f1c1c5e-0000-4000-8000-000000000113"   # fixed: tests may use it
SUBNET_ID = "5f1c1c5e-0000-4000-8000-000000000114"
SECGROUP_ID = "5f1c1c5e-0000-4000-8000-0000000005e6"
NET_NAME = "vlab-inst"
CIDR = "198.18.0.0/24"
GATEWAY = "198.18.0.1"
POOL_START, POOL_END = "198.18.0.100", "198.18.0.250"
NOW = "2025-01-01T00:00:00Z"

EXTENSIONS = [
    ("binding", "Port Binding", "Expose port bindings of a virtual port"),
    ("security-group", "security-group", "The security groups extension."),
    ("quotas", "Quota management support", "Expose functions for quotas"),
]


def network(project):
    return {
        "id": NETWORK_ID, "name": NET_NAME, "status": "ACTIVE",
        "admin_state_up": True, "shared": True, "subnets": [SUBNET_ID],
        "tenant_id": project, "project_id": project, "mtu": 1500,
        "router:external": False, "port_security_enabled": True,
        "provider:network_type": "flat",
        "provider:physical_network": "vlab-inst",
        "provider:segmentation_id": None, "availability_zones": ["nova"],
        "description": "Vigil lab instance network (Neutron stand-in)",
        "tags": [], "created_at": NOW, "updated_at": NOW,
        "revision_number": 1, "is_default": False, "ipv4_address_scope": None,
        "ipv6_address_scope": None, "qos_policy_id": None,
    }


def subnet(project):
    return {
        "id": SUBNET_ID, "name": "vlab-inst-v4", "network_id": NETWORK_ID,
        "tenant_id": project, "project_id": project, "ip_version": 4,
        "cidr": CIDR, "gateway_ip": GATEWAY, "enable_dhcp": False,
        "dns_nameservers": [], "host_routes": [], "service_types": [],
        "allocation_pools": [{"start": POOL_START, "end": POOL_END}],
        "ipv6_ra_mode": None, "ipv6_address_mode": None,
        "subnetpool_id": None, "description": "", "tags": [],
        "created_at": NOW, "updated_at": NOW, "revision_number": 1,
        "segment_id": None,
    }


def secgroup(project):
    return {
        "id": SECGROUP_ID, "name": "default", "tenant_id": project,
        "project_id": project, "description": "Default security group",
        "security_group_rules": [], "stateful": True, "shared": False,
        "tags": [], "created_at": NOW, "updated_at": NOW,
        "revision_number": 1,
    }


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


class Conflict(Exception):
    pass


class Store:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.ports = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.ports = json.load(f)["ports"]

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"ports": self.ports}, f, indent=1)
        os.replace(tmp, self.path)

    def free_ip(self):
        used = {ip["ip_address"] for p in self.ports.values()
                for ip in p["fixed_ips"]}
        a, b = ipaddress.ip_address(POOL_START), ipaddress.ip_address(POOL_END)
        while a <= b:
            if str(a) not in used:
                return str(a)
            a += 1
        raise Conflict("IpAddressGenerationFailure: no more IP addresses "
                       "available on network %s" % NETWORK_ID)

    def create_port(self, body, project):
        if body.get("network_id") != NETWORK_ID:
            raise NotFound("Network %s could not be found."
                           % body.get("network_id"))
        fixed = body.get("fixed_ips")
        if fixed:
            ip = fixed[0].get("ip_address") or self.free_ip()
            if any(i["ip_address"] == ip for p in self.ports.values()
                   for i in p["fixed_ips"]):
                raise Conflict("IpAddressAlreadyAllocated: %s" % ip)
        else:
            ip = self.free_ip()
        pid = str(uuid.uuid4())
        proj = body.get("project_id") or body.get("tenant_id") or project
        port = {
            "id": pid, "name": body.get("name", ""),
            "network_id": NETWORK_ID, "tenant_id": proj, "project_id": proj,
            "mac_address": body.get("mac_address") or "fa:16:3e:%02x:%02x:%02x"
            % (random.randrange(256), random.randrange(256),
               random.randrange(256)),
            "admin_state_up": body.get("admin_state_up", True),
            "status": "DOWN", "device_id": body.get("device_id", ""),
            "device_owner": body.get("device_owner", ""),
            "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": ip}],
            "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "security_groups": body.get("security_groups", [SECGROUP_ID]),
            "port_security_enabled": body.get("port_security_enabled", True),
            "binding:host_id": "", "binding:vif_type": "unbound",
            "binding:vif_details": {}, "binding:profile": {},
            "binding:vnic_type": body.get("binding:vnic_type", "normal"),
            "description": body.get("description", ""), "tags": [],
            "created_at": now(), "updated_at": now(), "revision_number": 1,
            "qos_policy_id": None, "qos_network_policy_id": None,
            "resource_request": None, "propagate_uplink_status": False,
        }
        self.ports[pid] = port
        self._apply(port, body, create=True)
        return port

    def _apply(self, port, body, create=False):
        for k in ("name", "device_id", "device_owner", "admin_state_up",
                  "binding:profile", "binding:vnic_type", "description",
                  "security_groups", "port_security_enabled", "dns_name"):
            if k in body and not (create and k in ("security_groups",)):
                port[k] = body[k]
        if "binding:host_id" in body:
            host = body["binding:host_id"] or ""
            port["binding:host_id"] = host
            if host:
                port["binding:vif_type"] = "ovs"
                port["binding:vif_details"] = {"port_filter": True,
                                               "connectivity": "l2",
                                               "bridge_name": "br-int"}
                port["status"] = "ACTIVE"
            else:
                port["binding:vif_type"] = "unbound"
                port["binding:vif_details"] = {}
                port["status"] = "DOWN"
        if not create:
            port["revision_number"] += 1
            port["updated_at"] = now()


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def matches(item, query):
    for key, wanted in query.items():
        if key in ("fields", "limit", "marker", "sort_key", "sort_dir",
                   "page_reverse"):
            continue
        if key == "fixed_ips":
            ok = False
            for w in wanted:
                k, _, v = w.partition("=")
                if any(str(i.get(k)) == v for i in item.get("fixed_ips", [])):
                    ok = True
            if not ok:
                return False
            continue
        if key not in item:
            return False
        have = item[key]
        if isinstance(have, bool):
            if str(have).lower() not in [w.lower() for w in wanted]:
                return False
        elif isinstance(have, list):
            if not any(str(h) in wanted for h in have):
                return False
        elif str("" if have is None else have) not in wanted:
            return False
    return True


def project_fields(item, query):
    fields = query.get("fields")
    if not fields:
        return item
    return {k: v for k, v in item.items() if k in fields}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None
    base = ""

    def _send(self, code, body):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _error(self, code, kind, msg):
        return code, {"NeutronError": {"type": kind, "message": msg,
                                       "detail": ""}}

    def _project(self):
        return self.headers.get("X-Project-Id") or "admin"

    def route(self, body):
        u = urlparse(self.path)
        query = parse_qs(u.query, keep_blank_values=True)
        path = u.path.rstrip("/")
        if path in ("", "/"):
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"rel": "self", "href":
                                                  self.base + "/v2.0/"}]}]}
        if not path.startswith("/v2.0"):
            return self._error(404, "HTTPNotFound", "no such path " + path)
        path = path[len("/v2.0"):]
        if path.endswith(".json"):
            path = path[:-5]
        parts = [p for p in path.split("/") if p]
        if not parts:
            return 200, {"resources": [
                {"name": n, "collection": n + "s", "links": []}
                for n in ("network", "subnet", "port")]}
        coll, rest = parts[0], parts[1:]
        m = self.command
        proj = self._project()
        st = self.store

        if coll == "extensions" and m == "GET":
            exts = [{"alias": a, "name": n, "description": d,
                     "updated": "2013-01-01T10:00:00-00:00", "links": []}
                    for a, n, d in EXTENSIONS]
            if rest:
                for e in exts:
                    if e["alias"] == rest[0]:
                        return 200, {"extension": e}
                return self._error(404, "ExtensionNotFound", rest[0])
            return 200, {"extensions": exts}

        if coll == "quotas" and m == "GET":
            q = {k: -1 for k in ("network", "subnet", "port", "router",
                                 "floatingip", "security_group",
                                 "security_group_rule", "subnetpool",
                                 "rbac_policy", "trunk")}
            if len(rest) >= 2 and rest[1] == "details":
                return 200, {"quota": {k: {"limit": -1, "used": 0,
                                           "reserved": 0} for k in q}}
            return 200, {"quota": q}

        static = {"networks": ("network", network),
                  "subnets": ("subnet", subnet),
                  "security-groups": ("security_group", secgroup)}
        if coll in static and m == "GET":
            key, make = static[coll]
            obj = make(proj)
            if rest:
                if rest[0] != obj["id"]:
                    return self._error(404, key.title().replace("_", "") +
                                       "NotFound", "%s %s could not be found."
                                       % (key, rest[0]))
                return 200, {key: project_fields(obj, query)}
            items = [project_fields(obj, query)] if matches(obj, query) else []
            return 200, {coll.replace("-", "_"): items}

        if coll in ("floatingips", "segments", "trunks", "routers",
                    "security-group-rules", "qos", "subnetpools") and m == "GET" and not rest:
            return 200, {coll.replace("-", "_"): []}

        if coll == "ports":
            with st.lock:
                if m == "GET" and not rest:
                    items = [project_fields(p, query) for p in st.ports.values()
                             if matches(p, query)]
                    return 200, {"ports": items}
                if m == "POST" and not rest:
                    b = (body or {}).get("port")
                    if not isinstance(b, dict):
                        return self._error(400, "BadRequest", "no port in body")
                    port = st.create_port(b, proj)
                    st.save()
                    return 201, {"port": port}
                if not rest or rest[0] not in st.ports:
                    return self._error(404, "PortNotFound", "Port %s could not"
                                       " be found." % (rest[0] if rest else ""))
                port = st.ports[rest[0]]
                if len(rest) > 1:
                    return self._error(404, "HTTPNotFound", "not in the "
                                       "stand-in: %s %s" % (m, self.path))
                if m == "GET":
                    return 200, {"port": project_fields(port, query)}
                if m == "PUT":
                    b = (body or {}).get("port")
                    if not isinstance(b, dict):
                        return self._error(400, "BadRequest", "no port in body")
                    st._apply(port, b)
                    st.save()
                    return 200, {"port": port}
                if m == "DELETE":
                    del st.ports[rest[0]]
                    st.save()
                    return 204, None
        return self._error(404, "HTTPNotFound", "not in the Neutron stand-in:"
                           " %s %s" % (m, self.path))

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
            code, out = self.route(body)
        except NotFound as e:
            code, out = self._error(404, "NotFound", str(e))
        except Conflict as e:
            code, out = self._error(409, "Conflict", str(e))
        except (BadRequest, ValueError) as e:
            code, out = self._error(400, "BadRequest", str(e))
        self._send(code, out)
        if self.command != "GET" or code >= 400:
            sys.stdout.write("%s %s %s -> %d %s\n" % (
                time.strftime("%H:%M:%S"), self.command, self.path, code,
                raw.decode(errors="replace")[:300] if self.command in
                ("POST", "PUT") else ""))
            sys.stdout.flush()

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="198.51.100.1")
    ap.add_argument("--port", type=int, default=9696)
    ap.add_argument("--state", default=None)
    a = ap.parse_args()
    Handler.store = Store(a.state)
    Handler.base = "http://%s:%d" % (a.listen, a.port)
    srv = ThreadingHTTPServer((a.listen, a.port), Handler)
    srv.daemon_threads = True
    print("Neutron stand-in (not Neutron) on %s, %d ports in %s"
          % (Handler.base, len(Handler.store.ports), a.state), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
