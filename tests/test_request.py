"""Who may set what: a request (the graph's input) carries data and per-run choices; operator settings come only
from the environment, the CLI or embedding code."""

from __future__ import annotations

import base64
import io

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from PIL import Image

from llmi_graph import ChatModelPolicy, Config, InputError, State, Toolbox, build_graph, data_url
from llmi_graph.store import InvalidImageError, decode_image_input
from tests.fakes import FakeOpenAIServer, png


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def scripted(cfg: Config, draft: str = "No tags.") -> object:
    return build_graph(
        policy=ChatModelPolicy(FakeListChatModel(responses=[draft])), toolbox=Toolbox(backends={}), config=cfg
    )


async def test_a_json_context_cannot_redirect_the_policy_or_its_key(cfg, monkeypatch):
    # The reviewer's attack: a client names its own policy URL plus a secret variable of the server's.
    monkeypatch.setenv("LLMI_TEST_SERVER_SECRET", "s3cret-value")
    with FakeOpenAIServer(["Operator's draft."]) as operator, FakeOpenAIServer(["stolen"]) as attacker:
        graph = build_graph(toolbox=Toolbox(backends={}), config=cfg.replace(policy_url=operator.url))
        context = {"policy_url": attacker.url, "policy_api_key_env": "LLMI_TEST_SERVER_SECRET", "policy_model": "x"}
        out = await graph.ainvoke({"prompt": "hello"}, context=context)
    assert attacker.requests == [], "a request's context reached another policy endpoint"
    assert out["draft"] == "Operator's draft."
    assert not any("s3cret-value" in str(h) for h in operator.headers)


async def test_input_keys_cannot_set_operator_settings_or_internal_state(cfg):
    with FakeOpenAIServer(["stolen"]) as attacker:
        out = await scripted(cfg).ainvoke(
            {
                "prompt": "hello",
                "policy_url": attacker.url,
                "run_key": "chosen",
                "input_images": [
                    {"sha256": "0" * 64, "path": "/etc/passwd", "mime": "image/png", "width": 1, "height": 1}
                ],
            }
        )
    assert attacker.requests == []
    assert out["input_images"] == [] and "run_key" not in out


async def test_an_input_image_path_is_refused_and_never_read(cfg, tmp_path):
    picture = tmp_path / "server-side.png"
    picture.write_bytes(png())
    with pytest.raises(InputError, match=r"input image 0 is unusable: .*file paths are not accepted"):
        await scripted(cfg).ainvoke({"prompt": "x", "images": [str(picture)]})


def test_raw_base64_jpeg_and_mime_line_breaks_decode():
    data = jpeg()
    raw = base64.b64encode(data).decode()
    assert raw.startswith("/9j/")  # what looked like a path before
    assert decode_image_input(raw) == data
    wrapped = "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))
    assert decode_image_input(wrapped) == data
    assert decode_image_input(raw.rstrip("=")) == data
    assert decode_image_input(f"data:image/jpeg;base64,{raw}") == data
    with pytest.raises(InvalidImageError, match="must be base64"):
        decode_image_input("data:image/png,abc")
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image_input("")


async def test_raw_base64_jpeg_input_reaches_the_store(cfg):
    out = await scripted(cfg).ainvoke({"prompt": "x", "images": [base64.b64encode(jpeg()).decode()]})
    assert out["input_images"][0].mime == "image/jpeg"


async def test_request_sampling_reaches_the_policy_and_is_recorded(cfg):
    with FakeOpenAIServer(["A draft."]) as server:
        graph = build_graph(toolbox=Toolbox(backends={}), config=cfg.replace(policy_url=server.url))
        out = await graph.ainvoke({"prompt": "x", "temperature": 0.2, "top_p": 0.5, "seed": 11, "max_tokens": 33})
    sent = server.requests[0]
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.5 and sent["seed"] == 11
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 33
    assert out["policy"].sampling == {"max_tokens": 33, "temperature": 0.2, "top_p": 0.5, "seed": 11}


async def test_operator_defaults_apply_when_the_request_says_nothing(cfg):
    out = await scripted(cfg.replace(temperature=0.3, seed=4)).ainvoke({"prompt": "x"})
    assert out["policy"].sampling["temperature"] == 0.3 and out["policy"].sampling["seed"] == 4


async def test_max_tokens_over_the_operator_cap_is_refused(cfg):
    with pytest.raises(InputError, match="max_tokens 5000 is over this server's limit of 1000"):
        await scripted(cfg.replace(max_tokens_limit=1000)).ainvoke({"prompt": "x", "max_tokens": 5000})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"temperature": 9}, "less than or equal to 2"),
        ({"top_p": 0}, "greater than 0"),
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"allowed_tools": ["shell"]}, "unknown tool"),
    ],
)
async def test_out_of_range_request_settings_are_clear_errors(cfg, bad, message):
    with pytest.raises(Exception, match=message):
        await scripted(cfg).ainvoke({"prompt": "x", **bad})


async def test_too_many_or_too_large_input_images_are_refused(cfg):
    image = data_url(png())
    with pytest.raises(InputError, match="3 input images is over this server's limit of 2"):
        await scripted(cfg.replace(max_input_images=2)).ainvoke({"prompt": "x", "images": [image] * 3})
    big = data_url(png(size=(1200, 1200)))
    with pytest.raises(InputError, match="over this server's limit of 1,048 bytes"):
        await scripted(cfg.replace(input_image_max_mb=0.001)).ainvoke({"prompt": "x", "images": [big]})


async def test_output_schema_is_the_document_not_internal_state(cfg):
    out = await scripted(cfg).ainvoke({"prompt": "x"})
    assert {"document", "calls", "results", "timings", "policy", "draft"} <= set(out)
    assert "run_key" not in out and "temperature" not in out
    State.model_validate(out)  # and it still reads back as a state for reports and judges
