"""Named style templates: a prompt wrapper and a negative prompt, our own text.

Peers offer styles by name (InstantID's demo, Segmind's `style` field). A template's `prompt` holds `{prompt}`,
replaced by the user's prompt; its `negative` is joined to the user's negative prompt. The CLI (`--style`,
`idforge styles`), the Python API and the HTTP API (`style`, `GET /v1/styles`) all read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from idforge.errors import ParameterError

NO_STYLE = "none"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative: str
    description: str

    def apply(self, prompt: str, negative: str | None) -> tuple[str, str]:
        """The styled (prompt, negative prompt)."""
        styled = self.prompt.replace("{prompt}", prompt.strip()) if prompt.strip() else self.prompt
        styled = styled.replace("{prompt}", "").strip(" ,")
        negatives = [part for part in ((negative or "").strip(), self.negative) if part]
        return styled, ", ".join(negatives)


_BASE_NEGATIVE = "blurry, lowres, deformed face, extra limbs, watermark, text"

STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style(NO_STYLE, "{prompt}", "", "the prompt as given"),
        Style(
            "photo",
            "{prompt}, natural light portrait photograph, 50mm lens, shallow depth of field, fine skin detail",
            f"painting, illustration, cartoon, plastic skin, {_BASE_NEGATIVE}",
            "a plain photograph",
        ),
        Style(
            "film-noir",
            "{prompt}, black and white film still, hard side light, deep shadows, 1940s crime drama mood",
            f"colour, saturated, cheerful, flat lighting, {_BASE_NEGATIVE}",
            "monochrome, hard shadows",
        ),
        Style(
            "watercolor",
            "{prompt}, loose watercolour painting on textured paper, soft bleeding edges, pale washes",
            f"photograph, 3d render, harsh outlines, {_BASE_NEGATIVE}",
            "soft painted look",
        ),
        Style(
            "neon",
            "{prompt}, night city street, magenta and cyan neon signs, wet reflections, glowing rim light",
            f"daylight, dull colours, {_BASE_NEGATIVE}",
            "night, neon colours",
        ),
        Style(
            "line-art",
            "{prompt}, clean ink line drawing, single weight strokes, white background, minimal shading",
            f"colour, photograph, gradients, noise, {_BASE_NEGATIVE}",
            "black ink lines",
        ),
        Style(
            "jungle",
            "{prompt}, deep tropical rainforest, dappled green light through leaves, humid haze",
            f"city, snow, desert, {_BASE_NEGATIVE}",
            "rainforest setting",
        ),
        Style(
            "mars",
            "{prompt}, standing on the red plains of Mars, dusty orange sky, distant rovers, science fiction",
            f"green grass, blue sky, {_BASE_NEGATIVE}",
            "red planet setting",
        ),
        Style(
            "snow",
            "{prompt}, falling snow, winter mountain village, cold blue light, breath visible in the air",
            f"summer, beach, warm light, {_BASE_NEGATIVE}",
            "winter setting",
        ),
        Style(
            "vibrant",
            "{prompt}, bold saturated colours, colourful paint splashes background, high contrast pop art",
            f"monochrome, muted, grey, {_BASE_NEGATIVE}",
            "saturated colours",
        ),
    )
}


def style_names() -> list[str]:
    return list(STYLES)


def get_style(name: str, *, field: str = "style") -> Style:
    """The template called `name`, or a ParameterError that lists the known names."""
    key = (name or NO_STYLE).strip().lower().replace(" ", "-").replace("_", "-")
    if key not in STYLES:
        raise ParameterError(field, f"unknown style {name!r}; known styles: {', '.join(STYLES)}")
    return STYLES[key]


def apply_style(name: str | None, prompt: str, negative: str | None) -> tuple[str, str]:
    """(prompt, negative) after the named template; `None` or 'none' leaves them as given."""
    if not name or name == NO_STYLE:
        return prompt, negative or ""
    return get_style(name).apply(prompt, negative)
