"""Kafka security settings (``[kafka.security]``, librdkafka property names) for the Faust control app.

Every librdkafka client of the project takes ``kafka.security`` verbatim; the control app's Faust
app talks to Kafka through aiokafka, which wants a Faust credentials object and a Python
:class:`ssl.SSLContext` instead. :func:`faust_credentials` translates:

=====================  ======================================================================
security.protocol      Faust ``broker_credentials``
=====================  ======================================================================
PLAINTEXT (or unset)   None (plain ``kafka://``)
SSL                    ``SSLCredentials(context)``
SASL_PLAINTEXT         ``SASLCredentials`` (PLAIN, SCRAM-SHA-256/512) or ``GSSAPICredentials``
SASL_SSL               the same, with the SSL context
=====================  ======================================================================

The SSL context: ``ssl.ca.location`` (a PEM file or a directory; default the system CAs),
``ssl.certificate.location`` + ``ssl.key.location`` (+ ``ssl.key.password``) for a client
certificate, ``ssl.endpoint.identification.algorithm = none`` turns off host-name checks,
``enable.ssl.certificate.verification = false`` turns off verification altogether. A property the
control app cannot honour (``ssl.keystore.*``, OAUTHBEARER, ...) is a :class:`ConfigError`, never
silently dropped.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import KafkaConfig

#: librdkafka security properties the control app understands
SUPPORTED = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "sasl.kerberos.service.name", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
    "ssl.key.password", "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification",
})
_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI"}


def _flag(value: str) -> bool:
    return value.strip().lower() in {"true", "1", "yes"}


def _file(security: Mapping[str, str], key: str) -> str | None:
    value = security.get(key)
    if value is None:
        return None
    if not Path(value).exists():
        raise ConfigError(f"kafka.security.{key}: {value} does not exist")
    return value


def ssl_context(security: Mapping[str, str]) -> ssl.SSLContext:
    """The client :class:`ssl.SSLContext` described by librdkafka ``ssl.*`` properties."""
    ca = _file(security, "ssl.ca.location")
    try:
        if ca is not None and Path(ca).is_dir():
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=ca)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"kafka.security.ssl.ca.location: cannot load CA certificates from {ca}: {exc}") from None
    cert, key = _file(security, "ssl.certificate.location"), _file(security, "ssl.key.location")
    if (cert is None) != (key is None):
        raise ConfigError("kafka.security: ssl.certificate.location and ssl.key.location go together")
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key, password=security.get("ssl.key.password"))
        except ssl.SSLError as exc:
            raise ConfigError(f"kafka.security.ssl.certificate.location: cannot load the client certificate/key: {exc}") \
                from None
    if security.get("ssl.endpoint.identification.algorithm", "https").strip().lower() == "none":
        ctx.check_hostname = False
    if not _flag(security.get("enable.ssl.certificate.verification", "true")):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def faust_credentials(kafka: KafkaConfig) -> Any:
    """Faust ``broker_credentials`` for ``kafka.security`` (None for PLAINTEXT); see the module docstring.

    Raises :class:`ConfigError` naming a property the control app cannot use."""
    from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials

    sec = dict(kafka.security)
    unsupported = sorted(k for k in sec if k not in SUPPORTED)
    if unsupported:
        raise ConfigError(f"kafka.security.{unsupported[0]} is not supported by the control app (Faust/aiokafka); "
                          f"it understands: {', '.join(sorted(SUPPORTED))}")
    protocol = sec.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    ctx = ssl_context(sec) if protocol in {"SSL", "SASL_SSL"} else None
    if protocol == "SSL":
        return SSLCredentials(ctx)
    mechanism = (sec.get("sasl.mechanism") or sec.get("sasl.mechanisms") or "GSSAPI").upper()
    if mechanism not in _MECHANISMS:
        raise ConfigError(f"kafka.security.sasl.mechanism {mechanism} is not supported by the control app; "
                          f"use one of {', '.join(sorted(_MECHANISMS))}")
    if mechanism == "GSSAPI":
        return GSSAPICredentials(kerberos_service_name=sec.get("sasl.kerberos.service.name", "kafka"),
                                 ssl_context=ctx, mechanism=mechanism)
    if not sec.get("sasl.username") or sec.get("sasl.password") is None:
        raise ConfigError(f"kafka.security: SASL {mechanism} needs sasl.username and sasl.password")
    return SASLCredentials(username=sec["sasl.username"], password=sec["sasl.password"], ssl_context=ctx,
                           mechanism=mechanism)
