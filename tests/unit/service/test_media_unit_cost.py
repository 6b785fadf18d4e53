"""Per-unit prices of the media endpoints (h-mediaprice): ``Price.per_image`` (a number, or by
size and size/quality), ``per_mchar_input`` (speech) and ``per_minute_audio`` (whisper), what
``media.unit_cost_usd`` makes of a call's units, and the policy loader's refusals. The whole
request path (budgets, ``gateway_cost_usd_total``) is in ``tests/unit/api/test_media_endpoints.py``.
"""

from __future__ import annotations

import pytest

from gateway.policy.loader import PolicyError, parse_policy
from gateway.policy.model import Price
from gateway.service.media import MediaUnits, image_usage, media_units, unit_cost_usd
from gateway.wire.audio import transcript_usage
from gateway.wire.requests import Endpoint

BY_SIZE = Price(per_image={"1024x1024": 0.04, "1024x1792": 0.08, "1024x1792/hd": 0.12, "256x256": 0.016})


def test_a_price_per_image_by_size_quality_then_size_then_the_highest() -> None:
    assert Price(per_image=0.04).image_usd("1792x1024", "hd") == 0.04  # one number: every image
    assert BY_SIZE.image_usd("1024x1792", "hd") == 0.12
    assert BY_SIZE.image_usd("1024x1792", "standard") == 0.08  # no size/quality entry: the size's
    assert BY_SIZE.image_usd("1024x1024", "hd") == 0.04
    assert BY_SIZE.image_usd("512x512", "standard") == 0.12  # not in the table: never under-charged
    assert Price().image_usd("1024x1024", "standard") == 0.0


def test_images_are_counted_as_returned_else_as_asked() -> None:
    units = media_units(Endpoint.IMAGES, {"model": "m", "prompt": "p", "n": 3, "size": "256x256"})
    assert units == MediaUnits(Endpoint.IMAGES, 3, "256x256", "standard")
    assert unit_cost_usd(units, BY_SIZE, None) == pytest.approx(3 * 0.016)  # no answer read: asked
    returned = image_usage({"data": [{"url": "a"}, {"url": "b"}]})  # the provider made two
    assert returned == {"images": 2}
    assert unit_cost_usd(units, BY_SIZE, returned) == pytest.approx(2 * 0.016)
    # A request without size or quality is DALL-E's default, 1024x1024 standard
    default = media_units(Endpoint.IMAGES, {"model": "m", "prompt": "p"})
    assert unit_cost_usd(default, BY_SIZE, None) == 0.04  # type: ignore[arg-type]
    assert unit_cost_usd(units, Price(input_per_mtok=5), None) is None  # no per_image: tokens


def test_image_usage_keeps_token_counts_and_is_the_gateways_own_count() -> None:
    """A GPT image model's tokens are read as before; an ``images`` key in the provider's usage
    is replaced by the count of ``data`` (a provider cannot set what it is charged)."""
    answer = {"data": [{"b64_json": "x"}], "usage": {"input_tokens": 7, "output_tokens": 272, "images": 99}}
    assert image_usage(answer) == {"prompt_tokens": 7, "completion_tokens": 272, "images": 1}
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "images": 99}
    assert image_usage({"data": [], "usage": usage}) == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "images": 0,
    }
    assert usage["images"] == 99  # (a copy)
    assert image_usage({"usage": None}) is None  # no data list: nothing counted


def test_speech_is_priced_by_its_input_characters() -> None:
    units = media_units(Endpoint.SPEECH, {"model": "tts", "input": "é" * 4096, "voice": "alloy"})
    assert units == MediaUnits(Endpoint.SPEECH, 4096)
    assert unit_cost_usd(units, Price(per_mchar_input=15), None) == pytest.approx(4096 * 15 / 1e6)
    assert unit_cost_usd(units, Price(input_per_mtok=60), None) is None


def test_whisper_is_priced_by_the_seconds_its_answer_reports() -> None:
    units = media_units(Endpoint.TRANSCRIPTIONS, {"model": "whisper"})
    assert units is not None and media_units(Endpoint.MODERATIONS, {"input": "x"}) is None
    price = Price(per_minute_audio=0.006)
    usage = transcript_usage(b'{"text": "hi", "usage": {"type": "duration", "seconds": 90}}')
    assert usage == {"prompt_tokens": 900, "seconds": 90}
    assert unit_cost_usd(units, price, usage) == pytest.approx(0.009)
    translated = media_units(Endpoint.TRANSLATIONS, {"model": "whisper"})
    assert unit_cost_usd(translated, price, {"prompt_tokens": 5, "seconds": 30}) == pytest.approx(0.003)  # type: ignore[arg-type]
    # A GPT-4o model's tokens, or a text answer's nothing: the count is unknown, tokens price it
    tokens = transcript_usage(b'{"text": "hi", "usage": {"type": "tokens", "input_tokens": 6}}')
    assert unit_cost_usd(units, price, tokens) is None
    assert unit_cost_usd(units, price, None) is None


HEAD = "version: 1\nauth: {mode: open}\nproviders:\n  a: {kind: openai, base_url: 'http://a/v1'}\nmodels:\n"


@pytest.mark.parametrize(
    ("price", "says"),
    [
        (
            "{per_image: {1024x1792hd: 0.12}}",
            "unknown image size '1024x1792hd' (keys are a size, or size/quality; sizes: 256x256",
        ),
        (
            "{per_image: {1024x1792/ultra: 1}}",
            "unknown image quality in '1024x1792/ultra' (qualities: standard, hd",
        ),
        (
            "{per_image: {1024x1024: .inf}}",
            "'1024x1024': a price in US dollars per image: a finite number of 0 or more, not inf",
        ),
        ("{per_image: {1024x1024: -0.04}}", "a finite number of 0 or more, not -0.04"),
        ("{per_image: {1024x1024: '-1'}}", "a price per image may not be negative"),
        ("{per_image: .nan}", "a finite number of 0 or more, not nan"),
        ("{per_image: yes}", "a price in US dollars per image, or a mapping by size, not 'True'"),
        ("{per_image: {}}", "an empty mapping"),
        ("{per_mchar_input: -15}", "per_mchar_input: Input should be greater than or equal to 0"),
        ("{per_minute_audio: .inf}", "per_minute_audio: Input should be a finite number"),
        ("{per_minute_audio: yes}", "per_minute_audio: must be a number, not the boolean True"),
        # (h-probe2) a price past any real one: two images at 1e308 made gateway_cost_usd_total
        # +Inf for good, and the key's spend in /admin/usage null
        (
            "{per_image: 1.0e+308}",
            "per_image: a price in US dollars per image, or a mapping by size: at most",
        ),
        ("{per_image: '1e308'}", "per_image: a price per image is at most 1000000000 US dollars"),
        (
            "{per_image: {256x256: 1.0e+308}}",
            "'256x256': a price in US dollars per image: at most 1000000000",
        ),
        ("{per_mchar_input: 1.0e+308}", "per_mchar_input: Input should be less than or equal to 1000000000"),
        (
            "{per_minute_audio: 1.0e+300}",
            "per_minute_audio: Input should be less than or equal to 1000000000",
        ),
        ("{input_per_mtok: 1.0e+308}", "input_per_mtok: Input should be less than or equal to 1000000000"),
    ],
)
def test_a_bad_per_unit_price_is_refused_at_load_naming_it(price: str, says: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(HEAD + f"  m: {{deployments: [{{provider: a, model: x, price: {price}}}]}}\n", "p.yaml")
    (problem,) = [str(p) for p in err.value.problems]
    assert problem.startswith("p.yaml:6: models.m.deployments[0].price") and says in problem, problem


def test_per_unit_prices_load() -> None:
    price = "{per_image: {1024x1024: 0.04, 1024x1792/hd: 0.12}, per_mchar_input: 15, per_minute_audio: 0.006}"
    loaded = parse_policy(HEAD + f"  m: {{deployments: [{{provider: a, model: x, price: {price}}}]}}\n")
    got = loaded.models["m"].deployments[0].price
    assert (got.per_image, got.per_mchar_input, got.per_minute_audio) == (
        {"1024x1024": 0.04, "1024x1792/hd": 0.12},
        15,
        0.006,
    )
