"""Fixtures for the end-to-end tests: one pebble per session, one certbot dir per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from acme_env import Certbot, Pebble, pebble_available
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# (test id, certbot args, seconds) of every certbot call, printed at the end of the run with
# --certbot-timings. Each test's calls travel as a user property of its teardown report, so that
# under pytest-xdist they reach the controller, which prints the summary.
_TIMINGS: List[Tuple[str, Tuple[str, ...], float]] = []
_TIMINGS_PROPERTY = "certbot_timings"


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    if not pebble_available():
        reason = "pebble not installed (apt-get install pebble): end-to-end ACME tests need it"
        if os.environ.get("CI"):
            # CI must never pass by skipping the end-to-end tests.
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    # Under pytest's tmp dir (kept for the last runs), so the servers' logs survive a failure.
    with Pebble(tmp_path_factory.mktemp("pebble")) as server:
        yield server


@pytest.fixture
def certbot_runner(pebble: Pebble, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Certbot]:
    runner = Certbot(pebble, tmp_path / "certbot")
    yield runner
    assert_no_secret_leaked(runner)
    keep_timings(request, runner)


def keep_timings(request: pytest.FixtureRequest, runner: Certbot) -> None:
    if runner.timings:
        request.node.user_properties.append(
            (_TIMINGS_PROPERTY, [[list(args), seconds] for args, seconds in runner.timings]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collects the certbot timings of each test (run here, or on an xdist worker)."""
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name == _TIMINGS_PROPERTY:
            _TIMINGS.extend((report.nodeid, tuple(args), seconds) for args, seconds in value)  # type: ignore[attr-defined]


# Tests that share an expensive module fixture, by node id prefix: under pytest-xdist they run on
# one worker, so that the fixture runs once (the demo: about 15 s of six certbot runs), not once
# per worker. (xdist's own `--dist loadgroup` does not group on pytest 9.2: pytest-xdist#1386.)
SHARED_WORKER = {"tests/test_sandbox.py::test_demo_": "demo_run"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist load` (scripts/test.sh), but with the tests of SHARED_WORKER kept together."""
    if config.getvalue("dist") != "load":
        return None  # another mode asked for by name: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:  # each test its own unit, but SHARED_WORKER's
            return next((group for prefix, group in SHARED_WORKER.items()
                         if nodeid.startswith(prefix)), nodeid)

    return Scheduling(config, log)  # type: ignore[arg-type]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--certbot-timings", action="store_true", default=False,
                     help="list the duration of every certbot call at the end of the run")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    timings = _TIMINGS
    if not timings or not config.getoption("--certbot-timings"):
        return
    terminalreporter.write_sep("-", "certbot calls")
    for nodeid, args, seconds in timings:
        test = nodeid.rsplit("::", 1)[-1]
        command = args[0] if args else ""
        terminalreporter.write_line(f"{seconds:6.2f} s  certbot {command}  ({test})")


# ----- the Imperva test double, and the plugin's options pointing at it ----------------------

from certmaker import Chain, make_chain  # noqa: E402
from imperva_server import ImpervaServer, Site  # noqa: E402


@pytest.fixture
def imperva() -> Iterator[ImpervaServer]:
    """Two sites: 101 serves www.example.test and example.test; 102 serves shop.example.test."""
    with ImpervaServer() as server:
        server.add_site(Site(101, "www.example.test", ["example.test"]))
        server.add_site(Site(102, "shop.example.test"))
        yield server


# Every API key a test wrote into a credentials file (a second account's too): the leak scan
# after each end-to-end test looks for all of them.
WRITTEN_KEYS: set[str] = set()


def write_credentials(path: Path, api_id: str, api_key: str, mode: int = 0o600) -> Path:
    path.write_text(f"incapsula_api_id = {api_id}\nincapsula_api_key = {api_key}\n")
    os.chmod(path, mode)
    WRITTEN_KEYS.add(api_key)
    return path


@pytest.fixture
def credentials(imperva: ImpervaServer, tmp_path: Path) -> Path:
    return write_credentials(tmp_path / "incapsula.ini", imperva.api_id, imperva._api_key)


# Most end-to-end tests run without an edge (and without root): the double's `dns` entries then
# name an address where nothing listens. The pre-flight stays on, as users have it: it cannot
# reach that edge, says so in one line and lets certbot go on (issue 17). The edge check is off:
# with nothing to wait for, its retries would add a second or two to every upload. The edge
# tests (test_e2e_edge.py) pass the real values.
NO_EDGE_ARGS = ["--incapsula-edge-wait", "0"]


@pytest.fixture
def plugin_args(imperva: ImpervaServer, credentials: Path) -> List[str]:
    """The installer options every end-to-end test passes (pebble is a test CA; no edge). Tests
    slice it: the credentials stay at [2:4], the API URL and allow-staging last."""
    return ["-i", "incapsula", "--incapsula-credentials", str(credentials), *NO_EDGE_ARGS,
            "--incapsula-api-url", imperva.url, "--incapsula-allow-staging"]


TEST_API_KEY = ImpervaServer()._api_key  # the double's default key, used by every e2e test


def private_key_lines(pem: bytes) -> List[str]:
    """The PEM lines of a key that carry private material (the others also hold the public key,
    which certbot rightly logs in its CSR): each line is 48 bytes of the DER."""
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        secret = key.private_numbers().private_value
    else:
        secret = key.private_numbers().d  # type: ignore[union-attr]
    raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
    start = der.find(raw)
    assert start >= 0
    lines = [line for line in pem.decode().splitlines() if line and "-----" not in line]
    return [line for i, line in enumerate(lines) if i * 48 < start + len(raw) and start < (i + 1) * 48]


def private_key_bodies(runner: Certbot) -> List[str]:
    """The private parts of every key certbot made for this test, and of the runner's others."""
    bodies = []
    for path in [*runner.config_dir.glob("archive/*/privkey*.pem"), *runner.key_files]:
        bodies += private_key_lines(path.read_bytes())
    return bodies


def assert_no_secret_leaked(runner: Certbot) -> None:
    """After every end-to-end test: neither the API key nor any private key line may appear in
    anything certbot or the plugin printed or wrote (logs, renewal configs, the plugin's state)."""
    secrets = [TEST_API_KEY, *sorted(WRITTEN_KEYS), *private_key_bodies(runner)]
    places = [(f"output of run {i}", text) for i, text in enumerate(runner.outputs)]
    # The credentials file at its default place is where the key belongs.
    credentials = runner.config_dir / "incapsula.ini"
    for root in (runner.config_dir, runner.logs_dir, runner.work_dir):
        for path in root.rglob("*") if root.exists() else []:
            if (path.is_file() and not path.name.startswith("privkey") and "keys" not in path.parts
                    and path != credentials):
                places.append((str(path), path.read_text(errors="replace")))
    for where, text in places:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"


@pytest.fixture(scope="module")
def ec_chain() -> Chain:
    """An ECDSA P-256 chain for www.example.test and example.test (certmaker's test CA)."""
    return make_chain(["www.example.test", "example.test"])


@pytest.fixture(scope="module")
def rsa_chain() -> Chain:
    return make_chain(["www.example.test", "example.test"], "rsa")


# ----- Imperva's edge (issue 12): ports 80 and 443 on a 127.77.x.y, so root -------------------

from imperva_edge import ImpervaEdge, need_root, unused_loopback_address  # noqa: E402


def require_edge() -> None:
    """Skip (fail under CI) where the edge double cannot bind its ports."""
    reason = need_root()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(f"{reason}: run the tests as root")


@pytest.fixture
def imperva_edge(imperva: ImpervaServer) -> Iterator[ImpervaEdge]:
    """The edge of the `imperva` double's sites, on an address of its own; no origin yet. While it
    runs, the double's `dns` entries point at it."""
    require_edge()
    with ImpervaEdge(imperva, hold_seconds=5) as edge:
        yield edge


@pytest.fixture(scope="session")
def edge_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A pebble whose VA reaches the webroot only through an Imperva edge (port 80 of the address
    its DNS answers); `edge_certbot_runner` points it at each test's edge."""
    require_edge()
    if not pebble_available():
        reason = "pebble not installed (apt-get install pebble): end-to-end ACME tests need it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    # Until a test's edge exists, the DNS answers an address where nothing listens.
    with Pebble(tmp_path_factory.mktemp("edge-pebble"), edge_address=unused_loopback_address()) as server:
        yield server


@pytest.fixture
def edge_certbot_runner(edge_pebble: Pebble, imperva_edge: ImpervaEdge, tmp_path: Path,
                        request: pytest.FixtureRequest) -> Iterator[Certbot]:
    """certbot against `edge_pebble`, whose http-01 requests travel CA -> `imperva_edge` -> the
    webroot's server (the edge's origin)."""
    edge_pebble.set_edge_address(imperva_edge.address)
    imperva_edge.origin = edge_pebble.origin_url
    runner = Certbot(edge_pebble, tmp_path / "certbot")
    yield runner
    assert_no_secret_leaked(runner)
    keep_timings(request, runner)


@pytest.fixture
def deployer(server, tmp_path):
    """The core's per-site operations on the `server` fixture of the test's module (the API
    double), with fast retries and records of its own."""
    from certbot_incapsula.api import ImpervaClient, RetryPolicy
    from certbot_incapsula.core import Deployer
    from certbot_incapsula.records import Records

    client = ImpervaClient(server.api_id, server._api_key, server.url,
                           retry=RetryPolicy(base=0.01, cap=0.02, budget=5))
    yield Deployer(client, Records(str(tmp_path / "config")))
    client.close()


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    """An empty webroot of the test's own (a module may fill its own instead)."""
    root = tmp_path / "webroot"
    root.mkdir()
    return root


@pytest.fixture
def origin_edge(imperva_edge, webroot: Path):
    """The test's edge in front of an origin serving `webroot`: (edge, webroot)."""
    from imperva_edge import Origin

    with Origin(webroot) as origin:
        imperva_edge.origin = origin.url
        yield imperva_edge, webroot
