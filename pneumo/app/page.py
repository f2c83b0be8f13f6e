"""The review page's HTML: page.html (beside this module) with the model's facts and the upload limit filled in.

One self-contained page: its style and script are inline and it loads nothing from elsewhere, so it works
offline and tells no third party what is being reviewed. Every value put into it is HTML-escaped.
"""
from __future__ import annotations

from html import escape
from pathlib import Path

from pneumo.app.reviewed_model import ReviewedModel
from pneumo.data.image_formats import IMAGE_SUFFIXES

TEMPLATE = Path(__file__).with_name("page.html")


def render_page(model: ReviewedModel, max_upload_mb: float) -> str:
    """page.html for `model`, with uploads limited to `max_upload_mb` MB (shown; the server enforces it).

    Raises:
        FileNotFoundError: page.html is missing beside this module (a broken checkout).
    """
    version = model.version or ("not registered (a checkpoint file)" if model.kind == "checkpoint" else "not given")
    rows = [("Model", model.name, "model-name"), ("Version", version, "model-version"),
            ("Training run", model.train_run_id or "not recorded", "model-run"),
            ("Operating threshold", f"{model.threshold:.4f} ({model.threshold_policy})", "model-threshold"),
            ("Temperature", f"{model.temperature:.4g}", "model-temperature"),
            ("Input", f"{model.image_size} x {model.image_size} px, {model.channels} channel(s)", "model-input"),
            ("Loaded from", f"{model.source} ({model.kind})", "model-source"),
            ("Grad-CAM", model.gradcam_note or "on this checkpoint, for the predicted class", "model-gradcam")]
    facts = "".join(f'<dt>{escape(label)}</dt><dd id="{key}">{escape(str(value))}</dd>' for label, value, key in rows)
    return (TEMPLATE.read_text(encoding="utf-8")
            .replace("{{MODEL_FACTS}}", facts)
            .replace("{{MAX_UPLOAD_MB}}", f"{max_upload_mb:g}")
            .replace("{{ACCEPT}}", ",".join(IMAGE_SUFFIXES)))
