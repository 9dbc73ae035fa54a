"""Broker credentials and a lab's own certificate authority, on a real Mosquitto.

Passwords come from the environment or a file, never a command line (`ps` shows it to every
user); TLS trusts a CA file given in the settings, and presents a client certificate to a
broker that requires one.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest_brokers import Mosquitto
from tests.e2e.cli import cli_env, run, start


def _key_and_cert(name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
                  usage: list[x509.ObjectIdentifier]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:  # the lab's own certificate authority
        builder = builder.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        return key, builder.sign(key, hashes.SHA256())
    builder = builder.issuer_name(issuer[1].subject).add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if usage == [ExtendedKeyUsageOID.SERVER_AUTH]:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(issuer[0], hashes.SHA256())


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def lab_pki(tmp_path: Path) -> dict[str, Path]:
    """A CA of the lab's own, a server certificate for localhost and a client certificate."""
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = _key_and_cert("closedloop test lab CA", None, [])
    server = _key_and_cert("localhost", ca, [ExtendedKeyUsageOID.SERVER_AUTH])
    client = _key_and_cert("orchestrator", ca, [ExtendedKeyUsageOID.CLIENT_AUTH])
    _, ca_cert = _write(directory, "ca", *ca)
    server_key, server_cert = _write(directory, "server", *server)
    client_key, client_cert = _write(directory, "client", *client)
    return {"ca": ca_cert, "server_key": server_key, "server_cert": server_cert,
            "client_key": client_key, "client_cert": client_cert}


def _mosquitto(directory: Path, body: str) -> Iterator[Mosquitto]:
    directory.mkdir()
    broker = Mosquitto(directory)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\n{body}"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\nlog_dest stderr\nlog_type error\nlog_type warning\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def tls_mosquitto(tmp_path: Path, lab_pki: dict[str, Path]) -> Iterator[Mosquitto]:
    """Mosquitto with TLS by the lab's CA, requiring a client certificate from it."""
    yield from _mosquitto(tmp_path / "tls-broker", (
        "allow_anonymous true\n"
        f"cafile {lab_pki['ca']}\ncertfile {lab_pki['server_cert']}\nkeyfile {lab_pki['server_key']}\n"
        "require_certificate true\n"))


@pytest.fixture
def password_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto that admits only the user `lab` with the password `s3cret:pw`."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "lab", "s3cret:pw"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    yield from _mosquitto(tmp_path / "pw-broker", f"allow_anonymous false\npassword_file {passwords}\n")


def _status(port: int, device: str, tls: ssl.SSLContext | None = None, user: tuple[str, str] | None = None,
            timeout_s: float = 60) -> dict[str, object] | None:
    """The retained status `device` published (read with paho, not our client), or None."""
    got: list[dict[str, object]] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    if tls is not None:
        client.tls_set_context(tls)
    if user is not None:
        client.username_pw_set(*user)

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.append(json.loads(m.payload))
        if got[-1].get("state") in ("idle", "busy"):
            done.set()

    client.on_connect = lambda c, *_: c.subscribe(f"closedloop/devices/{device}/status", qos=1)
    client.on_message = on_message
    client.connect("localhost" if tls is not None else "127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[-1] if done.is_set() else None


def _serve(env: dict[str, str], device: str, broker: str) -> subprocess.Popen[str]:
    return start(["sim", "branin", "--device-id", device, "--broker", broker], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(sim: subprocess.Popen[str]) -> str:
    if sim.poll() is None:
        sim.send_signal(signal.SIGTERM)
    return sim.communicate(timeout=30)[1]


def test_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    """Issue 14 item 20: `closedloop sim --broker mqtt://user:pass@...` put the password in
    `ps` for every user to read. Now it is refused in one line that names the alternative."""
    env = cli_env(tmp_path / "home", {})
    out = run(["sim", "branin", "--device-id", "d1", "--broker", "mqtt://lab:s3cret@127.0.0.1:1883"], env, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CLOSEDLOOP_MQTT_PASSWORD" in lines[0] and "s3cret" not in lines[0], out.stderr


@pytest.mark.parametrize("source", ["variable", "file"])
def test_password_from_the_environment_or_a_file(tmp_path: Path, password_mosquitto: Mosquitto, source: str) -> None:
    """Issue 14 item 20: the password reaches the broker from CLOSEDLOOP_MQTT_PASSWORD or
    CLOSEDLOOP_MQTT_PASSWORD_FILE, with `--broker mqtt://lab@host:port` on the command line."""
    secret = {"CLOSEDLOOP_MQTT_PASSWORD": "s3cret:pw"}
    if source == "file":
        (tmp_path / "pw").write_text("s3cret:pw\n")
        secret = {"CLOSEDLOOP_MQTT_PASSWORD_FILE": str(tmp_path / "pw")}
    env = cli_env(tmp_path / "home", {}, **secret)
    sim = _serve(env, "pw-dev", f"mqtt://lab@127.0.0.1:{password_mosquitto.port}")
    try:
        status = _status(password_mosquitto.port, "pw-dev", user=("lab", "s3cret:pw"))
    finally:
        err = _stop(sim)
    assert status is not None and status["state"] == "idle", err
    assert "s3cret" not in err


def test_lab_ca_and_client_certificate(tmp_path: Path, lab_pki: dict[str, Path], tls_mosquitto: Mosquitto) -> None:
    """Issue 14 item 21: TLS to a broker signed by the lab's own CA worked only through
    OpenSSL's SSL_CERT_FILE, and a broker requiring client certificates was out of reach. Now
    CLOSEDLOOP_MQTT_CA_FILE, _CERT_FILE and _KEY_FILE do it; without the client certificate
    the broker refuses, in one line."""
    base = cli_env(tmp_path / "home", {})
    base.pop("SSL_CERT_FILE", None)
    url = f"mqtts://localhost:{tls_mosquitto.port}"
    env = {**base, "CLOSEDLOOP_MQTT_CA_FILE": str(lab_pki["ca"]),
           "CLOSEDLOOP_MQTT_CERT_FILE": str(lab_pki["client_cert"]), "CLOSEDLOOP_MQTT_KEY_FILE": str(lab_pki["client_key"])}
    reader = ssl.create_default_context(cafile=str(lab_pki["ca"]))
    reader.load_cert_chain(str(lab_pki["client_cert"]), str(lab_pki["client_key"]))
    sim = _serve(env, "tls-dev", url)
    try:
        status = _status(tls_mosquitto.port, "tls-dev", tls=reader)
    finally:
        err = _stop(sim)
    assert status is not None and status["state"] == "idle", err

    no_cert = {**base, "CLOSEDLOOP_MQTT_CA_FILE": str(lab_pki["ca"])}
    refused = run(["sim", "branin", "--device-id", "tls-dev-2", "--broker", url], no_cert, timeout=120)
    # (the sim says what it serves before it connects; then one line of error)
    assert refused.returncode == 1 and refused.stderr.count("error:") == 1, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: cannot reach MQTT broker"), refused.stderr

    missing = {**env, "CLOSEDLOOP_MQTT_CA_FILE": str(tmp_path / "no-such-ca.pem")}
    out = run(["sim", "branin", "--device-id", "tls-dev-3", "--broker", url], missing, timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("error:") == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: cannot read the TLS CA file"), out.stderr
    assert "no-such-ca.pem" in out.stderr
