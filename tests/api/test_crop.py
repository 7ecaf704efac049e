"""The `crop=x,y,w,h` submission parameter end to end: validation, the job's sizes, and the pixels a worker makes."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageOps

from tests.e2e.helpers import photo_bytes, png_bytes, submit, wait_for
from jobs.images import ImageRejected, crop_region, decode_for_sr


def result_image(client, job_id: str) -> Image.Image:
    done = wait_for(client, job_id)
    assert done["status"] == "succeeded", done
    response = client.get(f"/v1/jobs/{job_id}/result")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_a_region_is_upscaled_alone_exactly_as_if_it_had_been_uploaded_cut_out(client):
    photo = Image.open(io.BytesIO(photo_bytes()))  # 64x48 crop of a real photo
    job = submit(client, encoded(photo), method="bicubic", scale=2, crop="10,6,30,20")
    assert job["params"]["crop"] == {"x": 10, "y": 6, "width": 30, "height": 20}
    assert job["input"]["width"] == 64 and (job["output"]["width"], job["output"]["height"]) == (60, 40)
    cut_out = submit(client, encoded(photo.crop((10, 6, 40, 26))), method="bicubic", scale=2)
    assert cut_out["params"]["crop"] is None
    region, reference = result_image(client, job["id"]), result_image(client, cut_out["id"])
    assert region.size == (60, 40) and region.tobytes() == reference.tobytes()


def test_json_submissions_take_the_region_as_text_a_list_or_an_object(client):
    image = base64.b64encode(png_bytes(40, 30)).decode()
    for crop in ("0,0,40,30", [5, 5, 10, 20], {"x": 30, "y": 0, "width": 10, "height": 30}):
        response = client.post("/v1/jobs", json={"image_base64": image, "method": "bicubic", "scale": 3, "crop": crop})
        assert response.status_code == 202, response.text
        expected = crop if isinstance(crop, dict) else dict(zip(("x", "y", "width", "height"),
                                                                 [int(v) for v in str(crop).strip("[]").split(",")]))
        job = response.json()
        assert job["params"]["crop"] == expected
        assert (job["output"]["width"], job["output"]["height"]) == (expected["width"] * 3, expected["height"] * 3)
        assert result_image(client, job["id"]).size == (expected["width"] * 3, expected["height"] * 3)


@pytest.mark.parametrize("crop, words", [
    ("1,2,3", "four whole numbers"), ("a,b,c,d", "four whole numbers"), ("-1,0,10,10", "four whole numbers"),
    ("1.5,0,10,10", "four whole numbers"), ("0,0,0,10", "crop.width"), ("0,0,10,0", "crop.height"),
    ("0,0,41,30", "reaches past the 40x30 image"), ("30,0,11,10", "reaches past the 40x30 image"),
    ("0,25,10,6", "reaches past the 40x30 image"), ("99999999999999999999,0,1,1", "reaches past"),
])
def test_a_bad_region_is_refused_with_a_message_that_says_why(client, crop, words):
    response = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(40, 30), "image/png")},
                           data={"method": "bicubic", "crop": crop})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameters" and words in error["message"] and "crop" in error["message"]


def test_an_empty_crop_field_means_the_whole_image(client):
    job = submit(client, png_bytes(40, 30), method="bicubic", crop="")
    assert job["params"]["crop"] is None and job["output"]["width"] == 80


def test_a_region_brings_a_photo_too_large_to_upscale_whole_within_the_output_limit(make_client):
    client = make_client(max_output_pixels=100 * 100)
    whole = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(60, 60), "image/png")},
                        data={"method": "bicubic", "scale": "2"})
    assert whole.status_code == 422 and whole.json()["error"]["code"] == "output_too_large"
    job = submit(client, png_bytes(60, 60), method="bicubic", scale=2, crop="20,20,40,40")
    assert result_image(client, job["id"]).size == (80, 80)


def test_the_region_is_in_the_photo_as_viewers_show_it_after_its_exif_orientation(client):
    stored = Image.open(io.BytesIO(photo_bytes())).convert("RGB")  # 64x48 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": viewers show it 48x64
    upload = encoded(stored, "PNG", exif=exif.tobytes())
    job = submit(client, upload, method="bicubic", scale=2, crop="8,30,32,24")
    assert (job["input"]["width"], job["input"]["height"]) == (48, 64)
    viewed = ImageOps.exif_transpose(Image.open(io.BytesIO(upload)))
    reference = submit(client, encoded(viewed.crop((8, 30, 40, 54))), method="bicubic", scale=2)
    assert result_image(client, job["id"]).tobytes() == result_image(client, reference["id"]).tobytes()
    refused = client.post("/v1/jobs", files={"image": ("a.png", upload, "image/png")},
                          data={"method": "bicubic", "crop": "40,0,20,20"})  # inside 64x48, not inside 48x64
    assert refused.status_code == 422 and "48x64" in refused.json()["error"]["message"]


def test_the_worker_checks_the_region_again_and_keeps_the_colour_profile():
    image = Image.new("RGB", (20, 10), "red")
    image.info["icc_profile"] = b"profile"
    assert crop_region(image, {"x": 15, "y": 5, "width": 5, "height": 5}).info["icc_profile"] == b"profile"
    with pytest.raises(ImageRejected) as refused:
        crop_region(image, {"x": 15, "y": 5, "width": 6, "height": 5})
    assert refused.value.code == "invalid_crop" and "20x10" in refused.value.message
    decoded = decode_for_sr(png_bytes(40, 30), 10_000, {"x": 1, "y": 2, "width": 3, "height": 4})
    assert decoded.size == (3, 4) and decoded.getpixel((0, 0)) == Image.open(io.BytesIO(png_bytes(40, 30))).getpixel((1, 2))
