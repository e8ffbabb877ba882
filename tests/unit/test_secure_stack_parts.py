"""The secure stack's parts that need no running server: the local CA and server certificate
(verified with Python's ``ssl`` as a client would), the principals' settings, the ACLs each role
gets, the Redis configuration, the Kafka properties (secrets 0600), and the Redis error messages."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from mystocks_gpu.infra.config import StackConfig, load_settings
from mystocks_gpu.infra.stack_secure import ROLES, SecureStack, open_stack
from mystocks_gpu.infra.tls_certs import ensure_pki


def test_ca_and_server_certificate_verify_like_a_client(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    for p in (pki.key, pki.ca_key, pki.keystore):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    cert = x509.load_pem_x509_certificates(pki.cert.read_bytes())[0]
    assert cert.subject.rfc4514_string() == "CN=broker"  # the controller listener's mTLS principal
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    key, chain, _ = pkcs12.load_key_and_certificates(pki.keystore.read_bytes(), pki.keystore_password.encode())
    assert key is not None and chain is not None and chain.subject == cert.subject
    # a real TLS handshake on loopback: server with the chain, client trusting only the CA
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def accept() -> None:
            conn, _ = srv.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        t = threading.Thread(target=accept)
        t.start()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
            assert c.recv(2) == b"ok" and c.version() in ("TLSv1.2", "TLSv1.3")
        t.join(5)
    # reused while valid: clients keep trusting the same CA
    again = ensure_pki(tmp_path / "pki")
    assert again.ca.read_bytes() == pki.ca.read_bytes() and again.keystore_password == pki.keystore_password


def test_principals_settings_acls_and_server_files(tmp_path: Path) -> None:
    cfg = StackConfig(home=str(tmp_path / "home"), kafka_port=29001, controller_port=29002, redis_port=29003)
    st = SecureStack(cfg)
    names = {p.name for p in st.principals()}
    assert names == set(ROLES)
    s = load_settings(environ=st.env("stream"))
    sec = dict(s.kafka.security)
    assert sec["security.protocol"] == "SASL_SSL" and sec["sasl.mechanism"] == "SCRAM-SHA-512"
    assert sec["sasl.username"] == "stream" and sec["sasl.password"] == st.principal("stream").kafka_password
    assert sec["ssl.ca.location"] == str(st.pki.ca) and s.kafka.bootstrap_servers == "127.0.0.1:29001"
    assert s.redis.url.startswith("rediss://stream:") and "ssl_ca_certs=" in s.redis.url
    assert "***" in s.masked()["redis"]["url"] and s.masked()["kafka"]["security"]["sasl.password"] == "***"
    assert st.principal("stream").kafka_password not in str(s.masked())
    assert stat.S_IMODE(os.stat(st.credentials_file).st_mode) == 0o600
    d = st.write_env_files()
    assert {p.name for p in d.iterdir()} == {f"{n}.env" for n in (*names, "admin")}
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in d.iterdir())

    def grants(name: str, role: str) -> set[tuple[str, str, str, str]]:
        return {(b.restype.name, b.resource_pattern_type.name, b.name, b.operation.name)
                for b in st.acl_bindings(name, role)}

    client, ingest, stream = grants("c", "client"), grants("i", "ingest"), grants("s", "stream")
    assert ("TOPIC", "LITERAL", "cmd.jobs", "WRITE") in client
    assert not any(op == "WRITE" and n.startswith("md.") for _, _, n, op in client | stream if n != "md.bars.1s"
                   and n != "md.bars.1m" and not n.endswith(".dlq"))  # nobody but ingest writes market data
    assert ("TOPIC", "PREFIXED", "md.", "WRITE") in ingest
    assert ("TRANSACTIONAL_ID", "PREFIXED", "mystocks.", "WRITE") in stream
    # the execution processor: parent orders in, schedules and scores out; clients place orders
    assert {("TOPIC", "LITERAL", "orders.parent", "READ"), ("TOPIC", "LITERAL", "orders.schedule", "WRITE"),
            ("TOPIC", "LITERAL", "orders.parent.dlq", "WRITE")} <= stream
    assert ("TOPIC", "LITERAL", "orders.parent", "WRITE") in client
    # every DLQ twin of a topic a stream worker reads is writable by it (bad input is never lost)
    from mystocks_gpu.topics import all_specs

    reads = {n for _, pat, n, op in stream if op == "READ" and pat == "LITERAL"}
    for spec in all_specs():
        if spec.name.endswith(".dlq") and spec.name[:-4] in reads:
            assert ("TOPIC", "LITERAL", spec.name, "WRITE") in stream, spec.name
    assert all(b.principal == "User:c" and b.permission_type.name == "ALLOW" for b in st.acl_bindings("c", "client"))
    st.kafka_dir.mkdir(parents=True)
    props = st._server_properties()
    text = props.read_text()
    assert stat.S_IMODE(os.stat(props).st_mode) == 0o600
    assert "listeners=SASL_SSL://127.0.0.1:29001,CONTROLLER://127.0.0.1:29002" in text
    assert "allow.everyone.if.no.acl.found=false" in text and "super.users=User:broker;User:admin" in text
    assert re.search(r"@[A-Z_]+@", text) is None  # every placeholder filled
    # the shared broker settings come first, once (server-common.properties)
    assert text.count("\nlog.cleaner.dedupe.buffer.size=16777216\n") == 1 and text.count("\nlisteners=") == 1
    assert text.index("auto.create.topics.enable=false") < text.index("listeners=SASL_SSL")
    conf = st._write_redis_conf().read_text()
    assert "port 0" in conf and "tls-port 29003" in conf and f"user jobworker on >{st.principal('jobworker').redis_password}" \
        in conf and "-@dangerous" in conf
    assert isinstance(open_stack(cfg), SecureStack)  # a home holding a secure stack stays secure
    assert not isinstance(open_stack(StackConfig(home=str(tmp_path / "plain"))), SecureStack)


def test_redis_error_messages_mask_the_password() -> None:
    import redis

    from mystocks_gpu.infra.exceptions import RedisAuthFailed
    from mystocks_gpu.infra.redis_clients import auth_message, check_redis, is_auth_error

    url = "rediss://app:s3cret@127.0.0.1:1/0"
    exc = redis.AuthenticationError("invalid username-password pair or user is disabled.")
    assert is_auth_error(exc) and not is_auth_error(redis.ConnectionError("Connection refused"))
    msg = auth_message(url, exc)
    assert "s3cret" not in msg and "rediss://app:***@127.0.0.1:1/0" in msg and "refused the credentials" in msg

    class Down:
        def ping(self) -> None:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    class Refuses:
        def ping(self) -> None:
            raise exc

    with pytest.raises(redis.ConnectionError):  # an outage is not an auth failure: the caller retries
        check_redis(Down(), url)
    with pytest.raises(RedisAuthFailed, match="refused the credentials"):
        check_redis(Refuses(), url)
