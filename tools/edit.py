"""The edit tool: changes to an input image or an earlier one, keeping it consistent.

Backends:
- `ImageServerEdit`: the Qwen-Image-Edit servers (`llmi serve-images`), through the pool client.
- `DiffusersEdit`: any diffusers image-edit pipeline from a local path, run in-process.
- `OpenAIImagesEdit`: an OpenAI-compatible `/v1/images/edits` endpoint.
- `LocalEditor`: offline, a fixed vocabulary of instructions done with Pillow. Anything outside it is answered
  "unsupported instruction", never guessed at. Instructions are clauses joined by "and", "then", "," or ";":

  | instruction | examples |
  | --- | --- |
  | grayscale | "grayscale", "make it black and white", "convert to greyscale" |
  | crop to a region | "crop to the top left", "crop to the center", "crop the bottom half" |
  | rotate | "rotate 90 degrees", "rotate by 45 degrees counterclockwise", "turn it upside down" |
  | flip | "flip horizontally", "flip vertically", "mirror" |
  | resize | "resize to 512x384", "scale to 50%", "make it half size" |
  | brightness | "brighten", "darken by 30%", "increase the brightness by 20%", "make it darker" |
  | contrast | "increase the contrast", "reduce contrast by 25%", "more contrast" |
  | blur / sharpen | "blur", "blur with radius 4", "sharpen" |
  | caption | "add a caption 'Figure 1: sales'", "add the title "Q3"" (the text in quotes) |
  | box / arrow | "draw a red box around the top right", "add an arrow pointing to the center" |

  Regions: top, bottom, left, right (halves), top left, top right, bottom left, bottom right (quarters), center.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from tools.base import ToolError, ToolOutput, openai_tool_error, png_bytes
from tools.diffusion import DiffusersPipelineRunner, image_from_api, server_tool_error
from tools.image_client import ImageServerError, ImageServerPool

# --- model-backed editors ---------------------------------------------------------------------------


def _one_input(inputs: Sequence[bytes]) -> bytes:
    if not inputs:
        raise ToolError("edit needs a source image")
    return inputs[0]


@dataclass
class ImageServerEdit:
    """Image + instruction to image on a pool of Qwen-Image-Edit servers."""

    pool: ImageServerPool
    steps: int | None = None
    true_cfg_scale: float | None = None
    name: str = "edit-server"

    @property
    def cache_id(self) -> str:
        return f"edit-server:{self.steps}:{self.true_cfg_scale}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        try:
            result = await self.pool.edit(
                [_one_input(inputs)], str(params["prompt"]), num_inference_steps=self.steps,
                true_cfg_scale=self.true_cfg_scale,
            )  # fmt: skip
        except ImageServerError as exc:
            raise server_tool_error(exc) from None
        return ToolOutput(
            image=result.images[0], backend=self.name, provenance={"server": result.url, "seed": result.seed}
        )


@dataclass
class DiffusersEdit:
    """Image + instruction to image with an in-process diffusers edit pipeline (Qwen-Image-Edit or other)."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    steps: int | None = None
    seed: int | None = 0
    trust_remote_code: bool = False
    name: str = "diffusers-edit"
    _runner: DiffusersPipelineRunner | None = field(default=None, repr=False)

    @property
    def cache_id(self) -> str:
        return f"diffusers-edit:{self.model}:{self.steps}:{self.seed}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        if self._runner is None:
            self._runner = DiffusersPipelineRunner(self.model, self.device, self.dtype, self.trust_remote_code)
        source = Image.open(io.BytesIO(_one_input(inputs))).convert("RGB")
        image = await asyncio.to_thread(
            self._runner.run, self.seed, image=source, prompt=str(params["prompt"]), num_inference_steps=self.steps
        )
        return ToolOutput(image=image, backend=self.name, provenance={"model": self.model, "seed": self.seed})


@dataclass
class OpenAIImagesEdit:
    """Image + instruction to image at an OpenAI-compatible images API (`POST /v1/images/edits`)."""

    base_url: str | None
    model: str
    api_key: str
    timeout_s: float = 300.0
    name: str = "openai-images-edit"

    @property
    def cache_id(self) -> str:
        return f"openai-edit:{self.base_url}:{self.model}"

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=0)
        source = png_bytes(Image.open(io.BytesIO(_one_input(inputs))))
        try:
            response = await client.images.edit(
                model=self.model, image=("image.png", source, "image/png"), prompt=str(params["prompt"]), n=1
            )
        except openai.OpenAIError as exc:
            raise openai_tool_error(exc, f"the images edit API ({self.model})") from None
        finally:
            await client.close()
        return ToolOutput(image=await image_from_api(response), backend=self.name, provenance={"model": self.model})


# --- the local editor -------------------------------------------------------------------------------

_FILLER = r"(?:please\s+)?(?:(?:make|turn|convert|change|render)\s+(?:it|this|the\s+(?:image|picture|photo|chart))\s+(?:to\s+|into\s+|in\s+)?)?"  # noqa: E501
_OBJECT = r"(?:\s+(?:it|this|the\s+(?:image|picture|photo|chart)))?"
_REGION = (
    r"(?:the\s+)?(?P<region>top[\s-]+left|top[\s-]+right|bottom[\s-]+left|bottom[\s-]+right|top|bottom|left|right"
    r"|cent(?:er|re)|middle)(?:\s+(?:half|quarter|corner|side|part|region|area))?"
    r"(?:\s+of\s+(?:it|the\s+(?:image|picture|photo|chart)))?"
)
_COLOR = r"(?:(?P<color>red|green|blue|yellow|white|black|orange|purple)\s+)?"
_COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "orange": (250, 140, 20),
    "purple": (140, 50, 180),
}

VOCABULARY = (
    "grayscale; crop to a region; rotate N degrees; flip horizontally/vertically; resize to WxH or N%; "
    "brighten/darken; increase/reduce contrast; blur; sharpen; add a caption 'text'; "
    "draw a box or an arrow at a region (regions: top, bottom, left, right, top left, top right, "
    "bottom left, bottom right, center)"
)


def _region_box(region: str, width: int, height: int) -> tuple[int, int, int, int]:
    r = re.sub(r"[\s-]+", " ", region.lower()).replace("centre", "center").replace("middle", "center")
    w2, h2 = width // 2, height // 2
    boxes = {
        "top": (0, 0, width, h2), "bottom": (0, h2, width, height), "left": (0, 0, w2, height),
        "right": (w2, 0, width, height), "top left": (0, 0, w2, h2), "top right": (w2, 0, width, h2),
        "bottom left": (0, h2, w2, height), "bottom right": (w2, h2, width, height),
        "center": (width // 4, height // 4, width - width // 4, height - height // 4),
    }  # fmt: skip
    return boxes[r]


def _factor(direction: str, pct: str | None) -> float:
    amount = float(pct) / 100 if pct else 0.3
    up = direction.lower() in {"brighten", "lighten", "brighter", "lighter", "increase", "raise", "boost",
                               "enhance", "more", "higher"}  # fmt: skip
    return 1 + amount if up else max(0.0, 1 - amount)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _caption(img: Image.Image, text: str) -> Image.Image:
    size = max(12, img.height // 18)
    font = _font(size)
    bar = int(size * 1.8)
    out = Image.new("RGB", (img.width, img.height + bar), (255, 255, 255))
    out.paste(img.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    box = draw.textbbox((0, 0), text, font=font)
    x = max(4, (img.width - (box[2] - box[0])) // 2)
    draw.text((x, img.height + (bar - (box[3] - box[1])) // 2), text, fill=(0, 0, 0), font=font)
    return out


def _box(img: Image.Image, region: str, color: str | None) -> Image.Image:
    out = img.convert("RGB")
    x0, y0, x1, y1 = _region_box(region, out.width, out.height)
    width = max(2, min(out.size) // 80)
    ImageDraw.Draw(out).rectangle(
        (x0 + width, y0 + width, x1 - width, y1 - width), outline=_COLORS[color or "red"], width=width
    )
    return out


def _arrow(img: Image.Image, region: str, color: str | None) -> Image.Image:
    """An arrow from the opposite side of the image to the middle of `region`."""
    out = img.convert("RGB")
    x0, y0, x1, y1 = _region_box(region, out.width, out.height)
    tx, ty = (x0 + x1) / 2, (y0 + y1) / 2
    if (tx, ty) == (out.width / 2, out.height / 2):  # center: come in from the bottom left
        sx, sy = out.width * 0.1, out.height * 0.9
    else:  # mirror the target through the center
        sx, sy = out.width - tx, out.height - ty
    width = max(3, min(out.size) // 60)
    fill = _COLORS[color or "red"]
    draw = ImageDraw.Draw(out)
    draw.line((sx, sy, tx, ty), fill=fill, width=width)
    angle = math.atan2(ty - sy, tx - sx)
    head = max(10, min(out.size) // 12)
    for side in (math.pi * 0.8, -math.pi * 0.8):
        draw.line(
            (tx, ty, tx + head * math.cos(angle + side), ty + head * math.sin(angle + side)), fill=fill, width=width
        )
    return out


def _rotate(m: re.Match[str]) -> Callable[[Image.Image], Image.Image]:
    degrees = float(m.group("deg")) if m.groupdict().get("deg") else 180.0
    direction = (m.groupdict().get("dir") or "clockwise").lower()
    counter = "counter" in direction or "anti" in direction or direction.endswith("left")
    return lambda img: img.rotate(degrees if counter else -degrees, expand=True, fillcolor=(255, 255, 255))


def _resize(m: re.Match[str]) -> Callable[[Image.Image], Image.Image]:
    g = m.groupdict()

    def apply(img: Image.Image) -> Image.Image:
        if g.get("w"):
            size = (int(g["w"]), int(g["h"]))
        else:
            scale = float(g["pct"]) / 100 if g.get("pct") else 0.5
            size = (round(img.width * scale), round(img.height * scale))
        if not (1 <= size[0] <= 8192 and 1 <= size[1] <= 8192):
            raise ToolError(f"resize to {size[0]}x{size[1]} is out of range (1 to 8192)")
        return img.resize(size, Image.Resampling.LANCZOS)

    return apply


# (operation name, full-clause pattern, builder of the operation from the match)
_OPERATIONS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], Callable[[Image.Image], Image.Image]]]] = [
    ("grayscale", re.compile(
        _FILLER + r"(?:to\s+)?(?:grayscale|greyscale|gray|grey|monochrome|desaturated?)" + _OBJECT),
     lambda m: lambda img: ImageOps.grayscale(img).convert("RGB")),
    ("crop", re.compile(r"crop" + _OBJECT + r"\s+(?:(?:to|on|around)\s+)?" + _REGION),
     lambda m: lambda img: img.crop(_region_box(m["region"], img.width, img.height))),
    ("rotate", re.compile(
        r"rotate" + _OBJECT + r"\s+(?:by\s+)?(?P<deg>-?\d+(?:\.\d+)?)\s*(?:degrees?|deg|°)?"
        r"(?:\s+(?P<dir>clockwise|counter-?clockwise|anti-?clockwise|to\s+the\s+left|to\s+the\s+right|left|right))?"),
     _rotate),
    ("rotate", re.compile(r"(?:turn|flip|rotate)" + _OBJECT + r"\s+upside\s+down"), _rotate),
    ("flip", re.compile(r"(?:flip|mirror)" + _OBJECT + r"(?:\s+(?P<axis>horizontally|vertically|left\s+to\s+right"
                        r"|top\s+to\s+bottom))?"),
     lambda m: (lambda img: ImageOps.flip(img)) if m["axis"] in ("vertically", "top to bottom")
     else (lambda img: ImageOps.mirror(img))),
    ("resize", re.compile(
        r"(?:resize|scale)" + _OBJECT + r"\s+(?:to\s+)?(?:(?P<w>\d+)\s*(?:x|×|by)\s*(?P<h>\d+)(?:\s*(?:px|pixels))?"
        r"|(?P<pct>\d+(?:\.\d+)?)\s*%)"), _resize),
    ("resize", re.compile(_FILLER + r"half\s+(?:the\s+|its\s+)?size"), _resize),
    ("brightness", re.compile(
        r"(?P<dir>brighten|darken|lighten)" + _OBJECT + r"(?:\s+by\s+(?P<pct>\d+(?:\.\d+)?)\s*%)?"),
     lambda m: lambda img: ImageEnhance.Brightness(img).enhance(_factor(m["dir"], m["pct"]))),
    ("brightness", re.compile(
        r"(?P<dir>increase|raise|boost|decrease|reduce|lower)\s+(?:the\s+)?brightness"
        r"(?:\s+by\s+(?P<pct>\d+(?:\.\d+)?)\s*%)?"),
     lambda m: lambda img: ImageEnhance.Brightness(img).enhance(_factor(m["dir"], m["pct"]))),
    ("brightness", re.compile(_FILLER + r"(?:a\s+(?:bit|little)\s+)?(?P<dir>brighter|darker|lighter)"),
     lambda m: lambda img: ImageEnhance.Brightness(img).enhance(_factor(m["dir"], None))),
    ("contrast", re.compile(
        r"(?P<dir>increase|raise|boost|enhance|decrease|reduce|lower)\s+(?:the\s+)?contrast"
        r"(?:\s+by\s+(?P<pct>\d+(?:\.\d+)?)\s*%)?"),
     lambda m: lambda img: ImageEnhance.Contrast(img).enhance(_factor(m["dir"], m["pct"]))),
    ("contrast", re.compile(r"(?:give\s+it\s+|use\s+)?(?P<dir>more|less|higher|lower)\s+contrast"),
     lambda m: lambda img: ImageEnhance.Contrast(img).enhance(_factor(m["dir"], None))),
    ("blur", re.compile(
        r"(?:blur|soften)" + _OBJECT + r"(?:\s+(?:by|with\s+(?:a\s+)?radius(?:\s+of)?)\s+(?P<r>\d+(?:\.\d+)?))?"),
     lambda m: lambda img: img.filter(ImageFilter.GaussianBlur(float(m["r"]) if m["r"] else 2.0))),
    ("blur", re.compile(_FILLER + r"(?:blurry|blurred)"),
     lambda m: lambda img: img.filter(ImageFilter.GaussianBlur(2.0))),
    ("sharpen", re.compile(r"sharpen" + _OBJECT + "|" + _FILLER + r"sharper"),
     lambda m: lambda img: img.convert("RGB").filter(ImageFilter.UnsharpMask(radius=2, percent=150))),
    ("caption", re.compile(r"(?:add|put|write|insert)\s+(?:a\s+|the\s+)?(?:caption|title|label|text)"
                           r"(?:\s+(?:saying|that\s+says|reading|with))?\s*:?\s*(?P<slot>\x00\d+\x00)"),
     lambda m: lambda img: img),  # text filled in by LocalEditor.plan
    ("box", re.compile(r"(?:draw|add|put)\s+(?:a|an)\s+" + _COLOR + r"(?:box|rectangle|frame|outline)\s+"
                       r"(?:around|at|on|in|over)\s+" + _REGION),
     lambda m: lambda img: _box(img, m["region"], m["color"])),
    ("arrow", re.compile(r"(?:draw|add|put)\s+(?:a|an)\s+" + _COLOR + r"arrow\s+(?:pointing\s+)?"
                         r"(?:to|at|toward|towards)\s+" + _REGION),
     lambda m: lambda img: _arrow(img, m["region"], m["color"])),
]  # fmt: skip

_OPERATIONS = [(name, re.compile(p.pattern, re.IGNORECASE), build) for name, p, build in _OPERATIONS]
_QUOTED = re.compile(r"[\"“”'‘’](.+?)[\"“”'’‘]")
_SPLIT = re.compile(r"\s*(?:,|;|\band\s+then\b|\bthen\b|\band\b)\s*")


def plan_edit(instruction: str) -> list[tuple[str, Callable[[Image.Image], Image.Image]]]:
    """Parse an instruction into operations; `ToolError("unsupported instruction ...")` if any clause is unknown."""
    quoted: list[str] = []

    def stash(m: re.Match[str]) -> str:
        quoted.append(m.group(1))
        return f"\x00{len(quoted) - 1}\x00"

    text = _QUOTED.sub(stash, instruction.strip())
    text = re.sub(r"black[\s-]+and[\s-]+white", "grayscale", text, flags=re.IGNORECASE)
    clauses = [c.strip(" .!") for c in _SPLIT.split(text) if c.strip(" .!")]
    if not clauses:
        raise ToolError(f"unsupported instruction {instruction!r}: the local editor understands {VOCABULARY}")
    plan = []
    for clause in clauses:
        for name, pattern, build in _OPERATIONS:
            m = pattern.fullmatch(clause)
            if m is None:
                continue
            if name == "caption":
                caption = quoted[int(m["slot"].strip("\x00"))]
                plan.append((f"caption:{caption}", lambda img, t=caption: _caption(img, t)))
            else:
                detail = m.groupdict().get("region") or ""
                plan.append((f"{name}:{detail}" if detail else name, build(m)))
            break
        else:
            shown = re.sub(r"\x00(\d+)\x00", lambda q: f"'{quoted[int(q.group(1))]}'", clause)
            raise ToolError(
                f"unsupported instruction {shown!r}: the local editor understands {VOCABULARY}; "
                "configure a model-backed edit backend for anything else"
            )
    return plan


class LocalEditor:
    """Offline edits for a documented vocabulary of instructions (see the module docstring)."""

    name = "local-editor"
    cache_id = "local-editor:1"

    def edit(self, data: bytes, instruction: str) -> tuple[bytes, list[str]]:
        plan = plan_edit(instruction)
        try:
            with Image.open(io.BytesIO(data)) as source:
                img = source.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ToolError(f"the source image is unreadable ({exc})") from None
        for _, operation in plan:
            img = operation(img)
        return png_bytes(img), [name for name, _ in plan]

    async def __call__(self, params: Mapping[str, Any], inputs: Sequence[bytes] = ()) -> ToolOutput:
        image, operations = await asyncio.to_thread(self.edit, _one_input(inputs), str(params["prompt"]))
        return ToolOutput(image=image, backend=self.name, provenance={"operations": operations})
