"""Redis restarted (append-only file on, as in docker-compose.yml) while jobs are queued and running."""
from __future__ import annotations

from tests.e2e.helpers import png_bytes, submit, wait_for
from tests.reliability.cluster import wait_until
from tests.reliability.receivers import Receiver
from jobs.webhooks import webhook_id

ROUTES = [("GET", "/v1/jobs/{id}"), ("GET", "/v1/jobs/{id}/result"), ("POST", "/v1/jobs/{id}/cancel"),
          ("GET", "/v1/jobs"), ("GET", "/readyz"), ("GET", "/metrics")]


def test_every_accepted_job_finishes_across_a_redis_restart_and_the_api_answers_503_meanwhile(fresh):
    cluster = fresh
    # Two workers, two jobs at a time each, one second per job: some run and most wait when Redis goes.
    workers = [cluster.start_worker("light", concurrency=2, UPSCALER_TEST_PAUSE_BEFORE_RESULT_SECONDS="1")
               for _ in range(2)]
    client = cluster.client()
    with Receiver() as receiver:
        jobs = [submit(client, png_bytes(24, 16), method="bicubic", webhook_url=receiver.url)["id"]
                for _ in range(10)]
        wait_until(lambda: sum(cluster.store.fields(j)["status"] == "running" for j in jobs) >= 2)
        statuses = {cluster.store.fields(j)["status"] for j in jobs}
        assert {"running", "queued"} <= statuses  # the restart meets both

        outage = {}

        def during_outage():
            for method, path in ROUTES:
                response = client.request(method, path.format(id=jobs[-1]))
                outage[(method, path)] = (response.status_code, response.headers.get("retry-after"),
                                          response.json().get("error", {}).get("code"))
            response = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                                   data={"method": "bicubic"})
            outage[("POST", "/v1/jobs")] = (response.status_code, response.headers.get("retry-after"),
                                            response.json()["error"]["code"])

        cluster.restart_redis(2.0, during_outage)
        for route, (status, retry_after, code) in outage.items():
            assert status == 503 and retry_after and int(retry_after) > 0, (route, status, code)
        assert outage[("GET", "/v1/jobs/{id}")][2] == "store_unavailable"

        # The same API client, never restarted, answers again; the workers reconnect by themselves.
        finished = {j: wait_for(client, j, timeout=90)["status"] for j in jobs}
        assert set(finished.values()) == {"succeeded"}, finished
        after = submit(client, png_bytes(), method="bicubic")
        assert wait_for(client, after["id"], timeout=60)["status"] == "succeeded"
        assert all(w.alive() for w in workers)
        assert client.get("/readyz").status_code == 200
        for job_id in jobs:  # each job's terminal event arrives, once
            wait_until(lambda: receiver.terminal_ids(job_id), timeout=60)
            assert receiver.terminal_ids(job_id) == {("job.succeeded", webhook_id(job_id, "job.succeeded"))}
