"""Access: API keys, other keys' jobs, unguessable ids, per-key limits shared by API processes, webhook
targets (private addresses, DNS answers that change between the check and the send), and no secret in
logs, errors or job records."""
from __future__ import annotations

import io
import logging
import socket
import time

import pytest
from PIL import Image

from api.deps import owner_of
from api.submission import SMALL_SUBMISSION_BYTES
from tests.e2e.helpers import WEBHOOK_SECRET, png_bytes, submit
from tests.reliability.cluster import wait_until
from tests.reliability.receivers import Receiver
from worker.outbox import deliver_event
from jobs.record import TERMINAL, is_job_id
from jobs.store import owner_index_key

KEY_A, KEY_B = "key-alpha-" + "7" * 24, "key-beta-" + "3" * 24


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_done(client, job_id: str, key: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json())["status"]
                      in TERMINAL and j, timeout=timeout)


ROUTES = [("GET", "/v1/jobs/{id}"), ("GET", "/v1/jobs/{id}/result"), ("POST", "/v1/jobs/{id}/cancel"),
          ("GET", "/v1/jobs")]


def test_without_a_valid_key_every_route_is_401_and_another_keys_job_is_404_everywhere(fresh):
    cluster = fresh
    client = cluster.client(api_keys=f"{KEY_A},{KEY_B}")
    job = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                      data={"method": "bicubic"}, headers=auth(KEY_A)).json()
    for headers in ({}, auth("wrong-key"), auth(KEY_A[:-1]), auth(KEY_A + "x"), {"x-api-key": ""},
                    {"authorization": "Basic " + KEY_A}):
        assert client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                           headers=headers).status_code == 401
        for method, path in ROUTES:
            response = client.request(method, path.format(id=job["id"]), headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    for method, path in ROUTES[:3]:
        response = client.request(method, path.format(id=job["id"]), headers=auth(KEY_B))
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", (method, path)
    assert client.get("/v1/jobs", headers=auth(KEY_B)).json()["jobs"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(KEY_A)).status_code == 200
    assert cluster.store.fields(job["id"])["status"] == "queued"  # B's cancel did not touch it


def test_job_ids_are_128_random_bits(fresh):
    cluster = fresh
    client = cluster.client(max_active_jobs_per_key=0)
    ids = [submit(client, png_bytes(4, 4), method="bicubic")["id"] for _ in range(50)]  # the same image each time
    assert len(set(ids)) == 50 and all(is_job_id(i) for i in ids)
    bits = "".join(f"{int(i, 16):0128b}" for i in ids)
    assert 0.45 < bits.count("1") / len(bits) < 0.55  # no fixed or counting parts
    neighbour = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    assert client.get(f"/v1/jobs/{neighbour}").status_code == 404


def test_requests_per_second_per_key_are_limited_across_api_processes(fresh):
    cluster = fresh
    limits = {"api_keys": f"{KEY_A},{KEY_B}", "rate_limit_per_second": 5, "rate_limit_burst": 10}
    first, second = cluster.client(**limits), cluster.client(**limits)  # two API processes, one Redis
    statuses = [(first if i % 2 else second).get("/v1/jobs", headers=auth(KEY_A)) for i in range(16)]
    codes = [r.status_code for r in statuses]
    assert codes[:10] == [200] * 10 and 429 in codes[10:], codes  # the burst is shared by both processes
    limited = next(r for r in statuses if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert first.get("/v1/jobs", headers=auth(KEY_B)).status_code == 200  # another key has its own budget
    time.sleep(0.5)  # the sustained rate refills (5 a second)
    assert second.get("/v1/jobs", headers=auth(KEY_A)).status_code == 200


def noisy_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_submission_counts_once_against_the_rate_whether_accepted_or_refused(fresh):
    """Each submission is counted exactly once, whichever way (a small one in the round trip that records its
    job, a refused one before its refusal, a large one before its body is read), and one over the rate records
    nothing. One request per 20 s: the burst cannot refill while the test runs."""
    cluster = fresh
    client = cluster.client(api_keys=KEY_A, rate_limit_per_second=0.05, rate_limit_burst=4, max_active_jobs_per_key=0)

    def post(image: bytes = png_bytes(), **fields: str):
        return client.post("/v1/jobs", files={"image": ("a.png", image, "image/png")},
                           data={"method": "bicubic", **fields}, headers=auth(KEY_A))

    large = noisy_png(200)
    assert len(large) > SMALL_SUBMISSION_BYTES  # counted before its body is read
    within = [post(), post(b"not an image"), post(scale="9"), post(large)]  # the burst of 4
    assert [r.status_code for r in within] == [202, 415, 422, 202], [r.text for r in within]
    over = [post(), post(b"not an image"), post(large)]
    assert [(r.status_code, r.json()["error"]["code"]) for r in over] == [(429, "rate_limited")] * 3
    assert all(int(r.headers["retry-after"]) >= 1 for r in over)
    assert cluster.store.redis.zcard(owner_index_key(owner_of(KEY_A))) == 2  # only the two accepted jobs


def test_unfinished_jobs_per_key_are_limited(fresh):
    """No worker runs here, so every accepted job stays queued."""
    cluster = fresh
    client = cluster.client(api_keys=f"{KEY_A},{KEY_B}", max_active_jobs_per_key=3)
    accepted = [client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                            data={"method": "bicubic"}, headers=auth(KEY_A)) for _ in range(4)]
    assert [r.status_code for r in accepted] == [202, 202, 202, 429]
    refused = accepted[-1]
    assert refused.json()["error"]["code"] == "too_many_jobs" and int(refused.headers["retry-after"]) >= 1
    assert client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")}, data={"method": "bicubic"},
                       headers=auth(KEY_B)).status_code == 202
    assert client.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel", headers=auth(KEY_A)).status_code == 202
    again = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")}, data={"method": "bicubic"},
                        headers=auth(KEY_A))
    assert again.status_code == 202  # a finished job frees its place
    worker = cluster.start_worker("light")
    for response in accepted[1:3] + [again]:
        assert wait_done(client, response.json()["id"], KEY_A)["status"] == "succeeded"
    assert worker.alive()


# --- webhook targets ---------------------------------------------------------------------------------

PUBLIC = "93.184.216.34"  # a public address (no route from this sandbox: a pinned connection to it just fails)
HOST = "hooks.rebinding.test"


class ScriptedDNS:
    """getaddrinfo whose answers for HOST follow a script (one address per call, the last one repeating);
    every other name resolves as usual."""

    def __init__(self, answers: list[str]):
        self.answers, self.calls = list(answers), 0
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != HOST:
            return self.real(host, port, *args, **kwargs)
        address = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


@pytest.mark.parametrize("target", ["http://127.0.0.1/", "http://localhost/", "http://10.0.0.5/", "http://[::1]/",
                                    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                    "http://0x7f000001/", "http://2130706433/", "http://[::ffff:10.0.0.1]/",
                                    "http://192.168.1.1:8080/", "http://100.64.0.1/"])
def test_webhook_targets_on_private_addresses_are_refused(fresh, target):
    client = fresh.client(webhook_allow_private=False)
    response = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                           data={"method": "bicubic", "webhook_url": target})
    assert response.status_code == 422 and response.json()["error"]["code"] == "webhook_url_refused"


def test_a_dns_answer_that_turns_private_after_submission_is_refused_at_delivery(fresh, monkeypatch):
    """Checked public at submission; private when the worker delivers: nothing reaches the private receiver."""
    cluster = fresh
    dns = ScriptedDNS([PUBLIC, "127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    client = cluster.client(webhook_allow_private=False)
    settings = cluster.settings.model_copy(update={"webhook_allow_private": False})
    with Receiver() as receiver:
        url = f"http://{HOST}:{receiver.url.split(':')[2]}"  # the receiver's port, on the rebinding name
        job = submit(client, png_bytes(), method="bicubic", webhook_url=url)
        assert dns.calls == 1  # the submission check saw the public address
        cluster.store.cancel(job["id"])  # queued -> canceled: schedules job.canceled
        event = next(e for e in cluster.store.claim_events(limit=10, claim_seconds=30) if e.job_id == job["id"])
        assert deliver_event(cluster.store, settings, event) == "refused"
        assert receiver.received == []
    delivery = cluster.store.public(job["id"])["webhook"]["deliveries"][0]
    assert delivery["outcome"] == "refused" and "non-public address (127.0.0.1)" in delivery["error"]


def test_a_delivery_connects_to_the_address_it_checked_not_to_a_second_answer(fresh, monkeypatch):
    """The name resolves public for the check, then 127.0.0.1 for anyone who asks again: the delivery goes
    to the checked (public) address, so the receiver on 127.0.0.1 gets nothing."""
    cluster = fresh
    dns = ScriptedDNS([PUBLIC, "127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    settings = cluster.settings.model_copy(update={"webhook_allow_private": False, "webhook_timeout_seconds": 1})
    client = cluster.client(webhook_allow_private=False)
    with Receiver() as receiver:
        url = f"http://{HOST}:{receiver.url.split(':')[2]}"
        dns.answers = [PUBLIC]  # submission check
        job = submit(client, png_bytes(), method="bicubic", webhook_url=url)
        dns.answers, dns.calls = [PUBLIC, "127.0.0.1"], 0  # delivery: checked public, anyone later gets loopback
        cluster.store.cancel(job["id"])
        event = next(e for e in cluster.store.claim_events(limit=10, claim_seconds=30) if e.job_id == job["id"])
        assert deliver_event(cluster.store, settings, event) == "retrying"  # no route to the public address
        assert receiver.received == []
    assert dns.calls == 1  # resolved once, for the check; the connection used that answer


# --- secrets -----------------------------------------------------------------------------------------

def test_no_secret_appears_in_logs_errors_or_job_records(fresh, caplog):
    cluster = fresh
    caplog.set_level(logging.DEBUG)
    worker = cluster.start_worker("light", UPSCALER_API_KEYS=f"{KEY_A},{KEY_B}", UPSCALER_LOG_LEVEL="DEBUG")
    client = cluster.client(api_keys=f"{KEY_A},{KEY_B}")
    answers = []
    with Receiver(fail_first=1) as receiver:
        job = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                          data={"method": "bicubic", "webhook_url": receiver.url}, headers=auth(KEY_A)).json()
        done = wait_done(client, job["id"], KEY_A)
        wait_until(lambda: cluster.store.pending_events() == 0, timeout=30)
        answers += [client.get(f"/v1/jobs/{job['id']}", headers=auth(KEY_B)).text,
                    client.get("/v1/jobs", headers=auth("not-" + KEY_A)).text,
                    client.post("/v1/jobs", json={"image_base64": KEY_A}, headers=auth(KEY_A)).text,
                    client.get(f"/v1/jobs/{job['id']}", headers=auth(KEY_A)).text,
                    client.get("/metrics").text]
        webhook_bodies = [str(r["body"]) for r in receiver.received]
    stored = []
    for key in cluster.store.redis.scan_iter(count=1000):
        kind = cluster.store.redis.type(key)
        if kind == b"hash":
            stored.append(str(cluster.store.redis.hgetall(key)))
        elif kind == b"string":
            stored.append(str(cluster.store.redis.get(key)))
        elif kind == b"list":
            stored.append(str(cluster.store.redis.lrange(key, 0, -1)))
        elif kind in (b"zset", b"set"):
            stored.append(str(cluster.store.redis.zrange(key, 0, -1) if kind == b"zset"
                              else cluster.store.redis.smembers(key)))
        stored.append(str(key))
    texts = {"worker log": worker.log(), "API log": caplog.text, "answers": "\n".join(answers),
             "webhook bodies": "\n".join(webhook_bodies), "Redis": "\n".join(stored), "job": str(done)}
    key_bytes = WEBHOOK_SECRET.removeprefix("whsec_")
    for secret in (KEY_A, KEY_B, WEBHOOK_SECRET, key_bytes):
        for where, text in texts.items():
            assert secret not in text, f"a secret appears in the {where}"
    assert "DEBUG" in worker.log()  # the worker did log at its most talkative level
