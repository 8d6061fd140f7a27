"""The embedded Apache Kafka broker for demos and tests (jars from Maven Central, run by `java`)."""
