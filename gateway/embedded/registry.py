"""A real Schema Registry for tests: Apicurio Registry's Confluent-compatible API on 127.0.0.1.

Apicurio Registry ships to Maven Central as a Quarkus library jar, not a runnable one, so Maven
builds it once: the project in ``registry/pom.xml`` beside this module (its comment says which
release and why), plus the two source files below, is copied into
``<cache>/apicurio-registry-<version>-<hash>`` (the hash of those three files) and
``mvn -q package`` makes ``quarkus-app/quarkus-run.jar`` there; a stamp file marks a complete
build, so later starts reuse it without Maven or the network. A cold build downloads about
220 MB and takes about 3 minutes; a start takes about 3 seconds.

EmbeddedRegistry starts that jar on a free port with in-memory storage (H2), waits until the API
answers, and stops it on exit. Its JVM output goes to a log file that goes with a clean stop
(unless `keep_log`) and stays, named in `failure` and `log_path`, when the registry failed.

One difference from Confluent's registry: a schema is matched by its text, so the same schema
registered again as the same string keeps its id, but reformatted it is a new id and version.
(Apicurio's `registry.ccompat.use-canonical-hash=true` would match it, but this release then stores
and serves the canonical form, record fields sorted by name: another Avro schema. It stays off.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.embedded.broker import free_port, java_major_version, stop_jvm
from gateway.embedded.jars import cache_dir, require_tool
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

APICURIO_VERSION = "2.4.2.Final"  # pinned in registry/pom.xml; here it names the cache directory
POM = Path(__file__).with_name("registry") / "pom.xml"
CCOMPAT_PATH = "/apis/ccompat/v7"  # the Confluent Schema Registry API (v7 paths)
STAMP = ".complete"
JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true")

# The project's one class: the bean the left-out config-index extension would have built (see the POM).
_PRODUCER_JAVA = """package privacygateway.registry;

import java.util.List;

import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

@ApplicationScoped
public class DynamicConfigPropertyListProducer {

    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(List.of());
    }
}
"""
# Build-time settings, above the app's own application.properties (ordinal 250): index the app jar
# (it has no Jandex index) and lay it out as a fast-jar (the app asks for a legacy jar in prod).
_APPLICATION_PROPERTIES = """config_ordinal=260
quarkus.index-dependency.registry.group-id=io.apicurio
quarkus.index-dependency.registry.artifact-id=apicurio-registry-app
%prod.quarkus.package.type=fast-jar
"""


def _project_files() -> dict[str, bytes]:
    return {
        "pom.xml": POM.read_bytes(),
        "src/main/java/privacygateway/registry/DynamicConfigPropertyListProducer.java": _PRODUCER_JAVA.encode(),
        "src/main/resources/application.properties": _APPLICATION_PROPERTIES.encode(),
    }


def _require(name: str, purpose: str) -> str:
    return require_tool(name, purpose, who="the embedded Schema Registry (Apicurio)",
                        install="a JDK 17+ and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)")


def registry_app(quiet: bool = True, timeout_s: float = 1200.0) -> Path:
    """The directory holding ``quarkus-run.jar``, built by Maven on first use (one build at a time)."""
    files = _project_files()
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + body + b"\0" for name, body in sorted(files.items())))
    root = cache_dir() / f"apicurio-registry-{APICURIO_VERSION}-{digest.hexdigest()[:12]}"
    app = root / "quarkus-app"
    if (app / STAMP).is_file():
        return app
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # the others wait, then reuse what the first one built
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (app / STAMP).is_file():
            _build(root, app, files, quiet, timeout_s)
    return app


def _build(root: Path, app: Path, files: dict[str, bytes], quiet: bool, timeout_s: float) -> None:
    mvn = _require("mvn", "build it from Maven Central")
    _require("javac", "compile the one class of its Maven project")
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as work:
        project = Path(work)
        for name, body in files.items():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            (project / name).write_bytes(body)
        command = [mvn, "-B", "-f", str(project / "pom.xml"), "package"]
        if quiet:
            command.insert(1, "-q")
        build_log = root / "build.log"
        with open(build_log, "wb") as out:
            try:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise GatewayError(f"Maven did not build Apicurio Registry {APICURIO_VERSION} within {timeout_s:.0f}s; "
                                   f"its output is in {build_log}") from None
        built = project / "target" / "quarkus-app"
        if result.returncode != 0 or not (built / "quarkus-run.jar").is_file():
            tail = "\n".join(build_log.read_text(errors="replace").strip().splitlines()[-15:])
            raise GatewayError(f"Maven could not build Apicurio Registry {APICURIO_VERSION} "
                               f"(exit {result.returncode}; all its output is in {build_log}):\n{tail}")
        (built / STAMP).write_text(APICURIO_VERSION + "\n")
        if app.exists():  # an incomplete copy of an earlier, interrupted build
            shutil.rmtree(app)
        built.rename(app)
    build_log.unlink(missing_ok=True)


class EmbeddedRegistry:
    """Start Apicurio Registry on 127.0.0.1:PORT with in-memory storage, wait until its Confluent-compatible
    API answers, stop it on exit (SIGTERM, then SIGKILL). Every start begins with an empty registry."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, heap_mb: int = 256,
                 keep_log: bool = False) -> None:
        self.port = port or free_port()
        self.heap_mb = heap_mb
        self.data_dir = Path(tempfile.mkdtemp(prefix="gateway-registry-"))  # its cwd and java.io.tmpdir
        self.log_path = log_path or self.data_dir / "registry.log"
        self.keep_log = keep_log
        self.process: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None  # why the registry failed (its log is kept), None while all is well

    @property
    def url(self) -> str:
        """The Schema Registry URL for clients (confluent_kafka's SchemaRegistryClient ``url``)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def version(self) -> str:
        return APICURIO_VERSION

    def start(self, timeout_s: float = 120.0, build_timeout_s: float = 1200.0) -> EmbeddedRegistry:
        try:
            java = _require("java", "run it")
            if java_major_version(java) < 17:
                raise GatewayError(f"the embedded Schema Registry is run on Java 17 or newer; '{java}' is older")
            app = registry_app(timeout_s=build_timeout_s)
        except GatewayError:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # nothing ran: nothing to keep
            raise
        command = [java, f"-Xms{min(64, self.heap_mb)}m", f"-Xmx{self.heap_mb}m", *JVM_OPTIONS,
                   f"-Djava.io.tmpdir={self.data_dir}",
                   "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                   # in-memory storage (H2, fixed at build time), one database per registry, a small pool
                   # (the app asks for 20 to 100 connections)
                   f"-Dquarkus.datasource.jdbc.url=jdbc:h2:mem:registry-{self.port}",
                   "-Dquarkus.datasource.jdbc.initial-size=2", "-Dquarkus.datasource.jdbc.min-size=2",
                   "-Dquarkus.datasource.jdbc.max-size=20",
                   "-jar", str(app / "quarkus-run.jar")]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.data_dir)  # no .env or config/ of the caller's cwd
        try:
            self._wait_until_ready(timeout_s)
        except GatewayError as exc:
            self.stop(failure=str(exc))
            raise GatewayError(f"{exc}; the registry log is kept at {self.log_path}") from None
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise GatewayError(f"the Schema Registry exited with code {self.process.returncode} while starting")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    connection.request("GET", f"{CCOMPAT_PATH}/subjects")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            time.sleep(0.1)
        raise GatewayError(f"the Schema Registry on 127.0.0.1:{self.port} did not answer GET {CCOMPAT_PATH}/subjects "
                           f"within {timeout_s:.0f}s")

    def stop(self, failure: str | None = None) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after 30 s). The log goes when it stopped cleanly (unless
        `keep_log`); a registry that failed keeps its log, moved out of the temporary directory, and says where."""
        process, self.process = self.process, None
        if process is not None:
            stopped = stop_jvm(process, "the Schema Registry")  # always stopped, even with a failure in hand
            failure = failure or stopped
        if failure is not None:
            self.failure = failure
        if failure is not None or (process is not None and self.keep_log):
            if self.log_path.is_relative_to(self.data_dir):  # out of the directory that goes below
                kept = Path(tempfile.gettempdir()) / f"gateway-registry-{self.port}.log"
                with contextlib.suppress(OSError):
                    shutil.move(self.log_path, kept)
                    self.log_path = kept
            if failure is not None:
                log.warning("the embedded Schema Registry failed; its log is kept",
                            extra={"failure": self.failure, "log": str(self.log_path)})
        elif process is not None:
            self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRegistry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
