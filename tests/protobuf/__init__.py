"""Protobuf test schemas shared by the unit and broker tests."""

from pathlib import Path

ORDERS_PROTO = Path(__file__).resolve().parent / "orders.proto"
