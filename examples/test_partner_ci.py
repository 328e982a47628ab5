"""A partner handoff in CI: copy this file into your own test suite.

Two organizations, each with its own CA, keys, tenant and policy, exchange an invoice
over real mTLS. ``pip install object-migration-gateway`` beside pytest is all it needs:
the ``gateway_world`` fixture comes from the gateway's pytest plugin (docs/testing-plugin.md).

Run it with ``pytest examples/test_partner_ci.py``.
"""

from __future__ import annotations

import signal

from gateway.testing import HostSpec

ACME = "spiffe://acme.example/cluster/eu/gateway"  # the invoice's owner
GLOBEX = "spiffe://globex.example/cluster/us/gateway"  # the partner that processes it
INVOICE = "obj://acme.example/billing/invoice-1001"

#: What Acme lets the invoice do, and where it may go.
SPEC = {
    "data": {"invoice": 1001, "amount": 2400, "status": "open"},
    "grant": {
        "audience": "spiffe://globex.example",
        "valid_for_days": 7,
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read", "write"]},
        ],
        "constraints": {"hosts": ["spiffe://acme.example/*", "spiffe://globex.example/*"]},
    },
}
#: Short timeouts so that recovery finishes within seconds in CI.
FAST = {"rpc_timeout_seconds": 2, "retry_attempts": 2, "stage_timeout_seconds": 1}


def organizations() -> list[HostSpec]:
    return [
        HostSpec(host_id=ACME, tenants=("billing",), handoff=FAST),
        # Globex lets arriving objects publish, nothing more: the invoice is narrowed.
        HostSpec(
            host_id=GLOBEX,
            tenants=("billing",),
            handoff=FAST,
            policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
        ),
    ]


def test_invoice_goes_to_the_partner_narrowed_and_comes_back(gateway_world):
    world = gateway_world(organizations())
    world.create(ACME, INVOICE, spec=SPEC, tenant="billing")

    assert world.handoff(INVOICE, source=ACME, to=GLOBEX, tenant="billing") == GLOBEX
    at_globex = world.assert_invariants(INVOICE, tenant="billing")  # one copy, no widening
    assert at_globex.authority.permits("pubsub:alerts/overdue", "publish")
    assert not at_globex.authority.permits("state:self", "write")

    assert world.handoff(INVOICE, source=GLOBEX, to=ACME, tenant="billing") == ACME
    assert world.assert_invariants(INVOICE, tenant="billing").epoch == 2


def test_a_lost_commit_still_ends_with_one_copy(gateway_world):
    world = gateway_world(organizations())
    world.create(ACME, INVOICE, spec=SPEC, tenant="billing")
    world.network(ACME).drop("commit", to=GLOBEX)  # the next Commit never arrives

    assert world.handoff(INVOICE, source=ACME, to=GLOBEX, tenant="billing") == GLOBEX
    assert [d.rpc for d in world.network(ACME).log] == ["commit"]
    world.assert_invariants(INVOICE, tenant="billing")


def test_a_partner_crash_while_staging_is_recovered(gateway_world):
    world = gateway_world(organizations(), mode="process")  # `gateway serve` processes
    world.create(ACME, INVOICE, spec=SPEC, tenant="billing")
    world.restart(GLOBEX, crash_at=["destination.after-stage"])

    failed = world.migrate(INVOICE, source=ACME, to=GLOBEX, tenant="billing")
    assert failed.returncode != 0
    assert world.wait_exited(GLOBEX) == -signal.SIGKILL
    world.restart(GLOBEX)

    assert world.wait_settled(INVOICE, tenant="billing") == ACME  # presumed abort
    world.assert_invariants(INVOICE, tenant="billing")
