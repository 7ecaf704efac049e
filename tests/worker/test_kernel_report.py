"""The estimated blur kernel on its way from sr's result.info into the job record (worker/runs.py, jobs/store.py)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import sr
from api.submission import KERNEL_ESTIMATION_MIN_SIDE, KERNEL_ESTIMATION_SCALES
from jobs.record import new_job_fields, new_job_id, public_job
from sr import kernelgan
from worker.runs import kernel_record, sr_metrics

KERNEL = [[0.0, 0.125, 0.0], [0.125, 0.5, 0.125], [0.0, 0.125, 0.0]]


def _output(**info) -> Image.Image:
    output = Image.new("RGB", (4, 4))
    output.info["sr"] = {"method": "zssr", "train_steps": 40, "device": "cpu", **info}
    return output


def test_an_estimated_kernel_is_reported_with_its_size_source_factor_and_shape():
    fields = sr_metrics(_output(kernel=KERNEL, kernel_source="estimate", kernel_factor=0.5, kernel_shape="turned 90",
                                kernel_estimation_seconds=1.25))
    assert fields["train_steps"] == "40" and fields["device"] == "cpu"
    assert json.loads(fields["kernel"]) == {"size": [3, 3], "values": KERNEL, "source": "estimated", "factor": 0.5,
                                            "shape": "turned 90", "estimation_seconds": 1.25}


def test_a_non_square_kernel_reports_rows_then_columns():
    assert kernel_record({"kernel": [[0.25, 0.5, 0.25]], "kernel_source": "given"})["size"] == [1, 3]


def test_cubic_downscaling_reports_no_kernel():
    assert "kernel" not in sr_metrics(_output(kernel_source="bicubic"))
    assert "kernel" not in sr_metrics(Image.new("RGB", (4, 4)))  # bicubic jobs: no info["sr"] kernel at all


def test_the_job_shows_the_stored_kernel_or_null():
    fields = new_job_fields(new_job_id(), "owner", params={"scale": 2.0}, input_info={}, output_info={},
                            queue="gpu", webhook_url=None, ttl=60, now=1.0)
    assert public_job(fields)["kernel"] is None
    fields["kernel"] = sr_metrics(_output(kernel=KERNEL, kernel_source="estimate"))["kernel"]
    assert public_job(fields)["kernel"] == {"size": [3, 3], "values": KERNEL, "source": "estimated"}


def test_the_api_refuses_the_scales_the_core_cannot_estimate_a_kernel_for():
    assert set(KERNEL_ESTIMATION_SCALES) == {float(sf) for sf in kernelgan.SUPPORTED_SF}


def test_the_api_refuses_the_image_sizes_the_core_cannot_estimate_a_kernel_on():
    smallest = KERNEL_ESTIMATION_MIN_SIDE
    with pytest.raises(sr.InvalidInput, match="at least"):
        kernelgan.estimate_kernel(torch.rand(1, 3, smallest - 1, smallest + 8), 2, iters=1, seed=0)
    kernel = kernelgan.estimate_kernel(torch.rand(1, 3, smallest, smallest), 2, iters=1, seed=0)
    assert abs(kernel.sum() - 1.0) < 1e-6


def test_the_job_says_which_estimator_made_its_kernel():
    fields = sr_metrics(_output(kernel=KERNEL, kernel_source="estimate", kernel_estimator="prior"))
    assert json.loads(fields["kernel"])["estimator"] == "prior"


def test_the_self_checks_fallback_reaches_the_job():
    fields = sr_metrics(_output(fallback="blend 0.41"))
    assert fields["fallback"] == "blend 0.41"
    record = {**new_job_fields(new_job_id(), "owner", params={}, input_info={}, output_info={}, queue="gpu",
                               webhook_url=None, ttl=60, now=0.0), **fields}
    assert public_job(record)["metrics"]["fallback"] == "blend 0.41"
    assert "fallback" not in sr_metrics(_output(fallback=None))
