"""A real ACME server (pebble) on loopback and a real certbot run against it.

Used by the end-to-end tests, the demo and the benchmarks. Facts behind the choices here are in
shared/acme-e2e.md: pebble needs its own HTTPS certificate, a DNS stub that answers 127.0.0.1 for
every name, a web server on its httpPort serving certbot's webroot, and a few environment
variables that take the randomness out of it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import datetime
import http.client
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certbot", "Pebble", "find_executable", "pebble_available"]

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3  # a free port can be taken by someone else between our probe and the bind

# Without these pebble sleeps 0-15 s before each validation, rejects 5% of nonces (certbot
# retries once, so ~1 run in 10 fails) and may reuse an authorization on renewal (no http-01).
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}


def find_executable(name: str) -> str | None:
    """`name` on PATH, else Debian's /usr/bin/name (PATH may be trimmed under CI or sudo)."""
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name
    return str(fallback) if os.access(fallback, os.X_OK) else None


def pebble_available() -> bool:
    return all(find_executable(name) for name in ("pebble", "pebble-challtestsrv"))


# --- processes ---------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: loading a library in the child between fork and exec is not safe.
_LIBC: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    # atexit does not run when the test process is SIGKILLed or dies of an unhandled SIGTERM;
    # the kernel's parent-death signal still reaps the servers then.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(
    argv: list[str], log_path: Path, *, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # The death signal is tied to the forking *thread*: only arm it from the main thread, or a
    # server started from a worker thread would die with that thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            # Own process group, so stop() can signal the whole group and a Ctrl-C aimed at the
            # test run does not hit the servers before the fixtures' teardown does.
            start_new_session=True,
            preexec_fn=_die_with_parent if in_main_thread else None,
        )


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    # Only signal a group whose leader we have not reaped yet: once reaped, its id may be reused.
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


# --- ports and probes ----------------------------------------------------------------------------


def _free_ports(count: int, *, udp_too: int = 0) -> list[int]:
    """`count` distinct free loopback TCP ports; the first `udp_too` are free for UDP as well."""
    held: list[socket.socket] = []  # kept bound until all are chosen, so none comes up twice
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if len(ports) < udp_too:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(udp)
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _fetch(url: str, *, cafile: str | None = None, timeout: float = 2.0) -> bytes:
    # No proxies: an HTTPS_PROXY in a developer's environment must not capture loopback calls.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)))
    with urllib.request.build_opener(*handlers).open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _dns_answers(port: int, name: str = "probe.example.test", timeout: float = 0.5) -> bool:
    """Whether the DNS stub gives an A answer for `name` (a minimal hand-made UDP query)."""
    query_id = secrets.randbits(16)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (LOOPBACK, port))
            data = sock.recv(512)
        except OSError:  # timeout, or "connection refused" from the ICMP of a closed port
            return False
    if len(data) < 12:
        return False
    answer_id, _flags, _questions, answers = struct.unpack("!4H", data[:8])
    return bool(answer_id == query_id and answers >= 1)


# --- pebble's own HTTPS certificate --------------------------------------------------------------


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_tls_files(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    """A throwaway CA and a localhost/127.0.0.1 leaf for pebble's listeners (Debian ships none)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certbot-incapsula test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    # SKI/AKI and key usage too: strict X.509 verification (Python >= 3.13's default) wants them.
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    key_path.chmod(0o600)


# --- pebble --------------------------------------------------------------------------------------


class Pebble:
    """pebble + pebble-challtestsrv (DNS answering 127.0.0.1 for every name) + a webroot HTTP
    server, all on free loopback ports, in a private temp dir. Context manager.

    Every start() is a new ACME server: new ports, new root, no accounts or orders kept, so use a
    fresh certbot config dir per start (the renewal config stores the server URL with its port).
    """

    # Names of the processes, which are also the stems of their log files in workdir.
    PROCESSES = ("pebble", "challtestsrv", "webroot-http")

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        validity_seconds: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        edge_address: str | None = None,
    ) -> None:
        """`extra_env` goes to pebble last, e.g. {"PEBBLE_VA_ALWAYS_VALID": "1"} for tests that
        are not about validation.

        `edge_address` puts an Imperva edge (tests/imperva_edge.py) between the CA and the webroot:
        the DNS stub answers that address for every name and pebble's VA fetches http-01 tokens
        from port 80 there, so the edge must proxy to `origin_url` (the webroot server, which
        keeps its own free port). set_edge_address() re-points the DNS without a restart. Port 80
        needs root."""
        # Remove the directory on stop() only if we made it; a caller's dir keeps the logs.
        self._owns_workdir = workdir is None
        workdir = tempfile.mkdtemp(prefix="pebble-") if workdir is None else workdir
        self.workdir = Path(workdir).resolve()
        self.validity_seconds = validity_seconds
        self.extra_env = dict(extra_env or {})
        self.ca_bundle = str(self.workdir / "ca.pem")
        self.webroot = str(self.workdir / "webroot")
        self.config_path = self.workdir / "pebble-config.json"
        self.acme_port = self.management_port = self.http_port = self.tls_port = 0
        self.dns_port = self.challtestsrv_port = 0
        self.edge_address = edge_address
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def directory_url(self) -> str:
        if not self.acme_port:
            raise RuntimeError("Pebble is not started")
        return f"https://{LOOPBACK}:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        if not self.management_port:
            raise RuntimeError("Pebble is not started")
        return f"https://{LOOPBACK}:{self.management_port}"

    @property
    def origin_url(self) -> str:
        """The webroot's web server: pebble's VA fetches from it directly, or through the edge."""
        if not self.http_port:
            raise RuntimeError("Pebble is not started")
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def va_http_port(self) -> int:
        """The port pebble's VA fetches http-01 tokens from: the edge's 80, else the webroot's."""
        return 80 if self.edge_address is not None else self.http_port

    def set_edge_address(self, address: str) -> None:
        """Make the DNS stub answer `address` for every name from now on (an edge pebble only)."""
        if self.edge_address is None:
            raise RuntimeError("this Pebble was not started with an edge_address")
        if not self.challtestsrv_port:
            raise RuntimeError("Pebble is not started")
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.challtestsrv_port}/set-default-ipv4",
            data=json.dumps({"ip": address}).encode(),
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as response:
            response.read()
        self.edge_address = address

    def log_path(self, process: str) -> Path:
        return self.workdir / f"{process}.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of pebble's own output (validation errors show up there)."""
        return _tail(self.log_path("pebble"), lines)

    def root_pem(self) -> bytes:
        """pebble's current ACME root; pebble makes a new one at every start."""
        return _fetch(f"{self.management_url}/roots/0", cafile=self.ca_bundle)

    def intermediate_pem(self) -> bytes:
        return _fetch(f"{self.management_url}/intermediates/0", cafile=self.ca_bundle)

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Pebble:
        """Start the three processes and wait until the ACME directory answers."""
        if self._procs:
            raise RuntimeError("Pebble is already started")
        for pebble_exe in ("pebble", "pebble-challtestsrv"):
            if find_executable(pebble_exe) is None:
                raise RuntimeError(f"{pebble_exe} not found: apt-get install pebble")
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch()
            failure = self._wait_ready()
            if failure is None:
                atexit.register(self.stop)
                return self
            output = self._output()
            self.stop()
            if "address already in use" in output and attempt < START_ATTEMPTS:
                continue  # lost a port race: try again with new ports
            raise RuntimeError(f"pebble did not start: {failure}\n{output}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate all three processes (each failure is suppressed so the others still die)."""
        atexit.unregister(self.stop)
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            with contextlib.suppress(Exception):
                _terminate(proc)
        self.acme_port = self.management_port = 0
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path(self.webroot).mkdir(exist_ok=True)
        cert_path, key_path = self.workdir / "localhost.pem", self.workdir / "localhost.key"
        _write_tls_files(Path(self.ca_bundle), cert_path, key_path)

        # The DNS port comes first: challtestsrv binds it for both UDP and TCP.
        (
            self.dns_port,
            self.challtestsrv_port,
            self.acme_port,
            self.management_port,
            self.http_port,
            self.tls_port,
        ) = _free_ports(6, udp_too=1)

        config: dict[str, object] = {
            "listenAddress": f"{LOOPBACK}:{self.acme_port}",
            "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": self.va_http_port,  # where pebble's VA fetches http-01 tokens
            "tlsPort": self.tls_port,  # tls-alpn-01 only; nothing needs to listen there
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds is not None:
            config["certificateValidityPeriod"] = self.validity_seconds
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2))

        # Inherited PEBBLE_* variables (PEBBLE_VA_ALWAYS_VALID, PEBBLE_CHAIN_LENGTH...) would make
        # runs differ between machines: drop them, then set ours.
        pebble_env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        pebble_env.update(PEBBLE_ENV)
        pebble_env.update(self.extra_env)

        dns_stub = {
            "-dns01": f"{LOOPBACK}:{self.dns_port}",
            "-defaultIPv4": self.edge_address or LOOPBACK,
            "-defaultIPv6": "",  # no AAAA answers: the webroot server listens on IPv4 only
            # Only the DNS stub is wanted; its challenge servers would take fixed ports.
            "-http01": "",
            "-https01": "",
            "-tlsalpn01": "",
            "-management": f"{LOOPBACK}:{self.challtestsrv_port}",  # cannot be disabled
        }
        self._procs["challtestsrv"] = _spawn(
            [str(find_executable("pebble-challtestsrv")), *itertools.chain(*dns_stub.items())],
            self.log_path("challtestsrv"),
            cwd=self.workdir,
        )
        self._procs["webroot-http"] = _spawn(
            [
                sys.executable,
                "-m",
                "http.server",
                str(self.http_port),
                "--bind",
                LOOPBACK,
                "--directory",
                self.webroot,
            ],
            self.log_path("webroot-http"),
            cwd=self.workdir,
        )
        self._procs["pebble"] = _spawn(
            [
                str(find_executable("pebble")),
                "-config",
                str(self.config_path),
                "-dnsserver",
                f"{LOOPBACK}:{self.dns_port}",
            ],
            self.log_path("pebble"),
            cwd=self.workdir,
            env=pebble_env,
        )

    def _wait_ready(self) -> str | None:
        """None once all three answer, else why not."""
        deadline = time.monotonic() + START_TIMEOUT
        dns_ok = http_ok = False
        last_error = "not tried"
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    return f"{name} exited with code {proc.returncode}"
            try:
                dns_ok = dns_ok or _dns_answers(self.dns_port)
                if not http_ok:
                    _fetch(f"http://{LOOPBACK}:{self.http_port}/")
                    http_ok = True
                if dns_ok:
                    directory = json.loads(_fetch(self.directory_url, cafile=self.ca_bundle))
                    if "newNonce" in directory:
                        return None
                    last_error = f"unexpected directory {directory!r}"
                else:
                    last_error = "DNS stub gives no answer"
            # URLError is an OSError; a listener caught half-ready may give HTTPException.
            except (OSError, ValueError, http.client.HTTPException) as error:
                last_error = repr(error)
            time.sleep(0.05)
        return f"not ready after {START_TIMEOUT:.0f} s ({last_error})"

    def _output(self) -> str:
        return "\n".join(
            f"--- {name} output ({self.log_path(name)}) ---\n{_tail(self.log_path(name), 60)}"
            for name in self.PROCESSES
        )


# --- certbot -------------------------------------------------------------------------------------


def _default_certbot() -> str:
    # The venv's certbot even when the venv is not activated (sys.executable is its python).
    beside = Path(sys.executable).parent / "certbot"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("certbot")
    if found is None:
        raise RuntimeError(f"no certbot beside {sys.executable} nor on PATH")
    return found


class Certbot:
    """Runs the certbot executable with an isolated config/work/logs dir against a Pebble."""

    LOG_TAIL_LINES = 80

    def __init__(
        self,
        pebble: Pebble,
        base_dir: str | Path,
        *,
        certbot_exe: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pebble = pebble
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # certbot makes these itself, with the modes it wants.
        self.config_dir = self.base_dir / "config"
        self.work_dir = self.base_dir / "work"
        self.logs_dir = self.base_dir / "logs"
        self.certbot_exe = certbot_exe or _default_certbot()
        self.env = dict(env or {})
        # (args, seconds) of every run, for the benchmarks and the test summary.
        self.timings: list[tuple[tuple[str, ...], float]] = []
        # stdout + stderr of every run, for the secrets scan that follows each test.
        self.outputs: list[str] = []
        # Private keys made outside certbot's archive (by hand, by lego): the scan looks for them too.
        self.key_files: list[Path] = []

    def command(self, *args: str, cli_ini_path: Path | None = None) -> list[str]:
        cmd = [self.certbot_exe]
        if cli_ini_path is not None:
            cmd += ["--config", str(cli_ini_path)]
        # Global options go before the caller's args (which start with the subcommand): certbot
        # takes the first token that names a verb as the subcommand wherever it is (1.x to 5.x),
        # and none of these values can be mistaken for one.
        cmd += [
            "--config-dir",
            str(self.config_dir),
            "--work-dir",
            str(self.work_dir),
            "--logs-dir",
            str(self.logs_dir),
            "--server",
            self.pebble.directory_url,
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
        ]
        return cmd + list(args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REQUESTS_CA_BUNDLE"] = self.pebble.ca_bundle
        # certbot also reads $XDG_CONFIG_HOME/letsencrypt/cli.ini (~/.config if unset): keep a
        # developer's own file out. /etc/letsencrypt/cli.ini is still read if it exists.
        env["XDG_CONFIG_HOME"] = str(self.base_dir / "xdg")
        # A proxy from the environment must not receive certbot's calls to pebble.
        inherited = env.get("NO_PROXY") or env.get("no_proxy")
        no_proxy = f"{inherited},{LOOPBACK},localhost" if inherited else f"{LOOPBACK},localhost"
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env.update(self.env)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 180, cli_ini: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run certbot; with check, a non-zero exit raises AssertionError with everything needed
        to see why. A timeout always raises AssertionError."""
        cli_ini_path = None
        if cli_ini is not None:
            cli_ini_path = self.base_dir / "cli.ini"
            cli_ini_path.write_text(cli_ini)
        cmd = self.command(*args, cli_ini_path=cli_ini_path)

        def failure(outcome: str, stdout: str, stderr: str) -> AssertionError:
            return AssertionError(self._report(cmd, args, outcome, stdout, stderr))

        started = time.monotonic()
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,  # never a terminal: certbot must not prompt
                capture_output=True,
                text=True,
                env=self.environment(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            self.timings.append((tuple(args), time.monotonic() - started))
            outcome = f"timed out after {timeout} s"
            raise failure(outcome, _text(error.stdout), _text(error.stderr)) from None
        self.timings.append((tuple(args), time.monotonic() - started))
        self.outputs.append(result.stdout + result.stderr)
        if check and result.returncode != 0:
            raise failure(f"exit code {result.returncode}", result.stdout, result.stderr)
        return result

    def live(self, name: str) -> Path:
        return self.config_dir / "live" / name

    def program(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Runs another program (the plugin's command, lego) with this runner's environment and
        `env` on top; its output joins `outputs`, so the secrets scan reads it too."""
        environment = self.environment()
        environment.update(env or {})
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    env=environment, cwd=cwd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            self.outputs.append(_text(error.stdout) + _text(error.stderr))
            raise AssertionError(f"{' '.join(argv)}: timed out after {timeout} s") from None
        self.outputs.append(result.stdout + result.stderr)
        return result

    def executable(self, name: str) -> str:
        """A console script installed beside certbot (the venv's bin), e.g. certbot-incapsula."""
        return str(Path(self.certbot_exe).parent / name)

    def incapsula(self, *args: str, env: Mapping[str, str] | None = None,
                  cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """`certbot-incapsula ARGS` (the command for deploy hooks, sync and status)."""
        return self.program([self.executable("certbot-incapsula"), *args], env=env, cwd=cwd)

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        """certbot-incapsula-status (the alias of `certbot-incapsula status`) on this config dir."""
        return self.program([self.executable("certbot-incapsula-status"),
                             "--config-dir", str(self.config_dir), *args])

    def renewal_conf(self, name: str) -> str:
        return (self.config_dir / "renewal" / f"{name}.conf").read_text()

    def log_text(self) -> str:
        """All of letsencrypt.log*, oldest first (certbot rotates .log -> .log.1 -> .log.2...)."""

        def age(path: Path) -> int:
            suffix = path.name[len("letsencrypt.log") :].lstrip(".")
            return int(suffix) if suffix.isdigit() else 0

        logs = sorted(self.logs_dir.glob("letsencrypt.log*"), key=age, reverse=True)
        return "".join(path.read_text(errors="replace") for path in logs)

    def _report(self, cmd: list[str], args: tuple[str, ...], outcome: str, stdout: str, stderr: str) -> str:
        log_tail = "\n".join(self.log_text().splitlines()[-self.LOG_TAIL_LINES :])
        return (
            f"certbot {' '.join(args)}: {outcome}\n"
            f"--- command ---\n{' '.join(cmd)}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n"
            f"--- letsencrypt.log (last {self.LOG_TAIL_LINES} lines) ---\n{log_tail}\n"
            f"--- pebble (last 40 lines) ---\n{self.pebble.log_tail(40)}"
        )


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
