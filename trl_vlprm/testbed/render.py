"""PIL drawing primitives of the testbed puzzles: small, flat, high-contrast images a tiny model can read.

Every function draws deterministically from its arguments (no randomness here), so the same puzzle state always
gives the same PNG bytes.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

# Colours far apart in RGB so a 112 px rendering keeps them distinguishable.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
}
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
SIZE_SCALE = {"small": 0.35, "medium": 0.65, "large": 1.0}
SHAPE_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}


def canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, px))


def text_centered(draw: ImageDraw.ImageDraw, center: tuple[float, float], text: str, px: int) -> None:
    draw.text(center, text, fill=INK, font=font(px), anchor="mm")


def regular_polygon_points(center: tuple[float, float], radius: float, sides: int) -> list[tuple[float, float]]:
    # Start at the top so a square stands on its side like the word "square" suggests.
    offset = -math.pi / 2 + (math.pi / sides if sides % 2 == 0 else 0.0)
    return [
        (
            center[0] + radius * math.cos(offset + 2 * math.pi * k / sides),
            center[1] + radius * math.sin(offset + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def shape(draw: ImageDraw.ImageDraw, kind: str, center: tuple[float, float], radius: float, colour: str) -> None:
    """A filled circle or regular polygon (`kind` in "circle" or `SHAPE_SIDES`) with a thin dark outline."""
    fill = PALETTE[colour]
    if kind == "circle":
        x, y = center
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=INK)
    else:
        draw.polygon(regular_polygon_points(center, radius, SHAPE_SIDES[kind]), fill=fill, outline=INK)


def question_mark(draw: ImageDraw.ImageDraw, center: tuple[float, float], radius: float) -> None:
    x, y = center
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=INK, width=1)
    text_centered(draw, center, "?", int(radius * 1.3))


def clock(size: int, hour: int, minute: int) -> Image.Image:
    """An analogue clock: 12 hour ticks, a short thick hour hand and a long thin minute hand."""
    image, draw = canvas(size)
    c, r = size / 2, size * 0.44
    draw.ellipse((c - r, c - r, c + r, c + r), outline=INK, width=max(1, size // 56))
    for k in range(12):
        angle = 2 * math.pi * k / 12
        inner = r * (0.80 if k % 3 == 0 else 0.88)
        sin, cos = math.sin(angle), math.cos(angle)
        draw.line((c + inner * sin, c - inner * cos, c + r * sin, c - r * cos), fill=INK, width=max(1, size // 80))
    for k in (12, 3, 6, 9):
        angle = 2 * math.pi * (k % 12) / 12
        text_centered(draw, (c + r * 0.62 * math.sin(angle), c - r * 0.62 * math.cos(angle)), str(k), size // 10)
    minute_angle = 2 * math.pi * minute / 60
    hour_angle = 2 * math.pi * ((hour % 12) + minute / 60) / 12
    draw.line(
        (c, c, c + r * 0.85 * math.sin(minute_angle), c - r * 0.85 * math.cos(minute_angle)),
        fill=PALETTE["blue"],
        width=max(2, size // 60),
    )
    draw.line(
        (c, c, c + r * 0.5 * math.sin(hour_angle), c - r * 0.5 * math.cos(hour_angle)),
        fill=INK,
        width=max(3, size // 28),
    )
    draw.ellipse((c - 3, c - 3, c + 3, c + 3), fill=INK)
    return image
