"""Token heatmaps: one sample rollout's tokens coloured by each credit signal's weights, one row per
signal, so the rows of a sample compare token by token. Pure functions, strings in, HTML out.

Colour scale (fixed, the same for every row, sample and page): weights have mean 1 over a response
(``credit.normalize``), and a concentrated signal puts tens on a few tokens, so the colour follows
log10(w): white at ``w <= 0.1``, light blue at ``w = 1`` (uniform credit), then darker blues at 2, 3,
5, 10 and 20, to the darkest at ``w >= 50``, linearly in log10(w) between these stops (so 3, 10 and
50 read apart). Format tokens (whitespace,
punctuation, special and template tokens) get a dotted red outline; a space shows as ``·``, a
newline as ``↵``, a tab as ``→``. The exact weight is in each token's tooltip. Token text is
model output: it is always HTML-escaped.
"""

from __future__ import annotations

import html
import math

# The display order of the five signals (baseline first, ARCA last); others follow alphabetically.
SIGNAL_ORDER = ("uniform", "surprisal", "entropy", "divergence", "arca")

# (weight, RGB) stops of the colour scale, interpolated in log10(weight) (ColorBrewer's Blues);
# every channel decreases with the weight.
COLOUR_STOPS = (
    (0.1, (255, 255, 255)),
    (1.0, (198, 219, 239)),
    (2.0, (158, 202, 225)),
    (3.0, (107, 174, 214)),
    (5.0, (66, 146, 198)),
    (10.0, (33, 113, 181)),
    (20.0, (8, 81, 156)),
    (50.0, (8, 48, 107)),
)
LEGEND_WEIGHTS = (
    (0.0, "≤0.1"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.0, "2"),
    (3.0, "3"),
    (5.0, "5"),
    (10.0, "10"),
    (20.0, "20"),
    (50.0, "≥50"),
)
MISSING_COLOUR = "#d9d9d9"  # a token without a (finite) weight
VISIBLE_WHITESPACE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.legend { display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; margin-bottom: 1.5em; }
.swatch { display: inline-block; padding: 0 0.5em; border: 1px solid #aaa; font-family: monospace; }
section { margin-bottom: 2em; }
figure { margin: 0; }
figcaption { font-size: 0.9em; margin: 0.3em 0 0.5em; }
table.heatmap { border-collapse: collapse; }
table.heatmap th { text-align: right; vertical-align: top; padding: 0.2em 0.6em 0.2em 0;
  font: 0.85em monospace; white-space: nowrap; }
table.heatmap th.training { text-decoration: underline; }
table.heatmap td { padding: 0.2em 0; line-height: 1.9; font-family: monospace; }
.tok { white-space: pre; padding: 1px 0; margin-right: 1px; border-radius: 2px; }
.fmt { outline: 1px dotted #c00; outline-offset: -1px; }
.ws { color: #999; }
.dark { color: #fff; }
.dark .ws { color: #ccc; }
"""


def ordered_signals(names) -> list[str]:
    """``names`` in :data:`SIGNAL_ORDER`, unknown ones after it alphabetically."""
    names = set(names)
    return [s for s in SIGNAL_ORDER if s in names] + sorted(names - set(SIGNAL_ORDER))


def weight_rgb(weight: float | None) -> tuple[int, int, int] | None:
    """The background colour of a token of this weight (piecewise linear in log10(weight) over
    :data:`COLOUR_STOPS`, clamped at both ends); ``None`` for a missing or non-finite weight."""
    if weight is None or not math.isfinite(weight):
        return None
    (w0, c0), *_ = COLOUR_STOPS
    if weight <= w0:
        return c0
    for (lo, c_lo), (hi, c_hi) in zip(COLOUR_STOPS, COLOUR_STOPS[1:], strict=False):
        if weight <= hi:
            t = math.log10(weight / lo) / math.log10(hi / lo)
            return tuple(round(a + t * (b - a)) for a, b in zip(c_lo, c_hi, strict=True))
    return COLOUR_STOPS[-1][1]


def weight_colour(weight: float | None) -> str:
    """:func:`weight_rgb` as a CSS hex colour (:data:`MISSING_COLOUR` when there is no weight)."""
    rgb = weight_rgb(weight)
    return MISSING_COLOUR if rgb is None else "#{:02x}{:02x}{:02x}".format(*rgb)


def _is_dark(weight: float | None) -> bool:
    rgb = weight_rgb(weight)
    return rgb is not None and 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140


def _token_text(token: str) -> str:
    """Escaped token text with whitespace characters shown as faint symbols."""
    if token == "":
        return '<span class="ws">∅</span>'
    out = []
    for ch in token:
        visible = VISIBLE_WHITESPACE.get(ch)
        out.append(f'<span class="ws">{visible}</span>' if visible else html.escape(ch))
    return "".join(out)


def _token_span(token: str, weight: float | None, is_format: bool) -> str:
    classes = ["tok"] + (["fmt"] if is_format else []) + (["dark"] if _is_dark(weight) else [])
    shown = "-" if weight is None or not math.isfinite(weight) else f"{weight:.3f}"
    tooltip = f"w={shown} {token!r}" + (" (format)" if is_format else "")
    return (
        f'<span class="{" ".join(classes)}" style="background:{weight_colour(weight)}" '
        f'title="{html.escape(tooltip, quote=True)}">{_token_text(token)}</span>'
    )


def sample_html(sample: dict, signals: list[str] | None = None, training_signal: str | None = None) -> str:
    """An HTML fragment (a ``<figure>``): the rollout's tokens once per signal, one table row each.

    ``sample`` is a ``samples.jsonl`` record (``train.rollout_samples``): ``tokens``, ``is_format``,
    ``weights`` ``{signal: [w per token]}``, and ``step``, ``row``, ``reward``, ``advantage``,
    ``question`` for the caption. ``signals`` picks and orders the rows (default: every signal of
    the sample in :data:`SIGNAL_ORDER`); a signal the sample lacks shows as a row of missing
    weights. ``training_signal``'s row label is underlined.
    """
    tokens = [str(t) for t in sample.get("tokens", [])]
    is_format = list(sample.get("is_format", []))
    is_format += [False] * (len(tokens) - len(is_format))
    weights = sample.get("weights", {})
    rows = []
    for signal in signals if signals is not None else ordered_signals(weights):
        w = list(weights.get(signal) or [])
        w += [None] * (len(tokens) - len(w))
        # <wbr>: a line may break between tokens (their text shows no breakable whitespace)
        spans = "<wbr>".join(_token_span(t, wt, f) for t, wt, f in zip(tokens, w, is_format, strict=False))
        label_class = ' class="training"' if signal == training_signal else ""
        rows.append(f"<tr><th{label_class}>{html.escape(signal)}</th><td>{spans}</td></tr>")
    caption = " · ".join(
        f"{key} {_caption_value(sample.get(key))}" for key in ("step", "row", "reward", "advantage")
    )
    question = html.escape(str(sample.get("question", "")))
    return (
        f"<figure><figcaption>{html.escape(caption)} · question: <q>{question}</q></figcaption>"
        f'<table class="heatmap">{"".join(rows)}</table></figure>'
    )


def _caption_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def legend_html() -> str:
    """The colour scale at a few weights, and the format-token and whitespace marks."""
    swatches = "".join(
        f'<span class="swatch{" dark" if _is_dark(w) else ""}" style="background:{weight_colour(w)}">'
        f"{label}</span>"
        for w, label in LEGEND_WEIGHTS
    )
    return (
        '<div class="legend"><span>token weight (log scale):</span>'
        f"<span>{swatches}</span>"
        f'<span class="swatch" style="background:{MISSING_COLOUR}">missing</span>'
        '<span><span class="tok fmt">format token</span></span>'
        '<span>whitespace: <span class="ws">·</span> space, <span class="ws">↵</span> newline, '
        '<span class="ws">→</span> tab</span>'
        "<span>weights have mean 1 per response; underlined: the arm's training signal; "
        "hover a token for its weight</span></div>"
    )


def page_html(title: str, sections: list[tuple[str, str]]) -> str:
    """A standalone HTML page: ``title``, the legend, then each ``(heading, fragment)`` section.
    ``heading`` is plain text (escaped here); ``fragment`` is HTML (from :func:`sample_html`)."""
    body = "".join(
        f"<section><h3>{html.escape(heading)}</h3>{fragment}</section>" for heading, fragment in sections
    )
    if not sections:
        body = "<p>No sample rollouts (samples.jsonl) yet.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{legend_html()}{body}</body></html>\n"
    )
