"""Consent and purposes (pure): the consent table's semantics and the purposes a policy declares."""
