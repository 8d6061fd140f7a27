"""Everything that talks to Kafka: clients, topics, the transactional loop, changelogs, the jobs.

Nothing outside this package (and the embedded broker) imports confluent-kafka: transforms,
policy, keys and DP mechanisms stay pure and testable without a broker.
"""
