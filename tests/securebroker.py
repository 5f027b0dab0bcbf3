"""A private Kafka broker for the security tests: SASL_SSL with SCRAM-SHA-512, and mutual TLS.

The shared broker stays PLAINTEXT; this one runs beside it on free ports, started by
scripts/kafka.sh with extra listeners, a throwaway CA and a SCRAM user created at format time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services import ROOT

USERNAME = "loyalty-consumer"
SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")  # users created at format time
MECHANISMS = ("PLAIN", *SCRAM)  # PLAIN's users live in the listener's JAAS configuration


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, the broker's certificate for 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class SecureBroker:
    sasl_ssl: str  # SASL over TLS, with every mechanism in MECHANISMS
    sasl_plaintext: str  # SASL without TLS, the same mechanisms
    ssl: str  # TLS that requires a client certificate signed by the CA
    pki: Pki
    username: str
    password: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificate(name: str, subject: str, extensions: str, directory: Path) -> None:
    """An EC key and a certificate for it signed by the CA in `directory`."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=loyalty-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _certificate(
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        directory,
    )
    _certificate("client", f"/CN={USERNAME}", "extendedKeyUsage=clientAuth\n", directory)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _inline(pem: Path) -> str:
    r"""A PEM file as one properties value; Kafka reads the `\n` escapes back as newlines."""
    return pem.read_text().strip().replace("\n", "\\n")


def _broker_config(pki: Pki, password: str, ports: dict[str, int]) -> str:
    # Later keys win in java.util.Properties, so these replace the script's listeners. The
    # PLAINTEXT listener is for the broker itself and the script's readiness probe only.
    addresses = {name: f"{name}://127.0.0.1:{port}" for name, port in ports.items()}
    lines = [
        "listeners=" + ",".join(addresses.values()),
        "advertised.listeners="
        + ",".join(a for name, a in addresses.items() if name != "CONTROLLER"),
        "inter.broker.listener.name=PLAINTEXT",
        "sasl.enabled.mechanisms=" + ",".join(MECHANISMS),
        "listener.name.ssl.ssl.client.auth=required",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.certificate.chain={_inline(pki.server_cert)}",
        f"ssl.keystore.key={_inline(pki.server_key)}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.certificates={_inline(pki.ca)}",
    ]
    for listener in ("sasl_ssl", "sasl_plaintext"):
        prefix = f"listener.name.{listener}"
        lines += [
            f"{prefix}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain."
            f'PlainLoginModule required user_{USERNAME}="{password}";',
            *(
                f"{prefix}.{mechanism.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                for mechanism in SCRAM
            ),
        ]
    return "\n".join(lines)


@contextlib.contextmanager
def secure_broker(directory: Path) -> Iterator[SecureBroker]:
    """Start the broker (about ten seconds), yield its addresses, delete it afterwards."""
    pki = make_pki(directory / "pki")
    password = secrets.token_urlsafe(18)  # no `,` `]` or spaces: it goes into a format argument
    names = ("PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "SSL", "CONTROLLER")
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    env = {
        **os.environ,
        "KAFKA_PORT": str(ports["PLAINTEXT"]),
        "KAFKA_CONTROLLER_PORT": str(ports["CONTROLLER"]),
        "KAFKA_RUN_DIR": str(directory / "broker"),
        "KAFKA_HEAP": "-Xms128m -Xmx512m",
        "KAFKA_EXTRA_CONFIG": _broker_config(pki, password, ports),
        "KAFKA_FORMAT_ARGS": " ".join(
            f"--add-scram {mechanism}=[name={USERNAME},password={password}]" for mechanism in SCRAM
        ),
    }
    script = ["bash", str(ROOT / "scripts" / "kafka.sh")]
    started = subprocess.run(
        [*script, "up"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    try:
        if started.returncode != 0:
            raise RuntimeError(f"the SASL_SSL test broker did not start:\n{started.stderr[-3000:]}")
        yield SecureBroker(
            sasl_ssl=f"127.0.0.1:{ports['SASL_SSL']}",
            sasl_plaintext=f"127.0.0.1:{ports['SASL_PLAINTEXT']}",
            ssl=f"127.0.0.1:{ports['SSL']}",
            pki=pki,
            username=USERNAME,
            password=password,
        )
    finally:
        subprocess.run([*script, "down"], env=env, capture_output=True, timeout=120, check=False)
