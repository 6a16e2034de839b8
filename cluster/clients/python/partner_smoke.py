#!/usr/bin/env python3
"""A partner's first calls from Python, with stubs generated from proto/ by grpcio-tools.

Usage: python3 cluster/clients/python/partner_smoke.py --addr 127.0.0.1:50051
Needs: pip install grpcio grpcio-tools. Exits non-zero on the first check that fails.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[3]


def generate_stubs(out_dir: pathlib.Path) -> None:
    proto_root = REPO / "proto"
    for name in ("tally/v1/ledger.proto", "tally/v1/admin.proto"):
        status = protoc.main(
            ["protoc", f"-I{proto_root}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", name]
        )
        if status != 0:
            sys.exit(f"protoc failed on {name}")


CHECKS = []


def check(condition, what):
    """Records one check; the first failing one ends the run with its description."""
    if not condition:
        sys.exit(f"FAILED: {what}")
    CHECKS.append(what)


def expect_error(call, code, needle):
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"expected {code}, got {error.code()}: {error.details()}")
        check(needle in error.details(), f"{error.details()!r} should mention {needle!r}")
        return
    check(False, f"expected {code}, the call succeeded")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    args = parser.parse_args()
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="tally-python-stubs-"))
    generate_stubs(out_dir)
    sys.path.insert(0, str(out_dir))
    from tally.v1 import admin_pb2, admin_pb2_grpc, ledger_pb2, ledger_pb2_grpc  # noqa: E402

    channel = grpc.insecure_channel(args.addr)
    admin = admin_pb2_grpc.AdminStub(channel)
    ledger = ledger_pb2_grpc.LedgerStub(channel)
    suffix = str(time.time_ns())[-9:]
    created = admin.CreatePartner(
        admin_pb2.CreatePartnerRequest(partner_id=f"py{suffix}", currency=f"PY{suffix}", display_name="Python")
    )
    auth = (("authorization", f"Bearer {created.api_key}"),)

    enrolled = ledger.Enrol(ledger_pb2.EnrolRequest(idempotency_key="e1", member_id="ada"), metadata=auth)
    check(enrolled.balances[0].balance_points == 0, "a new member starts at zero")
    earn = ledger_pb2.EarnRequest(idempotency_key="k1", member_id="ada", amount_points=500)
    first = ledger.Earn(earn, metadata=auth)
    again = ledger.Earn(earn, metadata=auth)
    check(not first.replay and again.replay, "the retry is a replay")
    check(again.log_index == first.log_index, "the replay carries the original log index")
    check(again.balances[0].balance_points == 500, "the earn was applied once")

    hold = ledger.AuthorizeHold(
        ledger_pb2.AuthorizeHoldRequest(idempotency_key="h1", member_id="ada", amount_points=200, expires_in_ms=60_000),
        metadata=auth,
    )
    check(hold.hold.status == ledger_pb2.HOLD_STATUS_OPEN, "the hold is open")
    check(hold.balances[0].available_points == 300, "held points are not available")
    captured = ledger.CaptureHold(
        ledger_pb2.CaptureHoldRequest(idempotency_key="c1", hold_idempotency_key="h1", member_id="ada", amount_points=150),
        metadata=auth,
    )
    check(captured.balances[0].balance_points == 350, "a partial capture moves only the captured points")
    check(captured.balances[0].held_points == 0, "a capture releases the rest of the hold")

    expect_error(
        lambda: ledger.Redeem(
            ledger_pb2.RedeemRequest(idempotency_key="r1", member_id="ada", amount_points=10_000), metadata=auth
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "insufficient",
    )
    expect_error(
        lambda: ledger.Earn(ledger_pb2.EarnRequest(idempotency_key="k1", member_id="ada", amount_points=1), metadata=auth),
        grpc.StatusCode.ALREADY_EXISTS,
        "amount_points",
    )
    expect_error(lambda: ledger.Earn(earn), grpc.StatusCode.UNAUTHENTICATED, "authorization")

    balance = ledger.GetBalance(ledger_pb2.GetBalanceRequest(member_id="ada"), metadata=auth)
    check(balance.linearizable and balance.balance.balance_points == 350, "a linearizable balance read")
    statement = ledger.ListStatement(
        ledger_pb2.ListStatementRequest(member_id="ada", order=ledger_pb2.STATEMENT_ORDER_OLDEST_FIRST), metadata=auth
    )
    operations = [line.operation for line in statement.lines]
    check(operations == ["earn", "capture_hold"], f"statement oldest first, got {operations}")
    print(f"python client: {len(CHECKS)} checks passed")


if __name__ == "__main__":
    main()
