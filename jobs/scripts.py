"""The store's Lua scripts (jobs/lua/), one per transition, each assembled with the shared pieces it uses.

prelude.lua names the keys and holds the one way a job ends (close_job) and the one way a run goes back to
the queue (back_to_queue); gcra.lua is the request-rate bucket. A script names its arguments in its first
lines (`local _, id, token, ... = unpack(ARGV)`); ARGV[1] is always the key prefix, except in rate_limit.
"""
from __future__ import annotations

import functools
from pathlib import Path

LUA_DIR = Path(__file__).with_name("lua")

# Each script and the shared pieces it needs, in order.
PARTS = {
    "rate_limit": ("gcra",),
    "create": ("prelude", "gcra"),
    "begin_run": ("prelude",),
    "renew_lease": ("prelude",),
    "set_run_field": ("prelude",),
    "save_checkpoint": ("prelude",),
    "finish": ("prelude",),
    "release": ("prelude",),
    "requeue_lapsed": ("prelude",),
    "resend": ("prelude",),
    "cancel": ("prelude",),
    "claim_events": ("prelude",),
    "record_delivery": ("prelude",),
    "keep_event_body": ("prelude",),
    "idempotency_claim": (),
    "idempotency_release": (),
    "claim_orphans": ("prelude",),
    "forget_trash": ("prelude",),
}


@functools.cache
def source(name: str) -> str:
    """The full text of script `name`: its shared pieces, then its own file."""
    return "\n".join((LUA_DIR / f"{part}.lua").read_text() for part in (*PARTS[name], name))
