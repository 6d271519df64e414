"""Draw the Rubric benchmark's input images: eight simple 320x240 pictures, our own, for the prompts that ask
for an edit of "my photo" (a loaf, a backpack, a street plan, a room, a logo, a garden plan, a child's drawing
and an old postcard). Flat shapes keep each file a few KB.

Run: python evals/data/build_rubric_images.py   (deterministic; rewrites evals/data/images/*.png)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
SIZE = (320, 240)
Drawing = Callable[[ImageDraw.ImageDraw], None]


def loaf_crumb(draw: ImageDraw.ImageDraw) -> None:
    """A sourdough slice: domed crust, open crumb above, a dense grey band at the bottom."""
    draw.rectangle((0, 0, 320, 240), fill=(196, 160, 118))  # wooden board
    draw.chord((40, 20, 280, 200), 180, 360, fill=(140, 82, 36))  # domed crust
    draw.rectangle((40, 110, 280, 215), fill=(140, 82, 36))
    draw.chord((50, 30, 270, 190), 180, 360, fill=(238, 224, 196))  # crumb
    draw.rectangle((50, 110, 270, 205), fill=(238, 224, 196))
    draw.rectangle((50, 170, 270, 205), fill=(205, 196, 178))  # the dense, gummy layer
    rng = random.Random(7)
    for _ in range(26):  # holes only in the upper crumb
        x, y, r = rng.randrange(70, 250), rng.randrange(60, 160), rng.randrange(3, 9)
        draw.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=(214, 196, 160))


def backpack(draw: ImageDraw.ImageDraw) -> None:
    """A grey commuter backpack on white: body, front pocket, straps and a top handle."""
    draw.rectangle((0, 0, 320, 240), fill=(250, 250, 250))
    draw.arc((138, 14, 182, 50), 180, 360, fill=(70, 70, 74), width=5)  # handle
    draw.rounded_rectangle((100, 30, 220, 225), radius=28, fill=(128, 130, 136))
    draw.rounded_rectangle((118, 130, 202, 210), radius=14, fill=(110, 112, 118))  # pocket
    draw.line((124, 150, 196, 150), fill=(60, 60, 64), width=3)  # pocket zip
    draw.line((112, 60, 208, 60), fill=(60, 60, 64), width=3)  # main zip
    for x in (90, 220):  # straps seen at the sides
        draw.rounded_rectangle((x, 50, x + 12, 200), radius=6, fill=(84, 86, 92))


def elm_street(draw: ImageDraw.ImageDraw) -> None:
    """Elm Street from above: pavements, two car lanes, cars parked along the right kerb, trees."""
    draw.rectangle((0, 0, 320, 240), fill=(206, 206, 200))  # pavements
    draw.rectangle((60, 0, 260, 240), fill=(92, 92, 96))  # road
    for y in range(0, 240, 30):
        draw.rectangle((156, y, 164, y + 16), fill=(240, 240, 240))  # centre line
    colours = [(190, 40, 40), (40, 90, 170), (230, 230, 230), (40, 40, 40), (200, 170, 40)]
    for i, y in enumerate(range(8, 240, 48)):
        draw.rounded_rectangle((222, y, 254, y + 38), radius=6, fill=colours[i % len(colours)])  # parked cars
    draw.rounded_rectangle((110, 90, 142, 132), radius=6, fill=(60, 140, 80))  # a moving car
    for y in (30, 110, 190):
        draw.ellipse((12, y - 18, 48, y + 18), fill=(70, 130, 60))  # trees
        draw.ellipse((272, y - 18, 308, y + 18), fill=(70, 130, 60))


def living_room(draw: ImageDraw.ImageDraw) -> None:
    """A plain living room: white back wall, wooden floor, grey sofa, a window on the left, a low table."""
    draw.rectangle((0, 0, 320, 240), fill=(246, 246, 242))  # back wall
    draw.polygon([(0, 0), (40, 20), (40, 170), (0, 240)], fill=(232, 232, 226))  # left wall
    draw.rectangle((6, 50, 32, 130), fill=(170, 206, 232))  # window
    draw.line((19, 50, 19, 130), fill=(250, 250, 250), width=2)
    draw.polygon([(40, 170), (320, 170), (320, 240), (0, 240)], fill=(196, 150, 104))  # floor
    draw.rounded_rectangle((120, 105, 280, 175), radius=10, fill=(130, 132, 138))  # sofa back and seat
    draw.rounded_rectangle((108, 125, 132, 182), radius=8, fill=(112, 114, 120))  # arms
    draw.rounded_rectangle((268, 125, 292, 182), radius=8, fill=(112, 114, 120))
    draw.rectangle((150, 195, 250, 205), fill=(120, 80, 50))  # low table
    draw.rectangle((160, 205, 166, 222), fill=(120, 80, 50))
    draw.rectangle((234, 205, 240, 222), fill=(120, 80, 50))


def cafe_logo(draw: ImageDraw.ImageDraw) -> None:
    """The logo of a café called Bean There: an orange (#E07A2F) disc with a brown (#5B3A29) cup and name."""
    orange, brown = (224, 122, 47), (91, 58, 41)
    draw.rectangle((0, 0, 320, 240), fill=(255, 255, 255))
    draw.ellipse((100, 12, 220, 132), fill=orange)
    draw.rounded_rectangle((132, 52, 182, 104), radius=8, fill=brown)  # cup
    draw.arc((172, 62, 198, 90), 270, 90, fill=brown, width=6)  # handle
    draw.rectangle((124, 104, 192, 110), fill=brown)  # saucer
    for x in (146, 160):
        draw.line((x, 30, x + 4, 44), fill=(255, 255, 255), width=3)  # steam
    font = ImageFont.load_default(size=28)
    draw.text((160, 176), "BEAN THERE", fill=brown, font=font, anchor="mm")


def garden_plot(draw: ImageDraw.ImageDraw) -> None:
    """A 6 m x 4 m back garden from above: lawn, a tree shading the top-left corner, a shed, a patio."""
    draw.rectangle((0, 0, 320, 240), fill=(255, 255, 255))
    draw.rectangle((10, 10, 310, 210), fill=(140, 196, 110))  # lawn
    draw.ellipse((10, 10, 120, 100), fill=(110, 150, 96))  # the tree's shade
    draw.ellipse((30, 24, 90, 80), fill=(40, 100, 50))  # the tree
    draw.rectangle((240, 14, 306, 64), fill=(150, 100, 60))  # shed
    draw.rectangle((10, 170, 310, 210), fill=(190, 190, 186))  # patio
    draw.rectangle((10, 10, 310, 210), outline=(60, 60, 60), width=2)
    font = ImageFont.load_default(size=14)
    draw.text((160, 226), "6 m x 4 m", fill=(40, 40, 40), font=font, anchor="mm")


def lighthouse(draw: ImageDraw.ImageDraw) -> None:
    """A child's drawing of a lighthouse by day: sky, sun, sea, rocks, a red-and-white tower."""
    draw.rectangle((0, 0, 320, 150), fill=(150, 204, 240))  # sky
    draw.ellipse((250, 16, 296, 62), fill=(250, 214, 60))  # sun
    draw.rectangle((0, 150, 320, 240), fill=(40, 110, 180))  # sea
    draw.polygon([(70, 240), (110, 170), (200, 160), (250, 240)], fill=(110, 100, 92))  # rocks
    for i, y in enumerate(range(70, 170, 20)):  # striped tower, narrowing upwards
        inset = (170 - y) // 10
        draw.rectangle((138 + inset, y, 182 - inset, y + 20), fill=(220, 40, 40) if i % 2 else (250, 250, 250))
    draw.rectangle((140, 50, 180, 70), fill=(250, 236, 150))  # lamp room
    draw.polygon([(134, 50), (160, 30), (186, 50)], fill=(60, 60, 60))  # roof


def harbour_postcard(draw: ImageDraw.ImageDraw) -> None:
    """An old, faded sepia postcard of a fishing harbour, with a pale crease across it."""
    draw.rectangle((0, 0, 320, 240), fill=(214, 196, 166))  # faded sky
    draw.rectangle((0, 150, 320, 240), fill=(176, 156, 126))  # water
    for i, x in enumerate(range(10, 300, 48)):  # houses along the quay
        h = 40 + (i * 17) % 30
        draw.rectangle((x, 150 - h, x + 40, 150), fill=(160, 138, 108))
        draw.polygon([(x - 4, 150 - h), (x + 20, 128 - h), (x + 44, 150 - h)], fill=(134, 110, 84))
    draw.polygon([(110, 196), (210, 196), (196, 214), (124, 214)], fill=(110, 90, 66))  # boat
    draw.line((160, 196, 160, 160), fill=(110, 90, 66), width=3)
    draw.line((0, 40, 320, 200), fill=(234, 224, 204), width=4)  # the crease
    draw.rectangle((0, 0, 319, 239), outline=(238, 230, 214), width=6)  # the card's border


PICTURES: dict[str, Drawing] = {
    "loaf_crumb.png": loaf_crumb,
    "backpack.png": backpack,
    "elm_street.png": elm_street,
    "living_room.png": living_room,
    "cafe_logo.png": cafe_logo,
    "garden_plot.png": garden_plot,
    "lighthouse.png": lighthouse,
    "harbour_postcard.png": harbour_postcard,
}


def build(folder: Path = HERE / "images") -> list[Path]:
    """Draw every picture into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, drawing in PICTURES.items():
        img = Image.new("RGB", SIZE)
        drawing(ImageDraw.Draw(img))
        path = folder / name
        img.save(path, optimize=True)
        written.append(path)
    return written


def main() -> None:
    for path in build():
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
