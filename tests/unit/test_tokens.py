"""Customer and dispatch tokens (jobs/proactive/tokens.py, feedback.refusals): a valid link
acts on its own shipment only; every forgery the old scheme allowed is refused."""
import hashlib
import hmac
from datetime import datetime

import pandas as pd
import pytest

from bundlecast.jobs.proactive.feedback import refusals
from bundlecast.jobs.proactive.notifications import link_tokens
from bundlecast.jobs.proactive.tokens import refusal, sign

KEYS = {"link_signing_key": "L" * 40, "dispatch_feed_key": "D" * 40}
SHIPS = pd.DataFrame({"shipment_id": ["SH1", "SH2"], "user_id": ["U1", "U2"]})
DAY = "2026-11-21"
LINKS = link_tokens(KEYS["link_signing_key"], "SH1", "U1", DAY, 2)   # valid until 2026-11-23 00:00 UTC
BEFORE, AFTER = datetime(2026, 11, 21, 9), datetime(2026, 11, 23, 0, 0, 1)


def _row(token, kind="shipment_cancel", ref="SH1", user="U1", ts=BEFORE):
    return {"feedback_id": "F", "feedback_ts": ts, "user_id": user, "kind": kind, "reference_id": ref, "token": token}


def _refused(*rows):
    return list(refusals(pd.DataFrame(rows), SHIPS, KEYS))


def test_the_links_own_token_is_accepted_for_each_action():
    assert _refused(_row(LINKS["cancel_token"]), _row(LINKS["postpone_token"], "shipment_postpone"),
                    _row(LINKS["accept_token"], "shipment_accept")) == [None, None, None]


@pytest.mark.parametrize("row, reason", [
    # the old scheme: HMAC of the shipment id with the committed default key
    (_row(hmac.new(b"bundlecast-dev-secret", b"SH1", hashlib.sha256).hexdigest()[:32]), "bad_signature"),
    (_row(None), "missing_token"),
    (_row(LINKS["cancel_token"], kind="shipment_postpone"), "wrong_action"),      # cancel link used to postpone
    (_row(LINKS["cancel_token"], ts=AFTER), "expired"),
    (_row(LINKS["cancel_token"], ref="SH2", user="U2"), "wrong_shipment"),       # replayed on another shipment
    (_row(link_tokens("bundlecast-dev-secret" * 2, "SH1", "U1", DAY, 2)["cancel_token"]), "bad_signature"),
    (_row(LINKS["cancel_token"], user="U2"), "wrong_user"),                       # someone else's row
    (_row(LINKS["cancel_token"][:-2] + "AA"), "bad_signature"),                   # tampered
    (_row(LINKS["cancel_token"], kind="shipment_delivered"), "bad_signature"),    # customer key is not dispatch's
])
def test_forged_replayed_wrong_action_and_expired_tokens_are_refused(row, reason):
    assert _refused(row) == [reason]


def test_dispatch_proof_needs_dispatchs_key():
    proof = sign(KEYS["dispatch_feed_key"], "SH1", "U1", "shipment_delivered", datetime(2026, 11, 25))
    assert _refused(_row(proof, kind="shipment_delivered")) == [None]
    assert _refused(_row(proof, kind="shipment_failed")) == ["wrong_action"]


def test_a_token_expires_at_the_stated_time():
    token = sign("k" * 40, "SH1", "U1", "shipment_cancel", datetime(2026, 11, 22))
    assert refusal("k" * 40, token, "SH1", "U1", "shipment_cancel", datetime(2026, 11, 21, 23, 59)) is None
    assert refusal("k" * 40, token, "SH1", "U1", "shipment_cancel", datetime(2026, 11, 22, 0, 0, 1)) == "expired"
