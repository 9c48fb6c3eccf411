"""Signed, expiring links for customers and dispatch (itsdangerous).

A token binds one shipment, one user, one action and an expiry, and is signed with a key
from ``secrets`` (config): the customer's cancel / postpone / accept links with
``link_signing_key``, dispatch's proof of delivery with ``dispatch_feed_key``. Feedback is
applied only when its token verifies for the row's own shipment, user, kind and time;
anything else is refused and counted with the reason. Knowing a user id and a date (the
shipment id is derived from them) is not enough to act on anyone's shipment.
"""
from __future__ import annotations

from datetime import datetime, timezone

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "bundlecast.shipment-feedback.v1"
CUSTOMER_ACTIONS = {"shipment_cancel": "cancel", "shipment_postpone": "postpone", "shipment_accept": "accept"}
DISPATCH_ACTIONS = {"shipment_delivered": "delivered", "shipment_failed": "failed"}


def _serializer(key: str) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=SALT)


def _utc(ts) -> datetime:
    ts = ts.to_pydatetime() if hasattr(ts, "to_pydatetime") else ts
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def sign(key: str, shipment_id: str, user_id: str, action: str, expires) -> str:
    """A token for ``action`` on the shipment, valid until ``expires`` (UTC)."""
    return _serializer(key).dumps({"s": shipment_id, "u": user_id, "a": action,
                                   "e": _utc(expires).isoformat(timespec="seconds")})


def refusal(key: str, token, shipment_id: str, user_id: str, action: str, at) -> str | None:
    """Why a token does not allow ``action`` on the shipment by the user at ``at``; None if it does."""
    if not isinstance(token, str) or not token:
        return "missing_token"
    try:
        claims = _serializer(key).loads(token)
    except BadSignature:
        return "bad_signature"
    if not isinstance(claims, dict):
        return "bad_signature"
    if claims.get("s") != shipment_id:
        return "wrong_shipment"
    if claims.get("u") != user_id:
        return "wrong_user"
    if claims.get("a") != action:
        return "wrong_action"
    try:
        expires = datetime.fromisoformat(claims["e"])
    except (KeyError, TypeError, ValueError):
        return "bad_signature"
    return "expired" if _utc(at) > expires else None
