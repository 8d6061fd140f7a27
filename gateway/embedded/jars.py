"""The Apache Kafka jars for the embedded broker: resolved from Maven Central by Maven, once.

The broker is Apache Kafka itself (the `kafka_2.13` artifact and its runtime dependencies), not a
look-alike, so every guarantee the tests prove holds on the broker production runs. Maven resolves
the pinned version and its dependencies into ``<cache>/kafka-<version>/libs``; a stamp file marks a
complete copy, so later starts reuse it without asking the network.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

from gateway.errors import GatewayError
from gateway.settings import kafka_cache_dir

# Pinned; docker-compose.yml runs the `apache/kafka` image of the same version.
KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# Kafka 4 logs through SLF4J 2 to Log4j 2; Maven would otherwise pick SLF4J 1.7 from a transitive pin.
LOGGING_ARTIFACTS = (("org.slf4j", "slf4j-api", "2.0.17"),
                     ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"))
STAMP = ".complete"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>privacy-gateway</groupId><artifactId>embedded-kafka</artifactId><version>1</version>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def cache_dir() -> Path:
    """GATEWAY_KAFKA_CACHE, else $XDG_CACHE_HOME/privacy-gateway, else ~/.cache/privacy-gateway
    (declared in gateway.settings)."""
    return kafka_cache_dir()


def require_tool(name: str, purpose: str, who: str = "the embedded Apache Kafka broker",
                 install: str = "Java 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven)") -> str:
    path = shutil.which(name)
    if path is None:
        raise GatewayError(f"'{name}' is not on PATH: {who} needs it to {purpose}; install {install}")
    return path


def kafka_libs(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """The directory holding every jar the broker needs, fetched by Maven on first use."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if (libs / STAMP).is_file():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:  # one fetch at a time; the others wait and reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (libs / STAMP).is_file():
            _fetch(libs, version, quiet)
    return libs


def _fetch(libs: Path, version: str, quiet: bool) -> None:
    mvn = require_tool("mvn", "fetch the Kafka jars from Maven Central")
    dependencies = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", version), *LOGGING_ARTIFACTS]
    pom = _POM.format(dependencies="\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in dependencies))
    with tempfile.TemporaryDirectory(dir=libs.parent, prefix=".fetch-") as work:
        staging = Path(work) / "libs"
        (Path(work) / "pom.xml").write_text(pom)
        command = [mvn, "-B", "-f", str(Path(work) / "pom.xml"), "dependency:copy-dependencies",
                   f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            command.insert(1, "-q")
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(staging.glob(f"kafka_{SCALA_VERSION}-{version}.jar")):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise GatewayError(f"Maven could not fetch Apache Kafka {version} (exit {result.returncode}):\n{tail}")
        (staging / STAMP).write_text(version + "\n")
        if libs.exists():  # an incomplete copy of an earlier, interrupted fetch
            shutil.rmtree(libs)
        staging.rename(libs)
