"""Feed tickets: a browser's websocket or ``EventSource`` cannot send an ``Authorization``
header, and a long-lived token in a URL ends up in proxies' and servers' access logs. A
client with a token asks ``POST /api/feed-tickets`` for a ticket instead: random, valid for
``TICKET_TTL_S``, good for one feed connection, carrying the access of the token that asked
for it (its scopes and agents), and kept only in this process's memory (a ticket is
redeemed at the replica that issued it: put the feed behind sticky sessions, or ask for
the ticket through the same connection's host).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .access import Access, access_of
from .requests import no_body, only

TICKET_TTL_S = 30.0
#: tickets held at once, at most: the oldest go first (an unredeemed flood cannot grow memory)
TICKETS_MAX = 10_000


@dataclass(frozen=True)
class Ticket:
    """A ticket issued: its value, what it grants and when it expires (monotonic)."""

    value: str
    access: Access
    expires_m: float


class FeedTickets:
    """Issued tickets until redeemed or expired."""

    def __init__(
        self, ttl_s: float = TICKET_TTL_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._held: OrderedDict[str, Ticket] = OrderedDict()

    def issue(self, access: Access) -> Ticket:
        """A new ticket carrying ``access``."""
        self._prune()
        ticket = Ticket(secrets.token_urlsafe(24), access, self._monotonic() + self.ttl_s)
        self._held[ticket.value] = ticket
        while len(self._held) > TICKETS_MAX:
            self._held.popitem(last=False)
        return ticket

    def redeem(self, value: str) -> Access | None:
        """What a ticket grants, once: None when unknown, used or expired."""
        ticket = self._held.pop(value, None)
        if ticket is None or ticket.expires_m < self._monotonic():
            return None
        return ticket.access

    def _prune(self) -> None:
        now = self._monotonic()
        while self._held and next(iter(self._held.values())).expires_m < now:
            self._held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)


TICKETS: web.AppKey[FeedTickets] = web.AppKey("feed_tickets", FeedTickets)

routes = web.RouteTableDef()


@routes.post("/api/feed-tickets", name="feed_tickets")
async def issue_ticket(request: web.Request) -> web.Response:
    """A ticket for one websocket or event-stream connection, with this token's access."""
    only(request, set())
    await no_body(request)
    tickets = request.config_dict[TICKETS]
    ticket = tickets.issue(access_of(request))
    return web.json_response(
        {"ticket": ticket.value, "expires_in_s": tickets.ttl_s, "single_use": True},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


__all__ = ["TICKETS", "TICKET_TTL_S", "FeedTickets", "Ticket", "routes"]
