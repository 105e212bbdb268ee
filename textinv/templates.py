"""The prompt templates of the Textual Inversion paper (Gal et al. 2022), as its code uses them.

``{}`` stands for the placeholder token, in these templates and in a user's captions alike. It is
the only thing substituted: a template is never a ``str.format`` string, so a caption such as
``{0.__class__}`` or ``{:999999999}`` is text (``fill_template``). Objects use the
ImageNet-style "a photo of a {}" list and styles the "a painting in the style of {}" list
(``imagenet_templates_small`` and ``imagenet_style_templates_small`` in the original
implementation and in diffusers' example).
"""

from __future__ import annotations

from textinv_client.choices import ConceptProperty

TOKEN_PLACEHOLDER = "{}"

OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

_TEMPLATES = {ConceptProperty.OBJECT: OBJECT_TEMPLATES, ConceptProperty.STYLE: STYLE_TEMPLATES}


def templates_for(learnable_property: ConceptProperty | str) -> tuple[str, ...]:
    """The template list for ``object`` or ``style`` (another value raises, naming it)."""
    return _TEMPLATES[ConceptProperty.parse(learnable_property)]


def fill_template(template: str, token: str) -> str:
    """``template`` with every ``{}`` replaced by ``token``; nothing else is interpreted.

    One pass over the text: braces in ``token`` are not substituted again, and the result is at
    most len(template) + count("{}") × len(token) long.
    """
    return template.replace(TOKEN_PLACEHOLDER, token)
