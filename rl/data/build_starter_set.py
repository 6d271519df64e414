"""Build the starter set: 224 training and 59 held-out prompts in the LLM-I row format, written by us.

Rows: {"prompt", "question", "image_num", "tools", "images"}. `image_num` follows the judges' convention (-1 none,
0 no constraint, 99 at least one, N exactly N); `tools` names the sources the prompt needs; `images` lists input
images (paths relative to this folder) for prompts that ask to change a picture. Prompts ask for content, never
for a tool by name. Held-out prompts use topics that never appear in training.

Run: python rl/data/build_starter_set.py   (deterministic; rewrites train.jsonl, heldout.jsonl and images/)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# (topic, tools) per kind; the held-out split takes the last topics of each list.
DATA_TOPICS = [
    "the monthly rainfall of Seattle and Phoenix over a year",
    "how compound interest grows at 3%, 5% and 7% over 30 years",
    "the population of the five largest cities in Brazil",
    "the share of renewable energy in Germany from 2000 to 2020",
    "the shape of y = x^3 - 3x between -2 and 2",
    "average daily temperatures in Oslo across the seasons",
    "the growth of a bacteria culture that doubles every hour",
    "smartphone sales of four brands last year",
    "the normal distribution and how its width depends on sigma",
    "a marathon runner's pace over each 5 km split",
    "the half-life decay of carbon-14",
    "coffee consumption per person in ten countries",
    "the relation between study hours and exam scores for a class",
    "quarterly revenue of a small bakery",
    "the sine and cosine functions over one period",
    "how a car's stopping distance rises with speed",
    "the age distribution of a town's population",
    "electricity use of a household hour by hour",
    "the orbital periods of the eight planets",
    "the price of a loaf of bread over fifty years",
    "how CO2 concentration changed since 1960",
    "the heights of students in a class as a histogram",
    "the logistic growth of a rabbit population",
    "the exchange rate of two currencies over a month",
    "how a pendulum's period depends on its length",
    "the vote shares of four parties in an election",
    "a company's monthly active users over two years",
    "the boiling point of water at different altitudes",
    "the spread of a rumour in a school over a week",
    "the calories burned by different sports per hour",
    "global internet users by region",
    "the yield of wheat with different amounts of fertiliser",
    "a bike trip's elevation profile",
    "the frequency of letters in English text",
    "how loan repayments split into interest and principal",
    "the noise level of city streets through the day",
]
PLACE_TOPICS = [
    "the temples of Kyoto",
    "the Sydney Opera House",
    "the giant panda",
    "the Golden Gate Bridge",
    "Machu Picchu",
    "the northern lights over Iceland",
    "the Colosseum in Rome",
    "the Great Barrier Reef",
    "Mount Kilimanjaro",
    "the Taj Mahal",
    "the red-eyed tree frog",
    "the Eiffel Tower",
    "Santorini's white villages",
    "the Grand Canyon",
    "the James Webb Space Telescope",
    "the Sagrada Familia",
    "the emperor penguin",
    "Petra in Jordan",
    "the Amazon rainforest",
    "the Louvre pyramid",
    "the Sahara's dunes",
    "Angkor Wat",
    "the Statue of Liberty",
    "the monarch butterfly",
    "Neuschwanstein Castle",
    "Victoria Falls",
    "the Burj Khalifa",
    "the snow leopard",
    "Times Square at night",
    "the Galapagos tortoise",
    "Stonehenge",
    "Hagia Sophia",
    "the cherry blossoms in Washington DC",
    "the Forbidden City",
    "the bald eagle",
    "the Atacama Desert",
]
CREATIVE_TOPICS = [
    "a dragon who runs a bakery",
    "a city floating above the clouds",
    "a robot learning to paint",
    "a lighthouse keeper who talks to whales",
    "a library where books fly",
    "a fox detective in a rainy town",
    "a garden on the moon",
    "an underwater train station",
    "a time-travelling teapot",
    "a village of mushroom houses",
    "a cat who captains a pirate ship",
    "a winter festival of ice lanterns",
    "a clockwork forest",
    "a giant who knits clouds",
    "a desert market at the end of the world",
    "a school for young wizards in the mountains",
    "a hot-air balloon race over the sea",
    "a snail who wants to fly",
    "an orchestra of animals",
    "a castle made of glass",
    "a mountain that sings at dawn",
    "a postman delivering letters to the stars",
    "a river made of honey",
    "a tiny kingdom inside a teacup",
    "a knight afraid of the dark",
    "a carnival on a comet",
    "a bear opening a bookshop",
    "a whale that swims through the sky",
    "a robot gardener in a greenhouse",
    "a city of bridges above a canyon",
    "an owl who teaches astronomy",
    "a lantern that remembers stories",
]
EDIT_INSTRUCTIONS = [
    ("show my picture in black and white and tell me what mood it gives", ["edit"]),
    ("crop my picture to its top left corner and describe what remains", ["edit"]),
    ("rotate my picture by 90 degrees and explain why the result looks strange", ["edit"]),
    ("mirror my picture horizontally and compare the two versions", ["edit"]),
    ("make my picture brighter and explain how brightness changes a photo", ["edit"]),
    ("add the caption 'Summer 2024' under my picture and write a short story about it", ["edit"]),
    ("draw a red box around the center of my picture and explain what it highlights", ["edit"]),
    ("blur my picture and explain when a blurred background helps a photo", ["edit"]),
    ("increase the contrast of my picture and explain what contrast does", ["edit"]),
    ("turn my picture upside down and describe it as a puzzle", ["edit"]),
    ("make my picture darker to look like evening and describe the scene", ["edit"]),
    ("resize my picture to half its size and explain image resolution", ["edit"]),
]
NO_IMAGE_TOPICS = [
    "Write a haiku about autumn leaves.",
    "Summarize the causes of the First World War in three sentences.",
    "Give me five tips for a job interview.",
    "Explain what a prime number is in two sentences.",
    "Write a limerick about a forgetful cat.",
    "List the steps to boil an egg.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Explain the difference between weather and climate.",
    "Write a short thank-you note to a teacher.",
    "Give three arguments for learning a second language.",
    "Explain recursion to a ten-year-old.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Write a two-line motto for a cycling club.",
    "Explain how a vaccine trains the immune system, briefly.",
    "Name four instruments of a string quartet.",
    "Define photosynthesis in one paragraph.",
]

DATA_TEMPLATES = [
    "Compare {t} and explain what stands out.",
    "Write a short report on {t}, with the numbers made visible.",
    "Explain {t} to a curious student.",
    "Give me an overview of {t} with a clear chart.",
    "Analyse {t} and point out the trend.",
]
PLACE_TEMPLATES = [
    "Write a short travel guide to {t}.",
    "Introduce {t} to someone who has never seen it.",
    "What does {t} look like, and what makes it special?",
    "Write a fact sheet about {t} for a school project.",
    "Describe {t} for a magazine article.",
]
CREATIVE_TEMPLATES = [
    "Write a short illustrated story about {t}.",
    "Describe {t} as the opening of a picture book.",
    "Write a bedtime story about {t}, with pictures.",
    "Create a scene from a fantasy novel about {t}.",
    "Write a poem about {t} and show what it looks like.",
]
MIXED = [
    (
        "A lesson on photosynthesis for ten-year-olds, with a real photo of a leaf and a chart of sunlight "
        "versus growth.",
        ["search", "code"],
        2,
    ),
    ("A guide to the solar system with a real photo of Saturn and a chart of planet sizes.", ["search", "code"], 2),
    (
        "A pitch for a fantasy theme park: a picture of the entrance and a chart of expected visitors per month.",
        ["diffusion", "code"],
        2,
    ),
    ("Introduce the Arctic fox with a real photo, then imagine it in a cartoon style.", ["search", "diffusion"], 2),
    (
        "Report on coral bleaching with a real photo of a reef and a chart of ocean temperatures.",
        ["search", "code"],
        99,
    ),
    (
        "A recipe blog post about homemade pizza, with an appetising picture and a chart of baking time versus crust.",
        ["diffusion", "code"],
        0,
    ),
]
HELDOUT_MIXED = [
    (
        "A science page on volcanoes with a real photo of an eruption and a chart of the largest eruptions.",
        ["search", "code"],
        2,
    ),
    (
        "Plan a space colony: an imagined picture of the base and a chart of its energy budget.",
        ["diffusion", "code"],
        2,
    ),
]

IMAGE_NUMS = [0, 0, 1, 1, 2, 3, 99]

# Prompts that give their own numbers, so a chart can be checked for plotting them (`rl.content.chart_numbers_score`).
# Appended after the rows above (with their own random stream), so those rows stay as they were. The held-out
# templates and functions never appear in training.
NUMBER_TEMPLATES = [
    "Plot y = {f} for x from {a} to {b} and explain its shape.",
    "Chart these monthly sales and comment on the growth: January {n1}, February {n2}, March {n3}, April {n4}.",
    "A class scored {n1}, {n2}, {n3} and {n4} on four tests. Show the scores in a chart and say how they changed.",
    "Show the market shares {p1}%, {p2}% and {p3}% of three products in a chart and explain the split.",
    "The temperature was {t1}, {t2}, {t3}, {t4} and {t5} degrees over five days. Chart it and describe the week.",
    "A runner ran {k1}, {k2}, {k3} and {k4} km in four weeks. Visualise the training and comment on it.",
]
HELDOUT_NUMBER_TEMPLATES = [
    "Draw y = {f} from x = {a} to x = {b} and describe the curve.",
    "Our shop sold {n1}, {n2}, {n3} and {n4} books in the last four weeks. Make a chart and explain the trend.",
    "Visualise a rainfall of {k1}, {k2} and {k3} mm over three months and comment on it.",
]
FUNCTIONS = ["2x + 1", "x^3", "3 - x", "x^2 - 4", "x^2 + 2x", "1/x", "2^x", "x^3 - x"]
HELDOUT_FUNCTIONS = ["x^2 + 1", "4 - x^2", "x^3 + 2", "3x - 2"]


def _number_prompts(templates: list[str], functions: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` prompts from `templates` in turn, with random numbers (distinct within a prompt) and functions."""
    prompts = []
    for k in range(count):
        a = -rng.randrange(1, 6)
        values = {
            "f": functions[(k // len(templates)) % len(functions)],
            "a": a,
            "b": rng.randrange(1, 6),
            **{f"n{i}": v for i, v in enumerate(rng.sample(range(40, 260, 5), 4), start=1)},
            **{f"p{i}": v for i, v in enumerate(rng.sample(range(10, 60), 3), start=1)},
            **{f"t{i}": v for i, v in enumerate(rng.sample(range(8, 31), 5), start=1)},
            **{f"k{i}": v for i, v in enumerate(rng.sample(range(12, 90), 4), start=1)},
        }
        prompts.append(templates[k % len(templates)].format(**values))
    return prompts


def _picture(path: Path, seed: int) -> None:
    """A simple scene drawn with Pillow, our own input image for edit prompts."""
    rng = random.Random(seed)
    img = Image.new("RGB", (512, 384), (135 + rng.randrange(60), 190 + rng.randrange(40), 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 260, 512, 384), fill=(60 + rng.randrange(40), 150 + rng.randrange(60), 70))
    draw.ellipse((380, 30, 460, 110), fill=(250, 220, 80))
    x = 80 + rng.randrange(160)
    draw.rectangle((x, 160, x + 140, 270), fill=(200, 80 + rng.randrange(80), 60))
    draw.polygon([(x - 15, 160), (x + 70, 90), (x + 155, 160)], fill=(120, 40, 40))
    draw.rectangle((x + 55, 210, x + 85, 270), fill=(90, 60, 30))
    img.save(path)


def _split(topics: list, heldout: int) -> tuple[list, list]:
    return topics[:-heldout], topics[-heldout:]


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(2509)
    (HERE / "images").mkdir(exist_ok=True)
    for i in range(8):
        _picture(HERE / "images" / f"scene_{i}.png", seed=i)
    splits: dict[str, list[dict]] = {"train": [], "heldout": []}

    def add(split: str, prompt: str, image_num: int, tools: list[str], images: list[str] | None = None) -> None:
        splits[split].append(_row(prompt, image_num, tools, images))

    for _kind, topics, templates, tools, held in (
        ("data", DATA_TOPICS, DATA_TEMPLATES, ["code"], 8),
        ("place", PLACE_TOPICS, PLACE_TEMPLATES, ["search"], 8),
        ("creative", CREATIVE_TOPICS, CREATIVE_TEMPLATES, ["diffusion"], 7),
    ):
        train_topics, held_topics = _split(topics, held)
        for split, chosen in (("train", train_topics), ("heldout", held_topics)):
            for topic in chosen:
                for template in rng.sample(templates, 2):
                    add(split, template.format(t=topic), rng.choice(IMAGE_NUMS), tools)
    train_edits, held_edits = _split(EDIT_INSTRUCTIONS, 3)
    for split, chosen, repeat in (("train", train_edits, 3), ("heldout", held_edits, 1)):
        for k, (instruction, tools) in enumerate(chosen * repeat):
            image = f"images/scene_{(k + (0 if split == 'train' else 5)) % 8}.png"
            lead = ["Here is a picture I took", "I attached a drawing of my street", "This is a photo from my trip"][
                k // len(chosen)
            ]
            add(split, f"{lead}: {instruction}.", rng.choice([1, 1, 99]), tools, [image])
    train_plain, held_plain = _split(NO_IMAGE_TOPICS, 4)
    for split, chosen in (("train", train_plain), ("heldout", held_plain)):
        for prompt in chosen:
            add(split, prompt, -1, [])
    for prompt, tools, n in MIXED:
        add("train", prompt, n, tools)
    for prompt, tools, n in HELDOUT_MIXED:
        add("heldout", prompt, n, tools)
    train, heldout = splits["train"], splits["heldout"]
    rng.shuffle(train)
    rng.shuffle(heldout)
    numbers = random.Random(2510)
    train_numbers = [_row(p, 1, ["code"]) for p in _number_prompts(NUMBER_TEMPLATES, FUNCTIONS, 24, numbers)]
    held_numbers = [
        _row(p, 1, ["code"]) for p in _number_prompts(HELDOUT_NUMBER_TEMPLATES, HELDOUT_FUNCTIONS, 9, numbers)
    ]
    return train[:200] + train_numbers, heldout[:50] + held_numbers


def _row(prompt: str, image_num: int, tools: list[str], images: list[str] | None = None) -> dict:
    return {"prompt": prompt, "question": prompt, "image_num": image_num, "tools": tools, "images": images or []}


def main() -> None:
    train, heldout = build()
    for name, rows in (("train", train), ("heldout", heldout)):
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
