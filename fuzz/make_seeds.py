#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/) from protocol examples and the repository's fixtures.
Run from anywhere; the files it writes are checked in. Fuzz runs write what they find elsewhere
(scripts/fuzz.sh passes target/fuzz-corpus/<target> first), so this directory holds seeds only."""
import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def msg(tag, body=b""):
    return tag + struct.pack("!i", len(body) + 4) + body


def startup(params, version=3 << 16):
    body = struct.pack("!I", version)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# startup
write("startup", "v3", startup([("user", "alice"), ("database", "db"), ("application_name", "api")]))
write("startup", "v3_options", startup([("user", "a"), ("options", "-c standard_conforming_strings=off")]))
write("startup", "v32", startup([("user", "a")], version=(3 << 16) | 2))
write("startup", "v2", startup([("user", "a")], version=2 << 16))
write("startup", "ssl", struct.pack("!II", 8, 80877103))
write("startup", "gss", struct.pack("!II", 8, 80877104))
write("startup", "cancel", struct.pack("!IIii", 16, 80877102, 4242, 12345))
write("startup", "cancel_long_key", struct.pack("!III", 12 + 32, 80877102, 4242) + b"k" * 32)
write("startup", "bad_len", struct.pack("!I", 3))
write("startup", "junk", b"GET / HTTP/1.1\r\n\r\n")

# client and server streams
query = msg(b"Q", cstr("select 1"))
extended = (msg(b"P", cstr("s1") + cstr("select $1") + b"\0\0") + msg(b"B", cstr("") + cstr("s1") + b"\0\0\0\0\0\0")
            + msg(b"E", cstr("") + b"\0\0\0\0") + msg(b"S"))
server = (msg(b"1") + msg(b"2") + msg(b"T", b"\0\1" + cstr("x") + b"\0" * 18) + msg(b"D", b"\0\1\0\0\0\1" + b"1")
          + msg(b"C", cstr("SELECT 1")) + msg(b"Z", b"I"))
error = msg(b"E", b"SERROR\0C42601\0Msyntax error\0\0") + msg(b"Z", b"E")
for name, data in [("query", query), ("extended", extended), ("server", server), ("error", error),
                   ("copy", msg(b"G", b"\0\0\0") + msg(b"d", b"1\n") + msg(b"c"))]:
    write("scanner", name, b"\x10" + data)


def steps(*chunks):
    """Tracker input: a cap byte, then per chunk a control byte (bit 7 = from the server, low 7 = length)."""
    out = b"\x40"
    for server_side, data in chunks:
        while data:
            part, data = data[:127], data[127:]
            out += bytes([(0x80 if server_side else 0) | len(part)]) + part
    return out


auth_ok = msg(b"R", b"\0\0\0\0") + msg(b"K", struct.pack("!ii", 7, 9)) + msg(b"Z", b"I")
write("tracker", "simple", steps((True, auth_ok), (False, query), (True, server)))
write("tracker", "extended", steps((True, auth_ok), (False, extended), (True, msg(b"1") + msg(b"2") + server[-20:])))
write("tracker", "tx", steps((True, auth_ok), (False, msg(b"Q", cstr("begin"))), (True, msg(b"C", cstr("BEGIN")) + msg(b"Z", b"T"))))
write("tracker", "failed", steps((True, auth_ok), (False, extended), (True, error)))
write("tracker", "copy_in", steps((True, auth_ok), (False, msg(b"Q", cstr("copy t from stdin")) + msg(b"d", b"1\n") + msg(b"c")),
                                  (True, msg(b"G", b"\0\0\0") + msg(b"C", cstr("COPY 1")) + msg(b"Z", b"I"))))
write("tracker", "listen", steps((True, auth_ok), (False, msg(b"Q", cstr("listen chan"))), (True, msg(b"Z", b"I"))))

# ErrorResponse bodies
write("error_response", "fatal", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0")
write("error_response", "error", b"SERROR\0C42601\0Msyntax error at or near \"x\"\0P8\0\0")
write("error_response", "truncated", b"SFATAL\0C5")
write("error_response", "encode", b"FATAL|28000|password authentication failed")

# Authentication exchanges from the server
sasl = msg(b"R", struct.pack("!i", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
cont = msg(b"R", struct.pack("!i", 11) + b"r=abc,s=c2FsdA==,i=4096")
final = msg(b"R", struct.pack("!i", 12) + b"v=xyz")
write("sasl", "scram", b"\x03" + sasl + cont + final + auth_ok)
write("sasl", "plain", b"\x05" + msg(b"R", struct.pack("!i", 3)) + auth_ok)
write("sasl", "error", b"\x01" + msg(b"E", b"SFATAL\0C28000\0Mno pg_hba.conf entry\0\0"))

# SQL for redaction (the structured half reads these bytes as token choices, the free half as text)
for name, sql in [
    ("password", "ALTER ROLE x PASSWORD 'a\\' hunter2'"),
    ("kinds", "select E'\\'s', $$d$$, $q$e$q$, U&'u', 1.5e3, \"id\" -- c\n/* c */"),
    ("where", "select * from t where a = 'x' and b = 42"),
]:
    write("redact", name, sql.encode())
write("redact", "tokens", bytes(range(0, 64)))

# Configs: the SPEC example's keys and the chart's
write("config", "empty", b"")
write("config", "tuned", b"""listen: 127.0.0.1:6432
upstream: db:5432
upstream_tls: verify-full
client_tls: allow
client_key: [application_name, user, pod]
max_total_connections: 90
stats: { statement_text: redacted, statement_max_length: 2048 }
defaults: { max_connections: 10, on_limit: wait, wait_timeout: 2s, idle_timeout: 10m,
            idle_in_transaction_timeout: 30s, max_connection_age: 1h }
leak: { idle_threshold: 5m, idle_in_transaction_threshold: 30s, keep_closed_suspects: 15m }
rules:
  - name: reports
    match: { application_name: 'report-*' }
    max_connections: 2
    idle_timeout: off
""")
write("config", "huge", b"defaults: { idle_timeout: 9223372036854775807 }\nshutdown_grace: 8760h\n")

# Pods, from the webhook's AdmissionReview fixtures
for f in sorted((ROOT / "tests" / "fixtures").glob("*-pod*.json")):
    review = json.loads(f.read_text())
    pod = review.get("request", {}).get("object")
    if pod:
        write("mutate", f.stem, json.dumps(pod).encode() + b"\0defaults:\n  max_connections: 5\n")
print("seeds written to", HERE / "corpus")
