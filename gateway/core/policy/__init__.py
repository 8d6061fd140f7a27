"""The policy: plan types, the compiler from annotated schemas, lint, the record timestamp's treatment."""
