"""The loop's retry rule: librdkafka's retriable errors are called again, others raise at once."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from gateway.runtime.transactional import is_retriable, retry_retriable


def _failing(errors: list[KafkaError]):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if errors:
            raise KafkaException(errors.pop(0))
        return "done"
    return call, calls


def test_a_retriable_timeout_is_called_again_until_it_succeeds() -> None:
    call, calls = _failing([KafkaError(KafkaError._TIMED_OUT, "t", retriable=True)] * 2)
    assert retry_retriable("commit_transaction", call) == "done"
    assert calls["n"] == 3


def test_abortable_and_fatal_errors_are_not_retried() -> None:
    for error in (KafkaError(KafkaError._STATE, "abort", retriable=True, txn_requires_abort=True),
                  KafkaError(KafkaError._FENCED, "fenced", fatal=True)):
        assert not is_retriable(error)
        call, calls = _failing([error])
        with pytest.raises(KafkaException):
            retry_retriable("commit_transaction", call)
        assert calls["n"] == 1


def test_retries_are_bounded() -> None:
    call, calls = _failing([KafkaError(KafkaError._TIMED_OUT, "t", retriable=True)] * 20)
    with pytest.raises(KafkaException):
        retry_retriable("abort_transaction", call, attempts=4)
    assert calls["n"] == 4
